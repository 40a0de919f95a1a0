"""Crash safety (spec 'Segments and crash semantics'): a writer killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

import tracefmt
from tracefmt.cli import main

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tracefmt
    from tracefmt.stats import tensor_stats

    path, batch = sys.argv[1], int(sys.argv[2])
    stats = tensor_stats(np.random.default_rng(0).standard_normal(64).astype(np.float32))
    nodes = [dict(node_id=i, name=f"n{i}", scope=f"n{i}", op_type="Linear", parent=None, container=False,
                  inputs=[f"t{i}"], outputs=[f"t{i + 1}"], param_count=0) for i in range(batch)]
    w = tracefmt.TraceWriter(path, batch_rows=batch, segment_bytes=100_000, flush_interval=0)
    w.write_nodes(nodes)
    print("ready", flush=True)
    step = 0
    while True:
        w.write_records([dict(step=step, phase="train", node_id=i, kind="activation", slot="0", call=0, seq=i, **stats)
                         for i in range(batch)])
        w.log_scalar("loss", 1.0 / (step + 1), step=step)
        print(w.rows_written(), flush=True)
        step += 1
    """
)
BATCH = 40


def _run_and_kill(tmp_path, *, rows_before_kill: int) -> tuple:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "killed.trace"
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(BATCH)], stdout=subprocess.PIPE, text=True)
    reported = 0
    try:
        assert proc.stdout.readline().strip() == "ready"
        while reported < rows_before_kill:
            line = proc.stdout.readline()
            assert line, "the writer exited early"
            reported = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return path, reported


def test_killed_writer_leaves_a_readable_trace(tmp_path, capsys):
    path, reported = _run_and_kill(tmp_path, rows_before_kill=2000)
    trace = tracefmt.open(path)
    assert not trace.complete
    records = trace.read(columns=["step", "node_id"])
    rows = records.num_rows
    # Everything reported as flushed is there; only whole batches; nothing else.
    assert rows >= reported and rows % BATCH == 0
    steps = sorted(set(records.column("step").to_pylist()))
    assert steps == list(range(rows // BATCH))
    assert sorted(records.column("node_id").to_pylist()) == sorted(list(range(BATCH)) * (rows // BATCH))
    segments = trace.segments("records")
    # Only the segment being appended (the newest) may lack its footer; rolled ones that
    # waited for the publishing thread are complete open segments.
    incomplete = [s for s in segments if not s.complete]
    assert len(segments) > 1 and all(s.open for s in incomplete) and len(incomplete) <= 1
    assert not incomplete or incomplete[0].path.name == max(s.path.name for s in segments if s.open)
    assert sum(s.open for s in segments) <= 2 + 2 * tracefmt.WriterOptions().publish_threads
    truncated = any(not s.complete for table in ("records", "scalars") for s in trace.segments(table))

    report = tracefmt.validate(path)
    assert report.valid, str(report)
    assert {p.code for p in report.warnings} == {"incomplete"} | ({"truncated-segment"} if truncated else set())
    assert report.rows_checked["records"] == rows
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("truncated-segment" in out) == truncated and re.search(r"valid \(0 errors, [123] warnings", out)
    assert main(["info", str(path)]) == 0
    assert "NO (a writer is open or was killed)" in capsys.readouterr().out


def test_writer_killed_before_its_first_flush(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "early.trace"
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(BATCH)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGSTOP)  # freeze it before it can write a batch, then kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    trace = tracefmt.open(path)
    assert not trace.complete and trace.nodes.num_rows == BATCH
    assert trace.records.count_rows() % BATCH == 0
    report = tracefmt.validate(path)
    assert report.valid and "incomplete" in report.codes


@pytest.mark.parametrize("cut", [0, 7, 500])
def test_cut_segments_at_any_byte(tmp_path, cut):
    """A segment cut at an arbitrary byte is read up to its last complete batch, never a crash."""
    from conftest import write_tiny_trace

    path = write_tiny_trace(tmp_path / "t", batch_rows=4, flush_interval=0)
    seg = path / "records" / "rank-0" / "part-00000.arrow"
    data = seg.read_bytes()
    seg.write_bytes(data[:cut])
    rows = tracefmt.open(path).records.count_rows()
    assert rows % 4 == 0 and rows < 16
    report = tracefmt.validate(path)
    assert report.valid and "truncated-segment" in report.codes, str(report)
