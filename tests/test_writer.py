"""TraceWriter: round trips, segments, flushing, threads, modes, ranks and errors."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from conftest import TINY_NODES, write_tiny_trace

import tracefmt
from tracefmt.schema import RECORDS
from tracefmt.stats import tensor_stats


def _rows(n: int, *, step0: int = 0, node_id: int = 1) -> list[dict]:
    rng = np.random.default_rng(n + step0)
    return [dict(step=step0 + i, phase="train", node_id=node_id, kind="activation", slot="0", call=0, seq=0,
                 **tensor_stats(rng.standard_normal(6).astype(np.float32))) for i in range(n)]  # fmt: skip


def test_round_trip_of_every_table(tmp_path):
    path = tmp_path / "t.trace"
    rows = _rows(5)
    rows[2].update(tensor_stats(np.array([[1.0, -2.0, 0.0], [3.0, 0.5, np.nan]], np.float32), median=True),
                   channel_axis=1, channel_pos_frac=[1.0, 0.5, 0.0], channel_mean=[2.0, -0.75, 0.0])  # fmt: skip
    with tracefmt.TraceWriter(path, model="m", producer={"adapter": "tests", "framework": "numpy"}, metadata={"lr": 0.1}) as w:
        w.write_nodes(TINY_NODES)
        w.write_records(rows)
        w.log_scalar("loss", float("nan"), step=3, epoch=1, phase="eval")
        w.append("predictions", {"step": [1, 1], "phase": ["eval", "eval"], "y_true": [0, 2], "y_pred": [0, 1]})
        w.write_tensor(np.arange(6, dtype=np.float32).reshape(2, 3), step=0, node_id=1, kind="activation", slot="0")
        w.write_tensor(np.arange(6, dtype=np.float32).reshape(2, 3) * 2, step=1, node_id=1, kind="activation", slot="0")
        w.write_tensor(np.float64(2.5), step=0, node_id=2, kind="input", slot="x")
        w.write_tensor(np.array([True, False]), step=0, node_id=3, kind="activation")
        w.update_metadata(epochs=2)
    t = tracefmt.open(path)
    assert t.complete and t.manifest["model"] == "m" and t.manifest["metadata"] == {"lr": 0.1, "epochs": 2}
    assert t.manifest["producer"]["adapter"] == "tests" and t.format_version == tracefmt.FORMAT_VERSION
    assert t.nodes.column("name").to_pylist() == [n["name"] for n in TINY_NODES]
    got = t.read().sort_by("step").to_pylist()
    for want, have in zip(rows, got):
        for k, v in want.items():
            if isinstance(v, float) and np.isnan(v):
                assert np.isnan(have[k])
            else:
                assert have[k] == pytest.approx(v), k
        assert have["rank"] == 0
    s = t.scalars.to_pylist()
    assert len(s) == 1 and np.isnan(s[0]["value"]) and s[0]["epoch"] == 1 and s[0]["phase"] == "eval" and s[0]["wall_time"] > 0
    assert t.predictions.column("y_pred").to_pylist() == [0, 1]
    tensors = {(k["node_id"], k["step"]): (k, v) for k, v in t.tensors()}
    np.testing.assert_array_equal(tensors[(1, 1)][1], np.arange(6, dtype=np.float32).reshape(2, 3) * 2)
    assert tensors[(1, 1)][1].dtype == np.float32
    assert tensors[(2, 0)][1].tolist() == [2.5] and tensors[(2, 0)][0]["dtype"] == "float64"
    assert tensors[(3, 0)][1].tolist() == [1, 0] and tensors[(3, 0)][0]["dtype"] == "bool"
    assert [k["step"] for k, _ in t.tensors(nodes=[1], steps=(1, None))] == [1]
    report = tracefmt.validate(path)
    assert report.valid and not report.problems, str(report)


def test_input_forms_are_equivalent(tmp_path):
    rows = _rows(4)
    table = pa.Table.from_pylist([{**r, "rank": 0} for r in rows], schema=RECORDS.schema)
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    results = []
    forms = [rows, table, table.to_batches()[0], columns, table.cast(pa.schema([f.with_nullable(True) for f in RECORDS.schema])), table.drop_columns(["rank"])]
    for i, data in enumerate(forms):
        with tracefmt.TraceWriter(tmp_path / f"t{i}", flush_interval=0) as w:
            w.write_nodes(TINY_NODES)
            w.write_records(data)
        results.append(tracefmt.open(tmp_path / f"t{i}").read().drop_columns(["run_id"]).to_pylist())
    assert all(r == results[0] for r in results[1:])


def test_segments_roll_by_size_and_stay_readable(tmp_path):
    path = tmp_path / "t"
    with tracefmt.TraceWriter(path, segment_bytes=20_000, batch_rows=50, flush_interval=0) as w:
        w.write_nodes(TINY_NODES)
        for i in range(10):
            w.write_records(_rows(50, step0=i * 50))
    parts = sorted((path / "records" / "rank-0").iterdir())
    assert len(parts) > 2 and all(p.suffix == ".parquet" for p in parts)
    t = tracefmt.open(path)
    assert sorted(t.read(columns=["step"]).column("step").to_pylist()) == list(range(500))
    assert all(s.complete for s in t.segments("records"))


def test_rows_are_readable_while_the_writer_is_open(tmp_path):
    path = tmp_path / "t"
    w = tracefmt.TraceWriter(path, batch_rows=10, flush_interval=0)
    try:
        w.write_nodes(TINY_NODES)
        w.write_records(_rows(25))  # 25 >= batch_rows: flushed at once
        t = tracefmt.open(path)
        assert not t.complete and t.records.count_rows() == 25
        w.write_records(_rows(3, step0=100))  # buffered only
        assert tracefmt.open(path).records.count_rows() == 25
        w.flush()
        assert tracefmt.open(path).records.count_rows() == 28
        assert w.rows_written() == 28
    finally:
        w.close()
    assert tracefmt.open(path).complete


def test_background_flush(tmp_path):
    path = tmp_path / "t"
    with tracefmt.TraceWriter(path, flush_interval=0.05) as w:
        w.write_nodes(TINY_NODES)
        w.write_records(_rows(3))
        deadline = time.monotonic() + 10
        while w.rows_written() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tracefmt.open(path).records.count_rows() == 3


def test_concurrent_appends_from_threads(tmp_path):
    path = tmp_path / "t"
    with tracefmt.TraceWriter(path, batch_rows=64, flush_interval=0.01) as w:
        w.write_nodes(TINY_NODES)

        def work(k: int) -> None:
            for i in range(20):
                w.write_records(_rows(5, step0=k * 1000 + i * 5, node_id=1 + k % 3))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    steps = tracefmt.open(path).read(columns=["step"]).column("step").to_pylist()
    assert sorted(steps) == sorted(k * 1000 + j for k in range(4) for j in range(100))


def test_modes(tmp_path):
    path = write_tiny_trace(tmp_path / "t", steps=2)
    with pytest.raises(tracefmt.UsageError, match="already exists"):
        tracefmt.TraceWriter(path)
    with tracefmt.TraceWriter(path, mode="append") as w:
        w.write_records(_rows(2, step0=50))
    t = tracefmt.open(path)
    assert t.records.count_rows() == 8 + 2 and t.complete
    assert sorted(p.name for p in (path / "records" / "rank-0").iterdir()) == ["part-00000.arrow", "part-00001.parquet"]
    with tracefmt.TraceWriter(path, mode="overwrite") as w:
        w.write_nodes(TINY_NODES)
    assert tracefmt.open(path).records.count_rows() == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(tracefmt.UsageError, match="not an empty directory"):
        tracefmt.TraceWriter(tmp_path / "other")
    with pytest.raises(tracefmt.UsageError, match="available: create, overwrite, append"):
        tracefmt.TraceWriter(tmp_path / "x", mode="replace")


def test_two_ranks_make_one_valid_trace(tmp_path):
    path = tmp_path / "t"
    w0 = tracefmt.TraceWriter(path, rank=0, world_size=2)
    w1 = tracefmt.TraceWriter(path, rank=1, world_size=2)
    w0.write_nodes(TINY_NODES)
    w1.write_nodes(TINY_NODES)  # ignored: rank 0 owns nodes
    w0.write_records(_rows(3))
    w1.write_records(_rows(4, step0=10))
    w1.close()
    w0.close()
    t = tracefmt.open(path)
    assert t.manifest["world_size"] == 2
    assert sorted(t.read(columns=["rank"]).column("rank").to_pylist()) == [0] * 3 + [1] * 4
    assert t.read(ranks=[1]).num_rows == 4
    assert tracefmt.validate(path).valid


def test_bad_rows_are_refused_with_the_column_named(tmp_path):
    with tracefmt.TraceWriter(tmp_path / "t", flush_interval=0) as w:
        w.write_nodes(TINY_NODES)
        good = _rows(1)[0]
        with pytest.raises(tracefmt.UsageError, match="unknown column.*colour"):
            w.write_records([{**good, "colour": 1}])
        with pytest.raises(tracefmt.UsageError, match="missing required column 'kind'"):
            w.write_records([{k: v for k, v in good.items() if k != "kind"}])
        with pytest.raises(tracefmt.UsageError, match="'kind' has unknown value 'activations'"):
            w.write_records([{**good, "kind": "activations"}])
        with pytest.raises(tracefmt.UsageError, match="'phase' must not contain nulls"):
            w.write_records([{**good, "phase": None}])
        with pytest.raises(tracefmt.UsageError, match="'step' cannot be stored"):
            w.write_records([{**good, "step": "first"}])
        bad_table = pa.Table.from_pylist([{**good, "rank": 0, "kind": "nope"}], schema=RECORDS.schema)
        with pytest.raises(tracefmt.UsageError, match="unknown value 'nope'"):
            w.write_records(bad_table)
        with pytest.raises(tracefmt.UsageError, match="appendable tables"):
            w.append("nodes", [])
        with pytest.raises(tracefmt.UsageError, match="node_id' must be unique"):
            w.write_nodes(TINY_NODES + TINY_NODES[:1])
    with pytest.raises(tracefmt.UsageError, match="closed"):
        w.write_records(_rows(1))
    assert tracefmt.open(tmp_path / "t").records.count_rows() == 0


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_segments(tmp_path, compression):
    path = write_tiny_trace(tmp_path / "t", compression=compression)
    assert tracefmt.open(path).records.count_rows() == 16
    assert tracefmt.validate(path).valid


def test_manifest_is_replaced_atomically(tiny_trace):
    m = json.loads((tiny_trace / "manifest.json").read_text())
    assert m["complete"] is True and m["format"] == "tracefmt"
    assert not [p for p in tiny_trace.iterdir() if p.name.startswith(".")]  # no temporary files left
