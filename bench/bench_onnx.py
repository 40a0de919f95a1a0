"""Benchmark: statistics-only ONNX tracing of light_densenet121 (1,746 nodes) vs plain ORT.

Each configuration runs in its own subprocess so that its peak RSS (ru_maxrss) is its own:

* ``plain``: one ONNX Runtime session (default optimisations) and one run;
* ``plain-noopt``: the same with graph optimisations disabled (what the tracer runs);
* ``trace``: ``trace_onnx`` in statistics-only mode (default chunks of 64 outputs,
  histograms and per-channel vectors on);
* ``trace-one-session``: ``trace_onnx(chunk_outputs=None)``: every output exposed at once.

Prints peak RSS, wall and CPU time (session creation included) of each, and the ratios to
``plain``.
Run by hand: ``.venv/bin/python bench/bench_onnx.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, resource, sys, time
mode, model, data, out = sys.argv[1:5]
import numpy as np
x = np.load(data)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode.startswith("plain"):
    import onnxruntime as ort
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    so = ort.SessionOptions()
    if mode == "plain-noopt":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter()
    sess.run(None, {sess.get_inputs()[0].name: x})
    t2 = time.perf_counter()
    result = {"total_s": t2 - t0, "run_s": t2 - t1, "cpu_s": time.process_time() - c0}
else:
    from tracefmt.adapters.onnxruntime import load_graph, trace_onnx
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    name = load_graph(model).required_inputs[0].name
    t0, c0 = time.perf_counter(), time.process_time()
    trace_onnx(model, {name: x}, out, chunk_outputs=None if mode == "trace-one-session" else 64)
    result = {"total_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
result.update(mode=mode, peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_after_imports_mib=base / 1024)
print(json.dumps(result))
"""

MODES = ("plain", "plain-noopt", "trace", "trace-one-session")


def _model_path() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_densenet121.onnx")


def _run(mode: str, model: str, data: str, out: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, model, data, out], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    args = parser.parse_args()
    model = _model_path()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "x.npy")
        np.save(data, np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
        results: dict[str, list[dict]] = {m: [] for m in MODES}
        for i in range(args.repeat):
            for mode in MODES:
                results[mode].append(_run(mode, model, data, os.path.join(tmp, f"{mode}-{i}.trace")))
    med = {
        m: {k: float(np.median([r[k] for r in rs])) for k in ("peak_rss_mib", "total_s", "cpu_s", "rss_after_imports_mib")}
        for m, rs in results.items()
    }
    plain_run = float(np.median([r["run_s"] for r in results["plain"]]))
    print(f"light_densenet121.onnx, {args.repeat} runs per configuration (medians)")
    print(
        f"{'configuration':20s} {'peak RSS MiB':>13s} {'after imports':>14s} {'wall s':>8s} {'CPU s':>7s} {'RSS / plain':>12s} {'wall / plain':>13s} {'CPU / plain':>12s}"
    )
    for mode in MODES:
        m, p = med[mode], med["plain"]
        print(f"{mode:20s} {m['peak_rss_mib']:13.0f} {m['rss_after_imports_mib']:14.0f} {m['total_s']:8.2f} {m['cpu_s']:7.2f} "
              f"{m['peak_rss_mib'] / p['peak_rss_mib']:12.2f} {m['total_s'] / p['total_s']:13.2f} {m['cpu_s'] / p['cpu_s']:12.2f}")  # fmt: skip
    print(f"plain inference run alone (session built): {plain_run:.3f} s; trace / plain run: {med['trace']['total_s'] / plain_run:.1f}x")


if __name__ == "__main__":
    main()
