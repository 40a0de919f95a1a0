"""``tracefmt onnx``: inputs from files (several batches = steps) or random, and its errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tracefmt
from tracefmt.cli import main


@pytest.fixture()
def model_path(tmp_path):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"), helper.make_node("Tanh", ["h"], ["y"], name="/act/Tanh")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[w],
    )
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_inputs_from_files_one_step_per_value(model_path, tmp_path, capsys):
    a, b = np.ones((2, 4), np.float32), -np.ones((5, 4), np.float32)
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "b.pb").write_bytes(numpy_helper.from_array(b).SerializeToString())
    out = tmp_path / "t"
    rc = main(
        [
            "onnx",
            str(model_path),
            "--input",
            f"x={tmp_path / 'a.npy'}",
            "--input",
            f"x={tmp_path / 'b.pb'}",
            "-o",
            str(out),
            "--format",
            "json",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["nodes"] == 2
    recs = tracefmt.open(out).read(kinds=["activation"], nodes=[1]).sort_by("step").to_pylist()
    assert [r["shape"] for r in recs] == [[2, 3], [5, 3]]
    assert recs[0]["mean"] == pytest.approx(float(np.tanh(a @ (np.arange(12).reshape(4, 3) / 10)).mean()))
    assert recs[1]["max"] < 0


def test_random_inputs_and_options(model_path, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["onnx", str(model_path), "--random", "--dim", "3", "--raw", "--no-histogram", "--chunk-outputs", "0", "-o", str(out)]) == 0
    assert "nodes" in capsys.readouterr().out
    trace = tracefmt.open(out)
    assert trace.read(kinds=["activation"]).column("shape").to_pylist()[0] == [3, 3]
    assert trace.read().column("hist_counts").null_count == trace.records.count_rows()
    assert trace.manifest["metadata"]["chunk_outputs"] is None and len(list(trace.tensors())) == 3
    assert main(["onnx", str(model_path), "--random", "-o", str(out), "--overwrite", "--optimization", "all"]) == 0


def test_errors_are_one_line_and_exit_2(model_path, tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.ones((2, 4), np.float32))
    cases = [
        (["onnx", str(model_path), "-o", str(tmp_path / "t1")], "no value for model input(s) x"),
        (["onnx", str(model_path), "--input", "x", "-o", str(tmp_path / "t2")], "expected NAME=FILE"),
        (["onnx", str(model_path), "--input", f"z={tmp_path / 'a.npy'}", "-o", str(tmp_path / "t3")], "unknown input(s) z"),
        (["onnx", str(tmp_path / "missing.onnx"), "--random", "-o", str(tmp_path / "t4")], "no such ONNX model file"),
        (["onnx", str(model_path), "--input", f"x={tmp_path / 'nope.npy'}", "-o", str(tmp_path / "t5")], "no such input file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
