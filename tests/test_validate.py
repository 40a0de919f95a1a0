"""The validator (spec 'Validation'): every problem collected, with file, table, column and row."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import tracefmt
from tracefmt.schema import FINDINGS, RECORDS
from tracefmt.validation import ValidationReport


def _rewrite_records(trace, fn) -> None:
    """Replace the trace's records by ``fn(rows)`` written with plain pyarrow (bypassing the writer's checks)."""
    rows = tracefmt.open(trace).read().to_pylist()
    fn(rows)
    seg = trace / "records" / "rank-0" / "part-00000.arrow"
    table = pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in RECORDS.schema]))
    with ipc.new_file(str(seg), table.schema) as w:
        w.write_table(table, max_chunksize=5)


def _problem(report: ValidationReport, code: str):
    found = [p for p in report.problems if p.code == code]
    assert found, f"no {code!r} problem in:\n{report}"
    return found[0]


def test_a_writer_trace_is_valid_without_any_problem(tiny_trace):
    report = tracefmt.validate(tiny_trace)
    assert report.valid and report.problems == [] and report.errors == [] and report.warnings == []
    assert report.rows_checked == {"nodes": 4, "records": 16, "scalars": 4}
    report.raise_if_invalid()


def test_every_problem_is_collected_with_its_location(tiny_trace):
    def damage(rows):
        rows[1]["kind"] = "activations"  # bad enum
        rows[6]["node_id"] = 42  # dangling reference
        rows[9]["numel"] = 7  # numel vs shape
        rows[11]["kind"] = "weights"  # the same defect again: merged into one problem
        rows[12]["hist_counts"] = rows[12]["hist_counts"][:-1]  # even symlog bins
        rows[13]["channel_axis"] = 5  # out of range

    _rewrite_records(tiny_trace, damage)
    report = tracefmt.validate(tiny_trace)
    assert not report.valid
    assert {p.code for p in report.errors} == {"bad-enum", "dangling-reference", "numel-mismatch", "bad-histogram", "bad-channel"}
    enum = _problem(report, "bad-enum")
    assert (enum.table, enum.column, enum.row, enum.rows) == ("records", "kind", 1, 2)
    assert enum.file == "records/rank-0/part-00000.arrow" and "'activations'" in enum.message and "2 rows in all" in enum.message
    assert (_problem(report, "dangling-reference").row, _problem(report, "numel-mismatch").row) == (6, 9)
    assert _problem(report, "bad-histogram").row == 12 and _problem(report, "bad-channel").row == 13
    d = report.as_dict()
    assert json.loads(json.dumps(d))["errors"] == 5 and d["valid"] is False
    with pytest.raises(tracefmt.TraceFormatError, match=r"kind row 1: column 'kind' has unknown value 'activations'.*\(and 4 more errors\)"):
        report.raise_if_invalid()
    assert "INVALID (5 errors, 0 warnings)" in str(report)


@pytest.mark.parametrize(
    "mutate, code, column, words",
    [
        (lambda r: r[0].update(mean=None, std=0.5, numel=0, shape=[0], nan_count=0, inf_count=0, zero_count=0, pos_count=0, hist_counts=[0] * 99),
         "stat-without-elements", "std", "no finite elements"),
        (lambda r: r[0].update(std=-1.0), "bad-stat", "std", ">= 0"),
        (lambda r: r[0].update(mean=float("nan")), "bad-stat", "mean", "finite"),
        (lambda r: r[0].update(min=2.0, max=1.0), "bad-stat", "min", "<= 'max'"),
        (lambda r: r[0].update(zero_count=-1), "bad-counts", "nan_count", ">= 0"),
        (lambda r: r[0].update(shape=[4, -8], numel=-32), "bad-shape", "shape", ">= 0"),
        (lambda r: r[0].update(hist_scheme="linear", hist_lo=0.0, hist_hi=1.0, hist_counts=[10**6]), "bad-histogram", "hist_counts", "exceed"),
        (lambda r: r[0].update(hist_lo=5.0, hist_hi=1.0), "bad-histogram", "hist_lo", "lo < hi"),
        (lambda r: r[0].update(hist_counts=[-1] + r[0]["hist_counts"][1:]), "bad-histogram", "hist_counts", ">= 0"),
        (lambda r: r[0].update(hist_scheme=None), "bad-histogram", "hist_scheme", "without hist_scheme"),
        (lambda r: r[0].update(hist_counts=None), "bad-histogram", "hist_counts", "needs hist_lo, hist_hi and hist_counts"),
        (lambda r: r[0].update(channel_axis=None), "bad-channel", "channel_pos_frac", "needs channel_axis"),
        (lambda r: r[0].update(channel_pos_frac=[1.5] * len(r[0]["channel_pos_frac"])), "bad-channel", "channel_pos_frac", "[0, 1]"),
        (lambda r: r[0].update({**r[3], "shape": [40]}), "bad-matrix-stat", "mat_trace", "2-D"),
        (lambda r: r[0].update(step=-1), "negative-value", "step", ">= 0"),
        (lambda r: r[0].update(rank=3), "bad-rank", "rank", "partition"),
        (lambda r: r[0].update(dtype=None), "null-value", "dtype", "nulls"),
    ],
)  # fmt: skip
def test_record_defects(tiny_trace, mutate, code, column, words):
    _rewrite_records(tiny_trace, mutate)
    report = tracefmt.validate(tiny_trace)
    p = _problem(report, code)
    assert not report.valid and p.column == column and p.row == 0 and words in p.message, str(report)


def test_node_defects(tmp_path):
    from conftest import TINY_NODES

    path = tmp_path / "t"
    nodes = [dict(n) for n in TINY_NODES]
    nodes[1]["attributes"] = "[1, 2]"
    nodes[2]["param_count"] = -5
    nodes[3]["node_id"] = 1
    with tracefmt.TraceWriter(path) as w:
        w.write_nodes(TINY_NODES)
    table = pa.Table.from_pylist(nodes, schema=pa.schema([f.with_nullable(True) for f in tracefmt.schema.NODES.schema]))
    (path / "nodes.parquet").unlink()  # the older file name: readers accept both
    with ipc.new_file(str(path / "nodes.arrow"), table.schema) as w:
        w.write_table(table)
    report = tracefmt.validate(path)
    assert _problem(report, "bad-value").column == "attributes" and _problem(report, "bad-value").row == 1
    assert _problem(report, "negative-value").column == "param_count"
    dup = _problem(report, "duplicate-node-id")
    assert dup.row == 3 and "node_id 1 appears 2 times (rows 1, 3)" in dup.message


def test_manifest_defects_are_all_reported(tiny_trace):
    m = json.loads((tiny_trace / "manifest.json").read_text())
    m.update(format="other", run_id="", created="yesterday", world_size=0, producer={"framework": "x"}, complete="yes")
    del m["format_version"]
    (tiny_trace / "manifest.json").write_text(json.dumps(m))
    report = tracefmt.validate(tiny_trace)
    messages = {(p.code, p.column) for p in report.errors}
    assert {("bad-format", "format"), ("missing-field", "format_version"), ("bad-value", "run_id"), ("bad-value", "created"),
            ("bad-value", "world_size"), ("missing-field", "producer"), ("wrong-type", "complete")} <= messages  # fmt: skip
    assert all(p.table == "manifest" and p.file == "manifest.json" for p in report.errors)


def test_warnings_and_infos_do_not_invalidate(tiny_trace):
    m = json.loads((tiny_trace / "manifest.json").read_text())
    (tiny_trace / "manifest.json").write_text(json.dumps({**m, "complete": False, "format_version": "1.4", "extra": 1}))
    (tiny_trace / "notes.txt").write_text("hello")
    (tiny_trace / "records" / "stray.txt").write_text("x")
    (tiny_trace / "records" / "rank-0" / "part-00009.arrow").write_bytes(b"")  # killed before the schema
    report = tracefmt.validate(tiny_trace)
    assert report.valid, str(report)
    assert {p.code for p in report.warnings} == {"incomplete", "bad-layout", "truncated-segment"}
    assert {p.code for p in report.problems if p.severity == "info"} == {"newer-minor", "unknown-entry"}


def test_partition_beyond_world_size_and_optional_tables(tiny_trace):
    with tracefmt.TraceWriter(tiny_trace, rank=1, mode="append") as w:
        w.write_records([dict(step=0, phase="train", node_id=1, kind="activation", slot="0", call=0, **tracefmt.stats.tensor_stats(np.ones(3)))])
        w.write_tensor(np.ones(2, np.float32), step=0, node_id=7, kind="activation")
    report = tracefmt.validate(tiny_trace)
    assert {(p.code, p.table) for p in report.errors} >= {("bad-rank", "records"), ("dangling-reference", "tensors")}


def test_tensors_values_must_be_a_fixed_shape_tensor(tiny_trace):
    d = tiny_trace / "tensors" / "rank-0"
    d.mkdir(parents=True)
    t = pa.table({"step": pa.array([0], pa.int64()), "phase": ["train"], "rank": pa.array([0], pa.int32()), "node_id": pa.array([1], pa.int32()),
                  "kind": ["activation"], "slot": ["0"], "call": pa.array([0], pa.int32()), "dtype": ["float32"], "values": [[1.0, 2.0]]})  # fmt: skip
    with ipc.new_file(str(d / "x.arrow"), t.schema) as w:
        w.write_table(t)
    p = _problem(tracefmt.validate(tiny_trace), "wrong-type")
    assert p.table == "tensors" and p.column == "values" and "arrow.fixed_shape_tensor" in p.message


def test_findings_are_checked(tiny_trace):
    from tracefmt.findings import Finding, findings_table, write_findings

    write_findings(tiny_trace, findings_table([Finding("dead", "dead-layer", "warning", "relu is dead", node_id=2, step_first=0, step_last=3)]))
    assert tracefmt.validate(tiny_trace).valid
    bad = pa.Table.from_pylist([dict(analyzer="x", code="c", severity="fatal", message="m", step_first=5, step_last=1)],
                               schema=pa.schema([f.with_nullable(True) for f in FINDINGS.schema]))  # fmt: skip
    with ipc.new_file(str(tiny_trace / "findings" / "bad.arrow"), bad.schema) as w:
        w.write_table(bad)
    report = tracefmt.validate(tiny_trace)
    assert {(p.code, p.column) for p in report.errors} == {("bad-enum", "severity"), ("bad-value", "step_last")}


def test_unreadable_inputs_raise(tmp_path):
    with pytest.raises(tracefmt.TraceNotFoundError):
        tracefmt.validate(tmp_path / "nope")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "manifest.json").write_text("[")
    with pytest.raises(tracefmt.TraceFormatError, match="not valid JSON"):
        tracefmt.validate(tmp_path / "t")


def test_large_trace_is_validated_batch_by_batch(tmp_path):
    """Many batches in many segments: every row is checked and a late defect is found at its row."""
    from conftest import write_tiny_trace

    path = write_tiny_trace(tmp_path / "t", steps=300, batch_rows=64, segment_bytes=200_000, flush_interval=0)
    segs = sorted((path / "records" / "rank-0").iterdir())
    assert len(segs) > 3
    last = segs[-1]
    table = ipc.open_file(str(last)).read_all()
    kinds = table.column("kind").to_pylist()
    kinds[-1] = "bogus"
    table = table.set_column(table.schema.get_field_index("kind"), "kind", pa.array(kinds))
    with ipc.new_file(str(last), table.schema) as w:
        w.write_table(table, max_chunksize=64)
    report = tracefmt.validate(path)
    assert report.rows_checked["records"] == 1200
    p = _problem(report, "bad-enum")
    assert p.file == f"records/rank-0/{last.name}" and p.row == table.num_rows - 1


def test_duplicate_keys_within_a_segment(tiny_trace):
    _rewrite_records(tiny_trace, lambda rows: rows.__setitem__(5, dict(rows[0])))
    p = _problem(tracefmt.validate(tiny_trace), "duplicate-key")
    assert p.table == "records" and p.column.startswith("step,phase,rank,node_id") and "1 rows repeat the key" in p.message
