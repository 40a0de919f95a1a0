"""``tracefmt diff``: two ONNX Runtime traces (op-level join), exit codes and output formats."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tracefmt.adapters.onnxruntime import trace_onnx
from tracefmt.analyzers.diff import diff_traces
from tracefmt.cli import main


def _model(scale: float = 1.0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32) * scale
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
        helper.make_node("MatMul", ["r", "w2"], ["z"], name="/fc2/MatMul"),
        helper.make_node("Relu", ["z"], ["r2"], name="/act/Relu_1"),
        helper.make_node("Sigmoid", ["r2"], ["y"], name="/out/Sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffcli")
    feed = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    trace_onnx(_model(), feed, root / "ref")
    trace_onnx(_model(), feed, root / "same", raw=True)
    trace_onnx(_model(), feed, root / "same_raw", raw=True)
    trace_onnx(_model(1.01), feed, root / "changed")
    return root


def test_op_level_join_by_scope_and_by_name(traces):
    for by in ("scope", "name"):
        result = diff_traces(traces / "changed", traces / "ref", by=by)
        assert len(result.compared) == 5 and not result.unmatched_a and not result.unmatched_b
        first = result.first_divergence
        assert first is not None and first.a_node == "/fc2/MatMul" and first.key == ("fc2" if by == "scope" else "/fc2/MatMul")
        # The repeated 'act' scope (Relu, Relu_1) is joined occurrence by occurrence.
        assert [c.b_node for c in result.compared if c.a_node.startswith("/act/")] == ["/act/Relu", "/act/Relu_1"]
    exact = diff_traces(traces / "same", traces / "same_raw")
    assert exact.first_divergence is None and {c.method for c in exact.compared} == {"values"}


def test_cli_exit_codes_and_formats(traces, capsys):
    assert main(["diff", str(traces / "same"), str(traces / "ref")]) == 0
    assert "no divergence" in capsys.readouterr().out
    assert main(["diff", str(traces / "changed"), str(traces / "ref")]) == 1
    out = capsys.readouterr().out
    assert "first divergence: fc2" in out and "/fc2/MatMul" in out
    assert main(["diff", str(traces / "changed"), str(traces / "ref"), "--format", "json", "--by", "name"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["first_divergence"]["a_node"] == "/fc2/MatMul" and len(doc["compared"]) == 5
    # A loose enough tolerance makes the change acceptable.
    assert main(["diff", str(traces / "changed"), str(traces / "ref"), "--rtol", "0.05"]) == 0
    capsys.readouterr()
    assert main(["diff", str(traces / "changed"), str(traces / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1


def test_findings_colour_the_graph_by_diff_error(traces):
    import tracefmt
    from tracefmt.analyzers.render.graph import render_graph

    result = diff_traces(traces / "changed", traces / "ref")
    graph = render_graph(tracefmt.open(traces / "changed"), metric="diff_error", findings=result.findings)
    assert graph.info.scale is not None and "diff error" in graph.info.scale.label
    errors = [nid for nid, severity in graph.info.marked.items() if str(severity) == "error"]
    assert errors == [result.first_divergence.a_node_id]  # the first divergence, on trace A's graph
