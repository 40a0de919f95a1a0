"""Write and filtered-scan throughput of the trace format, on one core.

Prints records/s for:

* write: ``TraceWriter.write_records`` of realistic record rows (every statistic, the
  99-bin default histogram on activations, per-channel vectors on some rows), appended
  in chunks of ``--chunk`` rows as an adapter does once per step; baseline: raw
  ``pyarrow.ipc`` file writing of the same record batches (no tracefmt code);
* scan: ``Trace.scan`` with a filter (one node, one kind, a step range) over the whole
  trace, counted as records of the trace scanned per second; baseline: a plain
  ``pyarrow.dataset`` scan of the same files with the same filter; then the same after
  ``tracefmt compact`` (Parquet, row groups sorted by node, kind, step).

Usage: ``python bench/bench_writer.py [--records N] [--chunk N]``. Figures go to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.ipc as ipc

import tracefmt
from tracefmt.schema import RECORDS

WRITE_TARGET, SCAN_TARGET = 1_000_000, 10_000_000


def one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def make_records(n: int, *, nodes: int = 200, seed: int = 0) -> pa.Table:
    """``n`` record rows shaped like a real run: ``nodes`` nodes x 3 kinds per step."""
    rng = np.random.default_rng(seed)
    per_step = nodes * 3
    idx = np.arange(n)
    kinds = np.array(["activation", "gradient", "weight"])[(idx // nodes) % 3]
    # Valid symlog histograms: the 99 counts add up to the 4096 finite elements.
    hist = rng.integers(0, 42, size=(n, 99)).astype(np.int64)
    hist[:, 98] = 4096 - hist[:, :98].sum(axis=1)
    has_hist = kinds == "activation"
    ch = 64
    has_ch = (idx % 4 == 0) & has_hist
    numel = np.full(n, 4096, np.int64)
    data = {
        "step": (idx // per_step).astype(np.int64),
        "phase": pa.array(["train"] * n),
        "rank": np.zeros(n, np.int32),
        "node_id": (idx % nodes).astype(np.int32),
        "kind": pa.array(kinds),
        "slot": pa.array(np.where(kinds == "weight", "weight", "0")),
        "call": np.zeros(n, np.int32),
        "seq": (idx % per_step).astype(np.int32),
        "dtype": pa.array(["float32"] * n),
        "shape": pa.ListArray.from_arrays(np.arange(n + 1, dtype=np.int32) * 2, pa.array(np.tile([64, 64], n), pa.int64())),
        "numel": numel,
        "nan_count": np.zeros(n, np.int64),
        "inf_count": np.zeros(n, np.int64),
        "zero_count": rng.integers(0, 100, n),
        "pos_count": rng.integers(100, 2000, n),
        "mean": rng.standard_normal(n),
        "std": rng.random(n),
        "min": -rng.random(n) - 1,
        "max": rng.random(n) + 1,
        "abs_mean": rng.random(n),
        "l2": rng.random(n) * 10,
        "hist_scheme": pa.array(np.where(has_hist, "symlog", None)),
        "hist_lo": pa.array(np.where(has_hist, 1e-6, np.nan), from_pandas=True),
        "hist_hi": pa.array(np.where(has_hist, 1e6, np.nan), from_pandas=True),
    }
    offsets = np.concatenate([[0], np.cumsum(np.where(has_hist, 99, 0))]).astype(np.int32)
    mask = pa.array(~has_hist)
    data["hist_counts"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(hist[has_hist].ravel()), mask=mask)
    ch_off = np.concatenate([[0], np.cumsum(np.where(has_ch, ch, 0))]).astype(np.int32)
    data["channel_axis"] = pa.array(np.where(has_ch, 1, 0).astype(np.int32), mask=~has_ch)
    data["channel_pos_frac"] = pa.ListArray.from_arrays(pa.array(ch_off), pa.array(rng.random(int(has_ch.sum()) * ch).astype(np.float32)), mask=pa.array(~has_ch))
    data["channel_mean"] = pa.ListArray.from_arrays(pa.array(ch_off), pa.array(rng.standard_normal(int(has_ch.sum()) * ch).astype(np.float32)), mask=pa.array(~has_ch))
    arrays = []
    for col in RECORDS.columns:
        v = data.get(col.name)
        arrays.append(pa.nulls(n, col.type) if v is None else (v if isinstance(v, pa.Array) else pa.array(v)).cast(col.type))
    return pa.Table.from_arrays(arrays, schema=RECORDS.schema)


def nodes_table(nodes: int) -> list[dict]:
    return [dict(node_id=i, name=f"layer{i}", scope=f"layer{i}", op_type="Linear", parent=None, container=False,
                 inputs=[f"t{i}"], outputs=[f"t{i + 1}"], param_count=4096) for i in range(nodes)]  # fmt: skip


def best_of(fn, repeat: int, *, before=None) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds) of ``repeat`` runs (CPU time is robust to a busy machine)."""
    walls, cpus = [], []
    for _ in range(repeat):
        if before is not None:
            before()  # not timed
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def line(label: str, n: int, t: tuple[float, float], extra: str = "") -> float:
    wall, cpu = n / t[0], n / t[1]
    print(f"{label:<32}{wall:>13,.0f} /s wall {cpu:>13,.0f} /s cpu  {extra}")
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--chunk", type=int, default=600, help="rows per write call (one step of a 200-node model: 600)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    one_core()
    n, chunk = args.records, args.chunk
    records = make_records(n)
    chunks = [records.slice(i, chunk) for i in range(0, n, chunk)]
    mib = records.nbytes / 2**20
    print(f"{n:,} records, {mib:.0f} MiB in memory ({records.nbytes / n:.0f} B/record), chunks of {chunk} rows, 1 core")
    work = Path(tempfile.mkdtemp(prefix="tracefmt-bench-"))
    try:
        trace_dir = work / "run.trace"

        def write_tracefmt() -> None:
            with tracefmt.TraceWriter(trace_dir, flush_interval=0) as w:
                w.write_nodes(nodes_table(200))
                for c in chunks:
                    w.write_records(c)

        def write_raw() -> None:
            # The same layout as TraceWriter: 16384-row batches in an IPC file, no checks.
            with ipc.new_file(str(work / "raw.arrow"), RECORDS.schema) as w:
                pending = []
                rows = 0
                for c in chunks:
                    pending.append(c)
                    rows += c.num_rows
                    if rows >= 16384:
                        w.write_table(pa.concat_tables(pending).combine_chunks())
                        pending, rows = [], 0
                if pending:
                    w.write_table(pa.concat_tables(pending).combine_chunks())

        t_raw = best_of(write_raw, args.repeat, before=lambda: (work / "raw.arrow").unlink(missing_ok=True))
        t_w = best_of(write_tracefmt, args.repeat, before=lambda: shutil.rmtree(trace_dir, ignore_errors=True))
        print("records/s (best of runs; cpu = records per CPU-second of this process)")
        w_rate = line("write   tracefmt.TraceWriter", n, t_w, f"{mib / t_w[1]:,.0f} MiB/cpu-s")
        line("write   baseline pyarrow.ipc", n, t_raw, f"ratio tracefmt/baseline = {t_raw[1] / t_w[1]:.2f}")
        wall = n / t_w[0]
        print(f"        target >= {WRITE_TARGET:,} records/s: {'met' if w_rate >= WRITE_TARGET else 'NOT met'} per CPU-second; "
              f"{'met' if wall >= WRITE_TARGET else 'NOT met'} by wall clock ({wall:,.0f}/s on this machine now)")  # fmt: skip

        t_v = best_of(lambda: tracefmt.validate(trace_dir), 1)
        report = tracefmt.validate(trace_dir)
        assert report.valid, str(report)
        line("validate tracefmt.validate", n, t_v, "(every check, streamed batch by batch)")
        steps = int(records.column("step")[-1].as_py())
        filt = dict(nodes=[17], kinds=["activation"], steps=(steps // 4, 3 * steps // 4))
        cols = ["step", "node_id", "kind", "mean", "std"]
        expected = None

        def scan_tracefmt() -> int:
            return sum(b.num_rows for b in tracefmt.open(trace_dir).scan(columns=cols, **filt))

        files = [str(p) for p in sorted((trace_dir / "records").rglob("part-*"))]
        expr = (pc.field("node_id") == 17) & (pc.field("kind") == "activation") & (pc.field("step") >= filt["steps"][0]) & (pc.field("step") <= filt["steps"][1])

        def scan_raw() -> int:
            fmt = "parquet" if files[0].endswith(".parquet") else "arrow"
            return ds.dataset(files, format=fmt).to_table(columns=cols, filter=expr).num_rows

        expected = scan_raw()
        assert scan_tracefmt() == expected > 0, "tracefmt and pyarrow disagree on the filtered rows"
        t_s, t_r = best_of(scan_tracefmt, args.repeat), best_of(scan_raw, args.repeat)
        s_ipc = line("scan    Trace.scan (IPC)", n, t_s, f"{expected} rows match")
        line("scan    baseline pyarrow (IPC)", n, t_r, f"ratio tracefmt/baseline = {t_r[1] / t_s[1]:.2f}")
        t_c = best_of(lambda: tracefmt.compact(trace_dir), 1)
        line("compact tracefmt.compact", n, t_c)
        files = [str(p) for p in sorted((trace_dir / "records").rglob("part-*"))]
        assert scan_tracefmt() == expected == scan_raw()
        t_s2, t_r2 = best_of(scan_tracefmt, args.repeat), best_of(scan_raw, args.repeat)
        s_pq = line("scan    Trace.scan (Parquet)", n, t_s2)
        line("scan    baseline pyarrow (Parquet)", n, t_r2, f"ratio tracefmt/baseline = {t_r2[1] / t_s2[1]:.2f}")
        print(f"        target >= {SCAN_TARGET:,} records/s per CPU-second: {'met' if s_ipc >= SCAN_TARGET else 'NOT met'} on IPC segments, "
              f"{'met' if s_pq >= SCAN_TARGET else 'NOT met'} after compaction; by wall clock {n / t_s[0]:,.0f}/s and {n / t_s2[0]:,.0f}/s")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
