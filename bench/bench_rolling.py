"""Write and filtered-scan throughput of the rolled Parquet layout against the previous writer.

Runs in one process per writer so each imports its own tracefmt: ``--tracefmt-path DIR``
puts an older checkout first on ``sys.path`` (e.g. a ``git worktree`` of an older commit).
Prints records per CPU-second for: ``TraceWriter.write_records`` (appends of ``--chunk``
rows, as an adapter does per step) and raw pyarrow baselines of the same batches
(``pyarrow.ipc`` file, ``pyarrow.parquet`` file); a filtered scan (one node, one kind,
half the steps) with ``Trace.scan``; and, for the current writer, the CPU time of the
thread that writes rows (Parquet is encoded on the publishing thread), the same writer with
``publish_threads=0`` and the delay until a step written by a live writer is visible to
polars (``roll_seconds`` 1 s).

Usage: ``python bench/bench_rolling.py [--records N] [--tracefmt-path DIR] [--format arrow|parquet] [--cores 2]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--records", type=int, default=600_000)
ap.add_argument("--chunk", type=int, default=600)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--tracefmt-path", default=None)
ap.add_argument("--format", default="parquet")
ap.add_argument("--cores", type=int, default=1, help="cores the process may use (the publishing thread needs a second)")
args = ap.parse_args()
if args.tracefmt_path:
    sys.path.insert(0, args.tracefmt_path)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_writer import best_of, make_records, nodes_table, one_core  # noqa: E402

import tracefmt  # noqa: E402


def main() -> None:
    one_core()
    if args.cores > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(min(args.cores, os.cpu_count() or 1))))
    n, chunk = args.records, args.chunk
    records = make_records(n)
    chunks = [records.slice(i, chunk) for i in range(0, n, chunk)]
    work = Path(tempfile.mkdtemp(prefix="tracefmt-bench-"))
    new = hasattr(tracefmt, "WriterOptions")
    print(f"tracefmt from {Path(tracefmt.__file__).parent}; {n:,} records, chunks of {chunk}, 1 core")
    try:
        trace_dir = work / "run.trace"

        thread_cpu: dict[int, float] = {}

        def write_tracefmt(publish_threads: int = 1) -> None:
            extra = {"publish_threads": publish_threads} if hasattr(getattr(tracefmt, "WriterOptions", None), "publish_threads") else {}
            kw = {"options": tracefmt.WriterOptions(flush_interval=0, segment_format=args.format, **extra)} if new else {"flush_interval": 0}
            c0 = time.thread_time()
            with tracefmt.TraceWriter(trace_dir, **kw) as w:
                w.write_nodes(nodes_table(200))
                for c in chunks:
                    w.write_records(c)
            used = time.thread_time() - c0
            thread_cpu[publish_threads] = min(thread_cpu.get(publish_threads, used), used)

        def batches():
            pending, rows = [], 0
            for c in chunks:
                pending.append(c)
                rows += c.num_rows
                if rows >= 16384:
                    yield pa.concat_tables(pending).combine_chunks()
                    pending, rows = [], 0
            if pending:
                yield pa.concat_tables(pending).combine_chunks()

        def raw_ipc() -> None:
            with ipc.new_file(str(work / "raw.arrow"), records.schema) as w:
                for t in batches():
                    w.write_table(t)

        def raw_parquet() -> None:
            with pq.ParquetWriter(work / "raw.parquet", records.schema, compression="snappy") as w:
                for t in batches():
                    w.write_table(t)

        clean = dict(before=lambda: shutil.rmtree(trace_dir, ignore_errors=True))
        t_w = best_of(write_tracefmt, args.repeat, **clean)
        t_i = best_of(raw_ipc, args.repeat)
        t_p = best_of(raw_parquet, args.repeat)
        print(f"write tracefmt        {n / t_w[1]:>12,.0f} rec/cpu-s  ({n / t_w[0]:,.0f} wall)")
        print(f"write raw pyarrow.ipc {n / t_i[1]:>12,.0f} rec/cpu-s  tracefmt/raw = {t_i[1] / t_w[1]:.2f}")
        print(f"write raw parquet     {n / t_p[1]:>12,.0f} rec/cpu-s  tracefmt/raw = {t_p[1] / t_w[1]:.2f}")
        if new and args.format == "parquet" and hasattr(tracefmt.WriterOptions, "publish_threads"):
            t_0 = best_of(lambda: write_tracefmt(0), args.repeat, **clean)
            print(f"  writing thread, publish_threads=1  {n / thread_cpu[1]:>12,.0f} rec/cpu-s of that thread; raw ipc / it = {t_i[1] / thread_cpu[1]:.2f}")
            print(f"  publish_threads=0 (in-thread)      {n / t_0[1]:>12,.0f} rec/cpu-s  ({n / t_0[0]:,.0f} wall)")
        steps = int(records.column("step")[-1].as_py())
        filt = dict(
            nodes=[17], kinds=["activation"], steps=(steps // 4, 3 * steps // 4), columns=["step", "node_id", "kind", "mean", "std"]
        )
        t_s = best_of(lambda: sum(b.num_rows for b in tracefmt.open(trace_dir).scan(**filt)), args.repeat)
        print(f"scan  Trace.scan      {n / t_s[1]:>12,.0f} rec/cpu-s  ({n / t_s[0]:,.0f} wall)")
        if new:
            import numpy as np
            import polars as pl

            from tracefmt.stats import tensor_stats

            live = work / "live.trace"
            delays = []
            with tracefmt.TraceWriter(live, options=tracefmt.WriterOptions(roll_seconds=1.0, flush_interval=0.2)) as w:
                w.write_nodes(nodes_table(2))
                for step in range(5):
                    t0 = time.monotonic()
                    w.write_records(
                        [dict(step=step, phase="train", node_id=1, kind="activation", slot="0", call=0, **tensor_stats(np.ones(8)))]
                    )
                    while True:
                        files = list(live.glob("records/*/*.parquet"))
                        if files and pl.scan_parquet(f"{live}/records/*/*.parquet").select(pl.col("step").max()).collect().item() == step:
                            break
                        time.sleep(0.01)
                    delays.append(time.monotonic() - t0)
            print(
                f"live  step visible to polars after {np.median(delays):.2f} s median, {max(delays):.2f} s max (roll_seconds=1, flush_interval=0.2)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
