"""Benchmark: every core analyzer over a generated trace of >= 10 million records.

Usage:
    python bench/bench_analyze.py [--records 10000000] [--dir DIR] [--keep]

Generates a trace shaped like a real training run (100 traced modules; per step an
activation and a gradient record per module, with a 99-bin histogram on activations, and
weight / weight_grad / weight_update records for 50 parametrised modules; a loss scalar per
step; eval predictions every 1000 steps), then runs ``tracefmt.analyzers.run`` with the
five core analyzers in a separate process and reports records/s and that process's peak
RSS. The baseline, measured in the same run, is a bare pyarrow scan of the same columns
(what reading alone costs). Targets: >= 2 M records/s end to end, peak RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

CORE = ["activations", "dead", "gradients", "loss", "confusion"]
N_MODULES = 100
N_PARAM = 50
HIST_BINS = 99


def _records_per_step() -> int:
    return 2 * N_MODULES + 3 * N_PARAM


def generate(path: Path, n_records: int, *, seed: int = 0) -> int:
    """Write the synthetic trace; returns the number of records."""
    import tracefmt
    from tracefmt.schema import RECORDS

    rng = np.random.default_rng(seed)
    per_step = _records_per_step()
    steps = -(-n_records // per_step)
    chunk = max(1, 131072 // per_step)
    names = [f"block{i // 4}.layer{i % 4}" for i in range(N_MODULES)]
    with tracefmt.TraceWriter(path, batch_rows=262144, segment_bytes=1 << 30, flush_interval=0) as w:
        w.write_nodes(
            [{"node_id": 0, "name": "Model", "scope": "", "op_type": "Model", "container": True, "inputs": [], "outputs": [], "param_count": 0, "order": 0}]
            + [
                {"node_id": i + 1, "name": n, "scope": n, "op_type": "Linear" if i % 2 == 0 else "ReLU", "parent": 0, "container": False,
                 "inputs": [f"t{i}"], "outputs": [f"t{i + 1}"], "param_count": 1000 if i % 2 == 0 else 0, "order": i + 1}
                for i, n in enumerate(names)
            ]
        )  # fmt: skip
        base_hist = np.histogram(rng.standard_normal(4096), bins=HIST_BINS, range=(-4, 4))[0].astype(np.int64)
        param_nodes = np.arange(1, N_MODULES + 1, 2)[:N_PARAM]
        for s0 in range(0, steps, chunk):
            s = np.arange(s0, min(steps, s0 + chunk))
            ns = len(s)
            act_nodes = np.tile(np.arange(1, N_MODULES + 1), ns)
            act_steps = np.repeat(s, N_MODULES)
            w_nodes = np.tile(param_nodes, ns)
            w_steps = np.repeat(s, N_PARAM)
            node_id = np.concatenate([act_nodes, act_nodes, w_nodes, w_nodes, w_nodes]).astype(np.int32)
            step = np.concatenate([act_steps, act_steps, w_steps, w_steps, w_steps]).astype(np.int64)
            kind = np.concatenate([np.full(len(act_nodes), "activation"), np.full(len(act_nodes), "gradient"),
                                   np.full(len(w_nodes), "weight"), np.full(len(w_nodes), "weight_grad"), np.full(len(w_nodes), "weight_update")])  # fmt: skip
            slot = np.where(np.char.startswith(kind, "weight"), "weight", "0")
            n = len(step)
            numel = np.full(n, 4096, np.int64)
            scale = np.where(kind == "activation", 1.0, np.where(kind == "weight", 0.05, 1e-3)) * np.exp(rng.normal(0, 0.1, n))
            zero = np.where((kind == "activation") & (node_id % 2 == 0), 2048, 0).astype(np.int64)
            n_act = len(act_nodes)
            hist_values = (base_hist[None, :] + rng.integers(0, 3, (n_act, HIST_BINS))).reshape(-1)
            hist = pa.ListArray.from_arrays(np.arange(0, n_act * HIST_BINS + 1, HIST_BINS, dtype=np.int32), pa.array(hist_values, pa.int64()))
            hist = pa.concat_arrays([hist, pa.nulls(n - n_act, pa.list_(pa.int64()))])
            act = kind == "activation"
            table = pa.table(
                {
                    "step": step, "phase": np.full(n, "train"), "rank": np.zeros(n, np.int32), "node_id": node_id, "kind": kind, "slot": slot,
                    "call": np.zeros(n, np.int32), "seq": np.tile(np.arange(per_step, dtype=np.int32), ns), "dtype": np.full(n, "float32"),
                    "shape": pa.array([[64, 64]] * n, pa.list_(pa.int64())), "numel": numel, "nan_count": np.zeros(n, np.int64),
                    "inf_count": np.zeros(n, np.int64), "zero_count": zero, "pos_count": (numel - zero) // 2,
                    "mean": rng.normal(0, 0.1, n) * scale, "std": scale, "min": -4 * scale, "max": 4 * scale, "abs_mean": 0.8 * scale,
                    "l2": scale * 64.0, "hist_scheme": pa.array(np.where(act, "linear", None)), "hist_lo": pa.array(np.where(act, -4.0, np.nan), from_pandas=True),
                    "hist_hi": pa.array(np.where(act, 4.0, np.nan), from_pandas=True), "hist_counts": hist,
                }
            )  # fmt: skip
            table = table.cast(pa.schema([RECORDS.schema.field(c) for c in table.column_names]))
            w.write_records(table)
            loss = 2.3 * np.exp(-s / 5000.0) + 0.1 + 0.05 * rng.standard_normal(ns)
            w.append("scalars", {"step": s, "phase": ["train"] * ns, "name": ["loss"] * ns, "value": loss})
            for e in s[s % 1000 == 999]:
                y = rng.integers(0, 10, 512)
                w.append("predictions", {"step": np.full(512, e), "phase": ["eval"] * 512, "y_true": y, "y_pred": np.where(rng.random(512) < 0.8, y, (y + 1) % 10)})
    return steps * per_step


_COLUMNS = ["step", "phase", "node_id", "kind", "slot", "numel", "nan_count", "inf_count", "zero_count", "mean", "std", "l2", "max", "seq", "call",
            "hist_scheme", "hist_lo", "hist_hi", "hist_counts"]  # fmt: skip


def _child(path: str, what: str) -> None:
    """Run in a fresh process (so its peak RSS is its own): the baseline scan or the analyzers."""
    import tracefmt
    import tracefmt.analyzers as ta
    from tracefmt.analyzers.scan import profile, scan_records

    trace = tracefmt.open(path)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    out: dict = {}
    if what == "scan":
        out["records"] = sum(b.num_rows for b in scan_records(trace, columns=[c for c in _COLUMNS if c in trace.records.schema.names]))
    else:
        report = ta.run(trace, names=CORE)
        out.update(records=profile(trace).num_records, findings=report.findings.num_rows, skipped=report.skipped)
    out["seconds"] = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime - cpu0
    out["peak_rss_mib"] = usage.ru_maxrss / 1024
    print(json.dumps(out))


def _run_child(path: Path, what: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--what", what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Generate, analyze in a child process, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the trace (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trace")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--what", default="analyze", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.what)
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-analyze-"))
    path = root / f"bench-{args.records}.trace"
    try:
        if not path.exists():
            t0 = time.perf_counter()
            n = generate(path, args.records)
            print(f"generated {n:,} records in {time.perf_counter() - t0:.1f} s ({sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 2**30:.2f} GiB)")
        base = _run_child(path, "scan")
        r = _run_child(path, "analyze")
        rate, cpu_rate = r["records"] / r["seconds"], r["records"] / r["cpu_seconds"]
        n = r["records"]
        print(f"records: {n:,}")
        print(f"baseline, bare scan of the same columns: {base['seconds']:.2f} s wall, {base['cpu_seconds']:.2f} s CPU "
              f"({n / base['seconds'] / 1e6:.2f} M records/s wall, {n / base['cpu_seconds'] / 1e6:.2f} M per CPU-second); peak RSS {base['peak_rss_mib']:.0f} MiB")
        print(f"all core analyzers: {r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU ({rate / 1e6:.2f} M records/s wall, "
              f"{cpu_rate / 1e6:.2f} M per CPU-second; {r['cpu_seconds'] / base['cpu_seconds']:.2f} x the bare scan's CPU time)")
        print(f"peak RSS (analyzer process): {r['peak_rss_mib']:.0f} MiB")
        print(f"findings: {r['findings']}; skipped: {r['skipped'] or 'none'}")
        print(f"target >= 2 M records/s: wall {'met' if rate >= 2e6 else 'MISSED'}, per CPU-second {'met' if cpu_rate >= 2e6 else 'MISSED'}; "
              f"target peak < 1 GiB: {'met' if r['peak_rss_mib'] < 1024 else 'MISSED'}")  # fmt: skip
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
