"""Render time of annotated graphs on the largest model of onnx's light/ folder.

light_densenet121.onnx (1,746 nodes) is traced once with the ONNX Runtime adapter (values
included), then drawn with the real ``dot``. Baseline (same run, same graph): the bare
structure (no overlay, no clusters) laid out with dot's default settings. Reported: build
time (trace -> DOT text), dot layout time, both per wall clock and per CPU-second of the
processes involved (this machine is shared: compare the ratios).

    python bench/bench_render.py [--repeat 3] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import onnx

import tracefmt
from tracefmt.adapters.onnxruntime import load_graph, random_feed, trace_onnx
from tracefmt.analyzers.render import render_graph, save


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the dot processes
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(trace, out: Path, repeat: int, **options) -> dict[str, float]:
    best = {"build": 1e9, "dot": 1e9, "build_cpu": 1e9, "dot_cpu": 1e9}
    for _ in range(repeat):
        w, c = time.perf_counter(), _cpu()
        g = render_graph(trace, **options)
        w1, c1 = time.perf_counter(), _cpu()
        save(g, out)
        w2, c2 = time.perf_counter(), _cpu()
        best = {"build": min(best["build"], w1 - w), "dot": min(best["dot"], w2 - w1), "build_cpu": min(best["build_cpu"], c1 - c), "dot_cpu": min(best["dot_cpu"], c2 - c1)}
    best["nodes"] = g.info.drawn
    best["large"] = g.info.large
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default=str(Path(onnx.__file__).parent / "backend/test/data/light/light_densenet121.onnx"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        path = trace_onnx(args.model, random_feed(load_graph(args.model)), tmp / "m.trace")
        print(f"traced {Path(args.model).name} with ORT in {time.perf_counter() - t:.1f} s (not part of the render time)")
        trace = tracefmt.open(path)
        cases = {
            "baseline: structure only, dot defaults": dict(metric="none", findings=False, legend=False, layout="full"),
            "dead fraction overlay, dot defaults (layout=full)": dict(metric="dead_fraction", layout="full"),
            "dead fraction overlay, automatic layout (the default)": dict(metric="dead_fraction"),
            "std overlay, automatic layout, PNG": dict(metric="std"),
        }
        # The same structure with a two-level module hierarchy (scopes blockB.unitU.opN: 9
        # blocks of 10 units), to measure dot with ~100 nested clusters and --depth.
        rows = trace.nodes.to_pylist()
        for r in rows:
            i = r["order"] if r["order"] is not None else r["node_id"]
            r["scope"] = f"block{i // 200}.unit{(i // 20) % 10}.op{i}"
        with tracefmt.TraceWriter(tmp / "clustered.trace", flush_interval=0) as w:
            w.write_nodes(rows)
        clustered = tracefmt.open(tmp / "clustered.trace")
        base = None
        print(f"load average {os.getloadavg()[0]:.1f}; best of {args.repeat}")
        print(f"{'case':<55} {'nodes':>5} {'build s':>8} {'dot s':>7} {'total s':>8} {'cpu s':>7} {'ratio':>6}")
        cases.update({
            "clustered (97 clusters), automatic layout": dict(metric="none", on=clustered),
            "clustered, dot defaults (layout=full)": dict(metric="none", layout="full", on=clustered),
            "clustered, collapsed to depth 1": dict(metric="none", depth=1, on=clustered),
        })  # fmt: skip
        for name, opts in cases.items():
            out = tmp / ("g.png" if "PNG" in name else "g.svg")
            r = measure(opts.pop("on", trace), out, args.repeat, **opts)
            total, cpu = r["build"] + r["dot"], r["build_cpu"] + r["dot_cpu"]
            base = base or total
            print(f"{name:<55} {r['nodes']:>5} {r['build']:>8.2f} {r['dot']:>7.2f} {total:>8.2f} {cpu:>7.2f} {total / base:>6.2f}")


if __name__ == "__main__":
    main()
