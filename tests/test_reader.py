"""Reading traces (spec 'Reading'): filters, compatibility, errors, and compaction."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from conftest import write_tiny_trace

import tracefmt
from tracefmt.compaction import compact_trace
from tracefmt.segments import JOURNAL


def _key(t: pa.Table) -> list:
    cols = ["rank", "node_id", "kind", "slot", "call", "phase", "step"]
    # repr keeps NaN == NaN, so the comparison is exact and total
    return sorted(repr(r) for r in t.select(cols + [c for c in t.column_names if c not in cols]).to_pylist())


def test_filters_are_pushed_down(tiny_trace):
    t = tracefmt.open(tiny_trace)
    assert t.records.count_rows() == 16
    assert t.read(nodes=[1]).num_rows == 8
    assert t.read(nodes=["relu"]).num_rows == 4
    assert t.read(nodes=[1, 2], kinds="activation").num_rows == 8
    assert t.read(kinds=["weight"], steps=(1, 2)).column("step").to_pylist() == [1, 2]
    assert t.read(steps=(None, 0)).num_rows == 4 and t.read(steps=(3, None)).num_rows == 4
    assert t.read(phases="eval").num_rows == 0 and t.read(slots="weight").num_rows == 4
    assert t.read(ranks=[0]).num_rows == 16 and t.read(ranks=[5]).num_rows == 0
    empty = t.read(nodes=[3], kinds="weight", columns=["step", "mean"])
    assert empty.num_rows == 0 and empty.column_names == ["step", "mean"]
    batches = list(t.scan(columns=["node_id"], batch_size=3))
    assert all(b.num_rows <= 3 for b in batches) and sum(b.num_rows for b in batches) == 16
    with pytest.raises(tracefmt.UsageError, match="unknown node 'fc9'; available: , fc1, relu, fc2"):
        t.read(nodes=["fc9"])


def test_nodes_edges_scalars(tiny_trace):
    t = tracefmt.open(tiny_trace)
    assert t.node_names == {0: "", 1: "fc1", 2: "relu", 3: "fc2"}
    assert sorted(t.edges()) == [(1, 2, "h"), (2, 3, "a")]
    assert t.scalars.column("value").to_pylist() == [1.0, 0.5, 1 / 3, 0.25]
    assert t.predictions.num_rows == 0 and t.findings is None
    assert t.has("nodes") and t.has("records") and not t.has("tensors")
    df = t.to_pandas(nodes=[2])
    assert len(df) == 4 and set(df["kind"]) == {"activation"}
    assert len(t.to_pandas("scalars")) == 4 and len(t.to_pandas("nodes")) == 4


def test_forward_and_backward_compatible_segments(tmp_path, tiny_trace):
    """Extra columns are kept, missing nullable columns read as null (spec 'Versioning')."""
    rank_dir = tiny_trace / "records" / "rank-0"
    base = tracefmt.open(tiny_trace).read()
    newer = base.slice(0, 2).append_column("future", pa.array([1.5, 2.5]))
    older = base.slice(2, 3).drop_columns(["median", "channel_mean", "mat_trace"])
    for name, table in (("part-00001.arrow", newer), ("part-00002.arrow", older)):
        with ipc.new_file(str(rank_dir / name), table.schema) as w:
            w.write_table(table)
    t = tracefmt.open(tiny_trace)
    all_rows = t.read()
    assert all_rows.num_rows == 21 and "future" in all_rows.column_names
    assert sorted(x for x in all_rows.column("future").to_pylist() if x is not None) == [1.5, 2.5]
    assert t.read(columns=["median"]).column("median").null_count >= 3
    assert tracefmt.validate(tiny_trace).valid


def test_refusals(tmp_path, tiny_trace):
    with pytest.raises(tracefmt.TraceNotFoundError, match="no such directory"):
        tracefmt.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(tracefmt.TraceNotFoundError, match="missing manifest.json"):
        tracefmt.open(tmp_path / "empty")
    m = json.loads((tiny_trace / "manifest.json").read_text())
    (tiny_trace / "manifest.json").write_text(json.dumps({**m, "format_version": "2.0"}))
    with pytest.raises(tracefmt.UnsupportedVersionError, match="2.0 is not supported; this tracefmt reads 1.x"):
        tracefmt.open(tiny_trace)
    (tiny_trace / "manifest.json").write_text("{")
    with pytest.raises(tracefmt.TraceFormatError, match="manifest.json: not valid JSON"):
        tracefmt.open(tiny_trace)


def test_wrong_column_type_is_named(tiny_trace):
    rank_dir = tiny_trace / "records" / "rank-0"
    t = tracefmt.open(tiny_trace).read()
    bad = t.set_column(0, "step", t.column("step").cast(pa.int32()))
    with ipc.new_file(str(rank_dir / "part-00001.arrow"), bad.schema) as w:
        w.write_table(bad)
    with pytest.raises(tracefmt.TraceFormatError, match="part-00001.arrow: table 'records' column 'step' has type int32, expected int64"):
        tracefmt.open(tiny_trace).read()


def test_compaction_is_lossless_and_sorted(tmp_path):
    path = write_tiny_trace(tmp_path / "t", steps=6, batch_rows=4, segment_bytes=30_000, flush_interval=0)
    before = tracefmt.open(path).read()
    scalars_before = tracefmt.open(path).scalars
    assert len(list((path / "records" / "rank-0").iterdir())) > 1
    result = compact_trace(path, chunk_rows=7)  # several node_id ranges: bounded-memory path
    rec = [p for p in result.partitions if p.table == "records"][0]
    assert rec.rows == before.num_rows == 24 and rec.output.endswith(".parquet")
    files = list((path / "records" / "rank-0").iterdir())
    assert [f.suffix for f in files] == [".parquet"]
    after = tracefmt.open(path).read()
    assert _key(after) == _key(before)
    assert after.schema.equals(before.schema, check_metadata=False)
    stored = pq.read_table(files[0])
    keys = list(zip(stored.column("node_id").to_pylist(), stored.column("kind").to_pylist(), stored.column("step").to_pylist()))
    assert keys == sorted(keys)
    assert tracefmt.open(path).scalars.equals(scalars_before)
    assert tracefmt.validate(path).valid
    again = compact_trace(path)
    assert again.partitions == [] and "records/rank-0" in again.skipped
    # Appending after compaction continues the segment numbering and still reads everything.
    with tracefmt.TraceWriter(path, mode="append", flush_interval=0) as w:
        w.write_records(tracefmt.open(path).read(steps=(0, 0)).drop_columns(["rank"]).to_pylist())
    assert tracefmt.open(path).records.count_rows() == 28


def test_compaction_refuses_open_writers_and_unknown_tables(tmp_path):
    w = tracefmt.TraceWriter(tmp_path / "t", flush_interval=0)
    try:
        with pytest.raises(tracefmt.UsageError, match="not complete"):
            compact_trace(tmp_path / "t")
        with pytest.raises(tracefmt.UsageError, match="cannot compact table 'nodes'"):
            compact_trace(tmp_path / "t", tables=("nodes",), force=True)
    finally:
        w.close()


def test_interrupted_compaction_never_shows_a_row_twice(tmp_path):
    """Each crash point of the compaction protocol (spec 'Compaction') reads every row once."""
    path = write_tiny_trace(tmp_path / "t", batch_rows=4, segment_bytes=20_000, flush_interval=0)
    expected = _key(tracefmt.open(path).read())
    rank_dir = path / "records" / "rank-0"
    old = sorted(p.name for p in rank_dir.iterdir())
    assert len(old) > 1
    table = tracefmt.open(path).read()
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in old:
        shutil.copy(rank_dir / name, staged / name)

    def stage(*, tmp: bool, journal: bool, renamed: bool, deleted: int) -> None:
        for p in rank_dir.iterdir():
            p.unlink()
        for name in old[deleted:]:
            shutil.copy(staged / name, rank_dir / name)
        out = "part-00099.parquet"
        if tmp or renamed:
            pq.write_table(table, rank_dir / (out if renamed else f".{out}.tmp"))
        if journal:
            (rank_dir / JOURNAL).write_text(json.dumps({"output": out, "replaces": old}))

    crash_points = [
        dict(tmp=True, journal=False, renamed=False, deleted=0),  # after step 1
        dict(tmp=True, journal=True, renamed=False, deleted=0),  # after step 3
        dict(tmp=False, journal=True, renamed=True, deleted=0),  # after step 4
        dict(tmp=False, journal=True, renamed=True, deleted=1),  # during step 5
    ]
    for point in crash_points:
        stage(**point)
        assert _key(tracefmt.open(path).read()) == expected, point
        assert tracefmt.validate(path).valid, point
        compact_trace(path)  # recovers, then compacts
        assert _key(tracefmt.open(path).read()) == expected, point
        assert not (rank_dir / JOURNAL).exists() and not list(rank_dir.glob(".*.tmp"))
        assert len(list(rank_dir.iterdir())) == 1


def test_killed_writer_segments_are_compacted_with_force(tmp_path):
    path = write_tiny_trace(tmp_path / "t", flush_interval=0)
    seg = path / "records" / "rank-0" / "part-00000.arrow"
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2 + 200])  # cut: no footer, a partial batch
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, "complete": False}))
    readable = tracefmt.open(path).records.count_rows()
    with pytest.raises(tracefmt.UsageError):
        compact_trace(path)
    compact_trace(path, force=True)
    assert tracefmt.open(path).records.count_rows() == readable
    assert "truncated-segment" not in tracefmt.validate(path).codes


def test_scan_of_many_segments_matches_numpy(tmp_path):
    path = write_tiny_trace(tmp_path / "t", steps=12, batch_rows=4, flush_interval=0)
    t = tracefmt.open(path)
    means = t.read(nodes=[2], kinds="activation", columns=["step", "mean"]).sort_by("step")
    assert means.column("step").to_pylist() == list(range(12))
    assert np.all(np.asarray(means.column("mean")) >= 0)  # relu outputs


def test_docs_format_python_examples_run(capsys):
    """The Python examples of docs/format.md run as written."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "format.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})  # noqa: S102 - executing our own documentation
    assert "[(1, 2, 'h')]" in capsys.readouterr().out
