"""Interoperability: a trace written from the spec alone validates; other engines read traces."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import tracefmt
from tracefmt.stats import tensor_stats


def write_by_hand(root: Path) -> dict[str, np.ndarray]:
    """Write a trace with pyarrow, numpy and json only, following spec/TRACE_FORMAT.md.

    Returns the tensors whose statistics were recorded, keyed by node name.
    """
    root.mkdir()
    manifest = {"format": "tracefmt", "format_version": "1.0", "run_id": "by-hand-1", "created": "2026-11-23T10:00:00Z",
                "complete": True, "producer": {"adapter": "hand-written", "framework": "numpy", "framework_version": np.__version__}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    nodes = pa.table({
        "node_id": pa.array([0, 1, 2], pa.int32()), "name": ["", "conv", "act"], "scope": ["", "conv", "act"],
        "op_type": ["Net", "Conv2d", "Tanh"], "parent": pa.array([None, 0, 0], pa.int32()), "container": [True, False, False],
        "inputs": [[], ["image"], ["conv:0"]], "outputs": [[], ["conv:0"], ["act:0"]],
        "param_count": pa.array([0, 72, 0], pa.int64()),
    })  # fmt: skip  (nullable columns attributes, order, note omitted: allowed by section 3)
    with ipc.new_file(str(root / "nodes.arrow"), nodes.schema) as w:
        w.write_table(nodes)

    def symlog(x: np.ndarray, lo=1e-6, hi=1e6, n=99) -> list[int]:  # section 7
        m_count = (n - 3) // 2
        m = 10.0 ** (np.log10(lo) + np.arange(m_count + 1) * (np.log10(hi) - np.log10(lo)) / m_count)
        m[0], m[-1] = lo, hi
        counts = [0] * n
        for v in x[np.isfinite(x)].astype(np.float64):
            a = abs(v)
            if a < lo:
                counts[m_count + 1] += 1
            else:
                j = m_count if a >= hi else int(np.searchsorted(m, a, side="right")) - 1
                counts[m_count + 2 + j if v >= 0 else m_count - j] += 1
        return counts

    rng = np.random.default_rng(7)
    tensors = {"conv": rng.standard_normal((2, 8, 3, 3)).astype(np.float32) * 3, "act": np.tanh(rng.standard_normal((2, 8, 3, 3))).astype(np.float32)}
    tensors["act"][0, 0, 0, 0] = np.nan
    rows = []
    for seq, (nid, name) in enumerate([(1, "conv"), (2, "act")]):
        x = tensors[name]
        f = x[np.isfinite(x)].astype(np.float64)  # section 6: statistics over the finite elements
        per_channel = np.moveaxis(x, 1, 0).reshape(8, -1)
        rows.append({
            "step": 0, "phase": "eval", "rank": 0, "node_id": nid, "kind": "activation", "slot": "0", "call": 0, "seq": seq,
            "dtype": "float32", "shape": list(x.shape), "numel": x.size, "nan_count": int(np.isnan(x).sum()),
            "inf_count": int(np.isinf(x).sum()), "zero_count": int((x == 0).sum()), "pos_count": int((x > 0).sum()),
            "mean": f.mean(), "std": f.std(), "min": f.min(), "max": f.max(), "abs_mean": np.abs(f).mean(),
            "l2": math.sqrt((f * f).sum()), "hist_scheme": "symlog", "hist_lo": 1e-6, "hist_hi": 1e6, "hist_counts": symlog(x),
            "channel_axis": 1, "channel_pos_frac": (per_channel > 0).mean(axis=1).tolist(),
        })  # fmt: skip
    types = {"step": pa.int64(), "phase": pa.string(), "rank": pa.int32(), "node_id": pa.int32(), "kind": pa.string(),
             "slot": pa.string(), "call": pa.int32(), "seq": pa.int32(), "dtype": pa.string(), "shape": pa.list_(pa.int64()),
             "numel": pa.int64(), "nan_count": pa.int64(), "inf_count": pa.int64(), "zero_count": pa.int64(),
             "pos_count": pa.int64(), "mean": pa.float64(), "std": pa.float64(), "min": pa.float64(), "max": pa.float64(),
             "abs_mean": pa.float64(), "l2": pa.float64(), "hist_scheme": pa.string(), "hist_lo": pa.float64(),
             "hist_hi": pa.float64(), "hist_counts": pa.list_(pa.int64()), "channel_axis": pa.int32(),
             "channel_pos_frac": pa.list_(pa.float32())}  # fmt: skip
    records = pa.Table.from_pylist(rows, schema=pa.schema(list(types.items())))
    (root / "records" / "rank=0").mkdir(parents=True)
    with ipc.new_file(str(root / "records" / "rank=0" / "part-00000.arrow"), records.schema) as w:
        w.write_table(records)
    scalars = pa.table({"step": pa.array([0], pa.int64()), "phase": ["eval"], "rank": pa.array([0], pa.int32()), "name": ["loss"], "value": [0.5]})
    (root / "scalars" / "rank=0").mkdir(parents=True)
    with ipc.new_stream(str(root / "scalars" / "rank=0" / "part-00000.arrows"), scalars.schema) as w:
        w.write_table(scalars)
    return tensors


def test_a_trace_written_from_the_spec_alone_validates(tmp_path):
    source = inspect.getsource(write_by_hand)
    assert "tracefmt." not in source.replace("spec/TRACE_FORMAT.md", "") and "import" not in source
    tensors = write_by_hand(tmp_path / "hand.trace")
    report = tracefmt.validate(tmp_path / "hand.trace")
    assert report.valid and not report.problems, str(report)
    trace = tracefmt.open(tmp_path / "hand.trace")
    assert sorted(trace.edges()) == [(1, 2, "conv:0")]
    assert trace.scalars.column("value").to_pylist() == [0.5]
    # The hand-computed statistics agree with the reference within the spec's tolerances (section 11).
    for row in trace.read().to_pylist():
        name = trace.node_names[row["node_id"]]
        ref = tensor_stats(tensors[name])
        scale = max(abs(ref["min"]), abs(ref["max"]))
        for k in ("numel", "nan_count", "inf_count", "zero_count", "pos_count", "min", "max", "hist_counts", "shape", "dtype"):
            assert row[k] == ref[k], (name, k)
        for k in ("mean", "std", "abs_mean"):
            assert abs(row[k] - ref[k]) <= 1e-4 * scale, (name, k)
        assert row["l2"] == pytest.approx(ref["l2"], rel=1e-4)
        assert row["median"] is None and row["mat_trace"] is None  # omitted nullable columns read as null


def _trace_with_two_ranks(tmp_path: Path) -> Path:
    from conftest import TINY_NODES

    path = tmp_path / "run.trace"
    for rank in (1, 0):
        with tracefmt.TraceWriter(path, rank=rank, world_size=2, mode="append" if rank == 0 else "create", flush_interval=0) as w:
            w.write_nodes(TINY_NODES)
            rng = np.random.default_rng(rank)
            w.write_records([dict(step=s, phase="train", node_id=n, kind="activation", slot="0", call=0,
                                  **tensor_stats(rng.standard_normal(10))) for s in range(5) for n in (1, 2, 3)])  # fmt: skip
    return path


def test_duckdb_reads_records_without_tracefmt(tmp_path):
    path = _trace_with_two_ranks(tmp_path)
    expected = tracefmt.open(path).read(nodes=[2], columns=["rank", "step", "mean"]).sort_by([("rank", "ascending"), ("step", "ascending")])
    # Closed segments are Parquet files with rank as a column: DuckDB's own reader, before and after compaction.
    glob = str(path / "records" / "*" / "*.parquet")
    for _ in ("written", "compacted"):
        got = duckdb.sql(f"SELECT rank, step, mean FROM read_parquet('{glob}') WHERE node_id = 2 ORDER BY rank, step").fetchall()
        assert got == list(zip(*(expected.column(c).to_pylist() for c in ("rank", "step", "mean"))))
        q = f"SELECT rank, count(*) AS n, avg(mean) AS m FROM read_parquet('{glob}') GROUP BY rank ORDER BY rank"
        rows = duckdb.sql(q).fetchall()
        assert [(r[0], r[1]) for r in rows] == [(0, 15), (1, 15)]
        assert rows[0][2] == pytest.approx(float(np.mean(tracefmt.open(path).read(ranks=[0]).column("mean"))))
        tracefmt.compact(path)


def test_polars_reads_records_without_tracefmt(tmp_path):
    path = _trace_with_two_ranks(tmp_path)
    expected = tracefmt.open(path).read(kinds="activation", steps=(2, 3))
    lf = pl.scan_parquet(str(path / "records" / "*" / "*.parquet"))
    got = lf.filter((pl.col("step") >= 2) & (pl.col("step") <= 3)).select(["rank", "step", "node_id", "std"]).sort(["rank", "step", "node_id"]).collect()
    assert got.height == expected.num_rows == 12
    assert got["std"].to_list() == expected.sort_by([("rank", "ascending"), ("step", "ascending"), ("node_id", "ascending")]).column("std").to_pylist()
    nodes = pl.read_parquet(str(path / "nodes.parquet"))
    assert nodes["name"].to_list() == ["", "fc1", "relu", "fc2"]
    tracefmt.compact(path)
    counts = pl.scan_parquet(str(path / "records" / "*" / "*.parquet")).group_by("rank").len().sort("rank").collect()
    assert counts["len"].to_list() == [15, 15]
