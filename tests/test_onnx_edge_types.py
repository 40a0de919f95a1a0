"""ONNX tracing of tensors NumPy cannot hold, of empty tensors and of declared 0-size inputs.

bfloat16 and float8 tensors leave each ONNX Runtime session as exact float32 copies
(cast back when a later chunk reads them), so the trace records them under their own
dtype whether the graph runs as one chunk or one node per chunk. Zero-element tensors
are recorded (statistics, shape) and skipped by raw capture; ``random_feed`` keeps a
declared 0 dimension.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

import tracefmt
from tracefmt.adapters.onnxruntime import load_graph, trace_onnx
from tracefmt.adapters.onnxruntime.inputs import random_feed


def _model(path, nodes, outputs, inputs, opset=21):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _records(path):
    t = tracefmt.open(path)
    names = dict(zip(t.nodes.column("node_id").to_pylist(), t.nodes.column("name").to_pylist()))
    rows = t.read(columns=["node_id", "dtype", "numel", "max", "min", "mean"], kinds=["activation"]).to_pylist()
    return {names[r["node_id"]]: r for r in rows}


@pytest.mark.parametrize(("elem", "name"), [(T.FLOAT8E4M3FN, "float8e4m3fn"), (T.BFLOAT16, "bfloat16"), (T.FLOAT8E5M2, "float8e5m2")])
@pytest.mark.parametrize("chunk_outputs", [1, None])
def test_narrow_floats_are_recorded_under_their_dtype(tmp_path, elem, name, chunk_outputs):
    path = _model(tmp_path / "m.onnx", [
        helper.make_node("Cast", ["x"], ["y"], to=elem, name="down"),
        helper.make_node("Cast", ["y"], ["z"], to=T.FLOAT, name="up"),
        helper.make_node("Mul", ["z", "z"], ["w"], name="square"),
    ], [("w", T.FLOAT)], [("x", T.FLOAT, [2, 3])])  # fmt: skip
    x = np.array([[0.1, -1.3, 2.7], [100.0, -0.02, 3.3]], np.float32)
    trace_onnx(path, {"x": x}, tmp_path / "t.trace", chunk_outputs=chunk_outputs, raw=True)
    rec = _records(tmp_path / "t.trace")
    assert rec["down"]["dtype"] == name and rec["up"]["dtype"] == "float32"
    # The narrow tensor's statistics are those of its exact values: the same as after the cast back.
    for stat in ("max", "min", "mean"):
        assert rec["down"][stat] == rec["up"][stat]
    assert rec["down"]["max"] != pytest.approx(100.0, abs=0) or name == "bfloat16"  # rounded to the narrow type
    values = dict(((k["node_id"], k["slot"]), v) for k, v in tracefmt.open(tmp_path / "t.trace").tensors(kinds=["activation"]))
    assert np.array_equal(values[(0, "0")], values[(1, "0")])


def test_zero_element_tensors_are_recorded_without_raw_values(tmp_path):
    path = _model(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu")], [("y", T.FLOAT)], [("x", T.FLOAT, [0, 3])])
    trace_onnx(path, {"x": np.zeros((0, 3), np.float32)}, tmp_path / "t.trace", raw=True)
    assert _records(tmp_path / "t.trace")["relu"]["numel"] == 0
    assert tracefmt.validate(tmp_path / "t.trace").valid


def test_random_feed_keeps_declared_zero_dimensions(tmp_path):
    path = _model(
        tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu")], [("y", T.FLOAT)], [("x", T.FLOAT, [0, "n", 3])]
    )
    feed = random_feed(load_graph(path), dim=4)
    assert feed["x"].shape == (0, 4, 3)
