"""Hostile and damaged traces: nothing outside the trace is touched, outputs are never
silently replaced, memory does not follow declared numbers, and the CLI's exit codes
separate a verdict (0/1) from bad input (2) and an internal error (3)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_tiny_trace

import tracefmt
from tracefmt.cli import EXIT_INTERNAL, EXIT_USAGE, main
from tracefmt.compaction import compact_trace
from tracefmt.errors import TraceFormatError
from tracefmt.stats import tensor_stats

CONFORMANCE = Path(__file__).resolve().parent.parent / "spec" / "conformance" / "cases"


def _rank_dir(trace: Path) -> Path:
    """The one rank directory of the records of a single-rank trace (its name follows the format version)."""
    return next(p for p in (trace / "records").iterdir() if p.is_dir() and not p.name.startswith("."))


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_text("keep me\n")
    return v


def test_journal_naming_files_outside_the_trace_is_refused(tmp_path):
    trace = write_tiny_trace(tmp_path / "t")
    victim = _victim(tmp_path)
    rank = _rank_dir(trace)
    output = sorted(p.name for p in rank.iterdir())[0]
    for replaces in ([os.path.relpath(victim, rank)], [str(victim)], [".."]):
        (rank / ".compact.json").write_text(json.dumps({"output": output, "replaces": replaces}))
        with pytest.raises(TraceFormatError, match="not a plain file name"):
            compact_trace(trace)
        with pytest.raises(TraceFormatError, match="not a plain file name"):
            tracefmt.open(trace).read("records")
        assert victim.read_text() == "keep me\n"
    report = tracefmt.validate(trace)
    assert not report.valid and "not a plain file name" in str(report)


def test_links_planted_at_temporary_names_are_never_written_through(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t")
    victim = _victim(tmp_path)
    rank = _rank_dir(trace)
    for name in (".compact.json.tmp", ".part-00001.parquet.tmp", ".part-00000.parquet.tmp"):
        (rank / name).symlink_to(victim)
    (trace / "findings").mkdir()
    for name in (".dead.arrow.tmp", ".findings.arrow.tmp", ".loss.arrow.tmp"):
        (trace / "findings" / name).symlink_to(victim)
    assert main(["analyze", str(trace), "--write", "--only", "dead,loss"]) in (0, 1)
    assert main(["compact", str(trace)]) == 0
    assert victim.read_text() == "keep me\n"
    assert tracefmt.open(trace).read("records").num_rows == 16
    assert [p.suffix for p in rank.iterdir() if not p.name.startswith(".")] == [".parquet"]


def test_symlinked_directory_and_files_inside_a_trace_are_refused(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t")
    outside = tmp_path / "outside"
    rank = _rank_dir(trace)
    shutil.move(rank, outside)
    rank.symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.iterdir())
    assert main(["info", str(trace)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err
    assert main(["compact", str(trace), "--force"]) == EXIT_USAGE
    assert sorted(p.name for p in outside.iterdir()) == before
    report = tracefmt.validate(trace)
    assert not report.valid and any("symbolic link" in p.message for p in report.errors)
    # A linked manifest is refused too (it could point at /dev/zero).
    m = trace / "manifest.json"
    m.rename(tmp_path / "manifest.json")
    m.symlink_to("/dev/zero")
    assert main(["validate", str(trace)]) == EXIT_USAGE


def test_fifos_in_a_trace_do_not_hang_readers(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t")
    (trace / "findings").mkdir()
    os.mkfifo(trace / "findings" / "dead.parquet")
    os.mkfifo(_rank_dir(trace) / "part-00099.arrows")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(report=tracefmt.validate(trace)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "validate blocked on a FIFO"
    errors = [p for p in result["report"].errors if "FIFO" in p.message]
    assert len(errors) == 2
    assert main(["info", str(trace)]) == EXIT_USAGE
    assert "FIFO" in capsys.readouterr().err


def test_output_paths_are_never_replaced_silently(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t")
    existing = tmp_path / "graph.svg"
    existing.write_text("mine")
    assert main(["render", str(trace), "-o", str(existing)]) == EXIT_USAGE
    assert existing.read_text() == "mine" and "--overwrite" in capsys.readouterr().err
    assert main(["render", str(trace), "-o", str(existing), "--overwrite", "--no-findings"]) == 0
    assert existing.read_text().lstrip().startswith("<?xml")
    a_dir = tmp_path / "adir"
    a_dir.mkdir()
    assert main(["report", str(trace), "-o", str(a_dir)]) == EXIT_USAGE
    assert main(["analyze", str(trace), "--out", str(existing)]) == EXIT_USAGE
    assert main(["analyze", str(trace), "--out", str(a_dir), "--only", "dead"]) in (0, 1)
    assert main(["analyze", str(trace), "--out", str(a_dir), "--only", "dead"]) == EXIT_USAGE
    assert main(["analyze", str(trace), "--out", str(a_dir), "--only", "dead", "--overwrite"]) in (0, 1)
    assert main(["demo", "--out", str(existing)]) == EXIT_USAGE
    # compact with an unknown codec: a one-line error and no temporary file left behind.
    assert main(["compact", str(trace), "--compression", "bogus"]) == EXIT_USAGE
    assert not [p for p in trace.rglob("*.tmp")]
    assert tracefmt.validate(trace).valid


def test_onnx_overwrite_replaces_only_a_trace(tmp_path, capsys):
    from onnx import TensorProto, helper, save_model

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])  # fmt: skip
    model = tmp_path / "m.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    not_a_trace = tmp_path / "data"
    not_a_trace.mkdir()
    (not_a_trace / "manifest.json").write_text("{}")
    (not_a_trace / "precious.txt").write_text("x")
    assert main(["onnx", str(model), "--random", "-o", str(not_a_trace), "--overwrite"]) == EXIT_USAGE
    assert "not a tracefmt trace" in capsys.readouterr().err
    assert (not_a_trace / "precious.txt").exists()
    out = tmp_path / "t"
    assert main(["onnx", str(model), "--random", "-o", str(out)]) == 0
    assert main(["onnx", str(model), "--random", "-o", str(out)]) == EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    assert main(["onnx", str(model), "--random", "-o", str(out), "--overwrite"]) == 0
    assert tracefmt.validate(out).valid
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["invalid_missing_column", "invalid_null_in_required"])
def test_invalid_conformance_cases_never_crash_a_command(case, tmp_path, capsys):
    trace = tmp_path / case
    shutil.copytree(CONFORMANCE / case, trace)
    for argv in (["info", str(trace)], ["analyze", str(trace)], ["render", str(trace), "-o", str(tmp_path / "g.svg")],
                 ["report", str(trace), "-o", str(tmp_path / "r.html")], ["compact", str(trace), "--force"]):  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1, EXIT_USAGE), (argv, code, err)
        assert "Traceback" not in err and err.count("\n") <= 1, err


@pytest.mark.parametrize("case", sorted(p.name for p in CONFORMANCE.iterdir() if p.name.startswith("valid_")))
def test_every_valid_conformance_case_goes_through_every_reading_command(case, tmp_path, capsys):
    """A valid trace is never refused by a command (a scalars-only trace made ``report`` exit 2)."""
    trace = tmp_path / case
    shutil.copytree(CONFORMANCE / case / "trace", trace)
    for argv in (["info", str(trace)], ["analyze", str(trace)], ["render", str(trace), "-o", str(tmp_path / "g.svg")],
                 ["report", str(trace), "-o", str(tmp_path / "r.html")]):  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1) and "error" not in err, (argv, code, err)


def test_internal_error_is_exit_3_with_one_line_and_debug_traceback(tmp_path, capsys, monkeypatch):
    import tracefmt.cli.info as info_cmd

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(info_cmd, "run", broken)
    trace = write_tiny_trace(tmp_path / "t")
    assert main(["info", str(trace)]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and str(trace) in err and "--debug" in err
    assert main(["info", str(trace), "--debug"]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_memory_does_not_follow_declared_node_ids_or_class_labels(tmp_path):
    big = 2**31 - 1
    with tracefmt.TraceWriter(tmp_path / "t", model="m") as w:
        w.write_nodes([
            dict(node_id=0, name="", scope="", op_type="Net", parent=None, container=True, inputs=[], outputs=[], param_count=0, order=0),
            dict(node_id=big, name="relu", scope="relu", op_type="ReLU", parent=0, container=False, inputs=["x"], outputs=["y"], param_count=0, order=1),
        ])  # fmt: skip
        for step in range(3):
            w.write_records(
                [dict(step=step, phase="train", node_id=big, kind="activation", slot="0", call=0, seq=0, **tensor_stats(np.zeros((4, 8))))]
            )
        w.append("predictions", [dict(step=0, phase="eval", y_true=t, y_pred=p) for t, p in [(15000, 15000), (2**40, 3), (3, 3)] * 5])
    from tracefmt.analyzers import run

    report = run(tmp_path / "t", names=["dead", "confusion"])
    dead = [f for f in report.findings_list if f.analyzer == "dead" and f.severity.value != "info"]
    assert dead and dead[0].node == "relu"
    assert report.results["confusion"].data["classes"] == [3, 15000, 2**40]


def test_parameter_ranges_are_declared_and_checked(tmp_path, capsys):
    from tracefmt.analyzers import registry
    from tracefmt.analyzers import run as run_analyzers
    from tracefmt.errors import UsageError

    # Every default lies in its own declared range.
    for name in registry.names():
        cls = registry.get(name)
        for p in cls.params:
            assert p.check(p.default, what=f"{name}.{p.name}") == p.default
    trace = write_tiny_trace(tmp_path / "t")
    for setting in ("dead.threshold=-3", "dead.window=0", "loss.smooth=-4", "gradients.growth_factor=-1", "dead.near_zero=nan"):
        assert main(["analyze", str(trace), "--set", setting]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("out of range" in err or "NaN" in err), err
    with pytest.raises(UsageError, match="empty analyzer selection"):
        run_analyzers(trace, names="")
    assert main(["analyze", str(trace), "--only", ""]) == EXIT_USAGE
    for bad in (["--atol", "-1"], ["--rtol", "nan"], ["--growth", "0"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
            main(["diff", str(trace), str(trace), *bad])
        assert exit_info.value.code == EXIT_USAGE


def test_odd_versions_and_a_damaged_complete_trace(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t")
    m = json.loads((trace / "manifest.json").read_text())
    for version in ("².0", "1.٣", "1.0.0", 1.0):
        (trace / "manifest.json").write_text(json.dumps({**m, "format_version": version}))
        assert main(["info", str(trace)]) == EXIT_USAGE
        assert "format_version" in capsys.readouterr().err
        # validate reports it (fuzz seed 4 case 37,428: '².0' passed isdigit, then int() raised)
        assert [p.code for p in tracefmt.validate(trace).errors] == ["bad-version" if isinstance(version, str) else "wrong-type"]
    (trace / "manifest.json").write_text(json.dumps(m))
    # A truncated segment in a trace marked complete is damage: compact refuses to drop its tail.
    seg = next((_rank_dir(trace)).iterdir())
    os.truncate(seg, seg.stat().st_size - 40)
    assert main(["compact", str(trace)]) == EXIT_USAGE
    assert "marked complete" in capsys.readouterr().err and seg.exists()


def test_validate_reports_null_keys_and_null_node_ids_without_crashing(tmp_path):
    """Nulls in key columns (found by the fuzzer): a verdict naming them, never an exception."""
    import pyarrow.ipc as ipc

    src = Path(__file__).resolve().parent.parent / "spec" / "conformance" / "cases" / "valid_minimal" / "trace"
    trace = tmp_path / "t"
    shutil.copytree(src, trace)

    def rewrite(path, fn):
        with ipc.open_file(str(path)) as r:
            table = r.read_all()
        table = fn(table)
        with ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)

    def null_first(table, name, rows):
        col = table.column(name).to_pylist()
        for i in rows:
            col[i] = None
        return table.set_column(table.schema.get_field_index(name), table.schema.field(name), pa.array(col, table.schema.field(name).type))

    rewrite(trace / "nodes.arrow", lambda t: null_first(t, "node_id", [0, 1]))
    seg = next((trace / "records").rglob("*.arrow"))
    rewrite(seg, lambda t: null_first(t, "step", [0, 1, 2]))
    report = tracefmt.validate(trace)
    assert not report.valid
    assert "null-value" in {p.code for p in report.problems}


def test_analyze_ignores_records_naming_nodes_outside_the_table(tmp_path):
    """A record with node_id -2**31 or past the last node (found by the fuzzer): a verdict, never an IndexError."""
    import pyarrow.ipc as ipc

    from tracefmt.cli import main

    src = Path(__file__).resolve().parent.parent / "spec" / "conformance" / "cases" / "valid_minimal" / "trace"
    trace = tmp_path / "t"
    shutil.copytree(src, trace)
    seg = next((trace / "records").rglob("*.arrow"))
    with ipc.open_file(str(seg)) as r:
        table = r.read_all()
    ids = table.column("node_id").to_pylist()
    ids[0], ids[1] = -(2**31), 2**31 - 1
    table = table.set_column(table.schema.get_field_index("node_id"), table.schema.field("node_id"), pa.array(ids, pa.int32()))
    with ipc.new_file(str(seg), table.schema) as w:
        w.write_table(table)
    assert main(["analyze", str(trace)]) in (0, 1)
    assert not tracefmt.validate(trace).valid


def _rewrite_segment(seg: Path, change) -> None:
    """Rewrite the IPC segment ``seg`` with ``change(table) -> table`` applied."""
    import pyarrow.ipc as ipc

    with ipc.open_file(str(seg)) as r:
        table = change(r.read_all())
    with ipc.new_file(str(seg), table.schema) as w:
        w.write_table(table)


def test_huge_statistics_give_inf_never_overflow_error(tmp_path):
    """Finite statistics near 1e300 (found by the fuzzer in ``report``): squares become inf, not OverflowError."""
    from tracefmt.analyzers.render import Metric, render_graph

    trace = tmp_path / "t"
    shutil.copytree(CONFORMANCE / "valid_minimal" / "trace", trace)
    seg = next((trace / "records").rglob("*.arrow"))

    def huge(table: pa.Table) -> pa.Table:
        for name in ("std", "mean", "l2"):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i), pa.array([1e300] * table.num_rows, pa.float64()))
        return table

    _rewrite_segment(seg, huge)
    for metric in (Metric.STD, Metric.L2):
        assert "<svg" in render_graph(trace, metric=metric).pipe(format="svg").decode()
    assert main(["report", str(trace), "-o", str(tmp_path / "r.html")]) in (0, 1)
    assert (tmp_path / "r.html").stat().st_size > 0


def test_validate_refuses_raw_tensors_with_null_rows_or_elements(tiny_trace):
    """A null tensor row (found by the fuzzer: 'valid', then unreadable) or null elements (read back as zeros)."""
    with tracefmt.TraceWriter(tiny_trace, mode="append") as w:
        for step in range(3):
            w.write_tensor(np.arange(6, dtype=np.float32).reshape(2, 3) + step, step=step, node_id=1, kind="activation")
    seg = next((tiny_trace / "tensors").rglob("*.arrow"))
    with pa.ipc.open_file(str(seg)) as r:
        original = r.read_all()
    assert tracefmt.validate(tiny_trace).valid
    col = original.column("values").combine_chunks()
    width = col.type.storage_type.list_size
    flat = col.storage.values.to_numpy(zero_copy_only=False).astype(col.type.value_type.to_pandas_dtype())
    mask = np.zeros(len(flat), dtype=bool)
    mask[width - 1] = True  # one null element in the first row
    variants = {
        "null-value": pa.ExtensionArray.from_storage(
            col.type, pa.FixedSizeListArray.from_arrays(pa.array(flat), width, mask=pa.array([True] + [False] * (len(col) - 1)))
        ),
        "null-element": pa.ExtensionArray.from_storage(col.type, pa.FixedSizeListArray.from_arrays(pa.array(flat, mask=mask), width)),
    }
    for code, values in variants.items():
        _rewrite_segment(seg, lambda t, v=values: t.set_column(t.schema.get_field_index("values"), t.schema.field("values"), v))
        problems = [p for p in tracefmt.validate(tiny_trace).errors if p.table == "tensors" and p.column == "values"]
        assert [p.code for p in problems] == [code]
        with pytest.raises(TraceFormatError, match="'values'"):
            list(tracefmt.open(tiny_trace).tensors())


def test_parquet_segment_whose_column_names_are_not_utf8(tmp_path, capsys):
    """A bit flip in a Parquet footer's column name (found by the fuzzer: UnicodeDecodeError in ``report``)."""
    trace = tmp_path / "t"
    shutil.copytree(CONFORMANCE / "valid_minimal" / "trace", trace)
    compact_trace(trace, force=True)
    seg = next((trace / "records").rglob("*.parquet"))
    data = bytearray(seg.read_bytes())
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    hits = [i for i in range(footer, len(data)) if data.startswith(b"node_id", i)]
    assert hits
    for at in hits:  # the schema element and the column chunk's path
        data[at] = 0xED  # the lead byte of a three-byte sequence, followed by ASCII: not UTF-8
    seg.write_bytes(bytes(data))
    assert main(["validate", str(trace)]) == 1
    for command in (["report", str(trace), "-o", str(tmp_path / "r.html")], ["info", str(trace)], ["analyze", str(trace)]):
        assert main(command) in (0, 1, EXIT_USAGE), command
        err = capsys.readouterr().err
        assert "internal error" not in err and "Traceback" not in err


def test_manifest_fields_of_the_wrong_json_type_are_invalid_and_never_crash(tmp_path, capsys):
    """``producer`` a string, ``metadata`` a number, ``world_size`` a boolean (the first found by the fuzzer in ``report``)."""
    trace = tmp_path / "t"
    shutil.copytree(CONFORMANCE / "valid_minimal" / "trace", trace)
    manifest = json.loads((trace / "manifest.json").read_text())
    manifest.update(producer="torch", metadata=3, world_size=True, complete="yes")
    (trace / "manifest.json").write_text(json.dumps(manifest))
    codes = {(p.code, p.column) for p in tracefmt.validate(trace).errors}
    assert {("wrong-type", "producer"), ("wrong-type", "metadata"), ("wrong-type", "world_size"), ("wrong-type", "complete")} <= codes
    opened = tracefmt.open(trace)
    assert "producer" not in opened.manifest and opened.complete is False
    for command in (["report", str(trace), "-o", str(tmp_path / "r.html")], ["info", str(trace)], ["analyze", str(trace)]):
        assert main(command) in (0, 1), command
        assert "internal error" not in capsys.readouterr().err


def test_histograms_without_bins_are_skipped_by_the_analyzers(tmp_path):
    """Empty ``hist_counts`` lists (found by the fuzzer: a reshape error in the activations analyzer)."""
    from tracefmt.analyzers import run

    trace = tmp_path / "t"
    shutil.copytree(CONFORMANCE / "valid_minimal" / "trace", trace)
    seg = next((trace / "records").rglob("*.arrow"))

    def no_bins(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index("hist_counts")
        counts = table.column(i).to_pylist()
        assert any(c is not None for c in counts)
        return table.set_column(i, table.schema.field(i), pa.array([None if c is None else [] for c in counts], table.schema.field(i).type))

    _rewrite_segment(seg, no_bins)
    assert not tracefmt.validate(trace).valid
    report = run(trace)
    assert "activations" in report.results


def test_parquet_segment_columns_of_another_type(tmp_path):
    """A string where the table has a list (found by the fuzzer: a cast error inside the scan)
    is refused with a one-line error; a widened type another engine writes (int64 step ids,
    large strings) still reads."""
    import pyarrow.parquet as pq

    trace = tmp_path / "t"
    shutil.copytree(CONFORMANCE / "valid_minimal" / "trace", trace)
    compact_trace(trace, force=True)
    seg = next((trace / "records").rglob("*.parquet"))
    table = pq.read_table(seg)
    expected = tracefmt.open(trace).read("records").num_rows

    def rewrite(name: str, array: pa.Array) -> None:
        nonlocal table
        i = table.schema.get_field_index(name)
        table = table.set_column(i, pa.field(name, array.type), array)
        pq.write_table(table, seg)

    rewrite("node_id", table.column("node_id").cast(pa.int64()))
    rewrite("phase", table.column("phase").cast(pa.large_string()))
    assert tracefmt.open(trace).read("records", kinds=["activation"]).num_rows > 0
    assert tracefmt.open(trace).read("records").num_rows == expected
    rewrite("shape", pa.array(["[2, 3]"] * table.num_rows))
    with pytest.raises(TraceFormatError, match="'shape' has type string"):
        tracefmt.open(trace).read("records", kinds=["activation"])


def test_columns_are_validated_when_read_and_damage_is_always_caught(tmp_path, capsys):
    """A closed segment is validated column by column as readers ask for them: a scan of
    sound columns reads, any read of the damaged one is a one-line error, and ``validate``
    and ``analyze`` (which read every column) report it."""
    import pyarrow.ipc as ipc

    trace = tmp_path / "t"
    shutil.copytree(CONFORMANCE / "valid_minimal" / "trace", trace)
    seg = next((trace / "records").rglob("*.arrow"))
    with ipc.open_file(str(seg)) as r:
        table = r.read_all().combine_chunks()
    i = table.schema.get_field_index("dtype")
    good = table.column(i).chunk(0)
    data = bytearray(good.buffers()[2].to_pybytes())
    data[0] = 0xFF  # not UTF-8: only pyarrow's full validation sees it
    bad = pa.Array.from_buffers(pa.string(), len(good), [None, good.buffers()[1], pa.py_buffer(bytes(data))])
    with ipc.new_file(str(seg), table.schema) as w:
        w.write_table(table.set_column(i, table.schema.field(i), bad))
    opened = tracefmt.open(trace)
    assert opened.read("records", columns=["step", "node_id", "mean"], kinds=["activation"]).num_rows > 0
    for read in (lambda: opened.read("records", columns=["dtype"]), lambda: opened.read("records"), lambda: opened.records.to_table()):
        with pytest.raises(TraceFormatError, match="UTF8|UTF-8|utf8"):
            read()
    assert any(p.code == "unreadable" for p in tracefmt.validate(trace).errors)
    for argv in (["analyze", str(trace)], ["validate", str(trace)]):
        assert main(argv) in (1, EXIT_USAGE)
        assert "internal error" not in capsys.readouterr().err


def test_raw_tensor_files_lacking_a_required_column(tiny_trace, capsys):
    """A tensors file without 'call' or 'kind' (found by the fuzzer in ``diff``: KeyError, a cast inside a filter)."""
    import pyarrow.ipc as ipc

    reference = tiny_trace.parent / "reference"
    with tracefmt.TraceWriter(tiny_trace, mode="append") as w:
        w.write_tensor(np.ones((2, 3), np.float32), step=0, node_id=1, kind="activation")
    shutil.copytree(tiny_trace, reference)
    seg = next((tiny_trace / "tensors").rglob("*.arrow"))
    with ipc.open_file(str(seg)) as r:
        table = r.read_all()
    for column in ("call", "kind"):
        with ipc.new_file(str(seg), table.drop_columns([column]).schema) as w:
            w.write_table(table.drop_columns([column]))
        with pytest.raises(TraceFormatError, match=f"lacks required column '{column}'"):
            list(tracefmt.open(tiny_trace).tensors(kinds=["activation"]))
        assert main(["diff", str(tiny_trace), str(reference)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"lacks required column '{column}'" in err and err.count("\n") == 1
