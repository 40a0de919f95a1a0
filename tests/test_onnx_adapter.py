"""ONNX Runtime adapter on hand-built ONNX models: records, nodes table, chunking, scopes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tracefmt
from tracefmt.adapters.onnxruntime import load_graph, random_feed, recover_scopes, trace_onnx
from tracefmt.adapters.onnxruntime.chunks import estimate_sizes, plan_chunks
from tracefmt.errors import UsageError
from tracefmt.histogram import FASTAI_BINNING
from tracefmt.stats import channel_stats, tensor_stats

OPSET = [helper.make_opsetid("", 17)]


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x(2,4) -> MatMul -> Add -> Relu -> MatMul(+Constant scale) -> Softmax, plus a Log branch."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="/fc1/MatMul"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="/fc1/Add"),
        helper.make_node("Relu", ["h1"], ["h2"], name="/act/Relu"),
        helper.make_node("Constant", [], ["scale"], name="/Constant", value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="/fc2/MatMul"),
        helper.make_node("Mul", ["h3", "scale"], ["h4"], name="/Mul"),
        helper.make_node("Softmax", ["h4"], ["y"], name="/Softmax", axis=1),
        helper.make_node("Log", ["x"], ["logx"], name="/Log"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("logx", TensorProto.FLOAT, ["N", 4]),
        ],
        initializer=[w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def _records(path) -> list[dict]:
    """The records of a trace, in order, without ``run_id`` (each capture is a run of its own)."""
    table = tracefmt.open(path).read().sort_by([("step", "ascending"), ("seq", "ascending")])
    return table.drop_columns([c for c in ("run_id",) if c in table.column_names]).to_pylist()


def _feed(seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((2, 4)).astype(np.float32)
    x[0, 0] = 0.0  # log(0) = -inf
    return {"x": x}


def test_records_equal_reference_statistics_and_ort_values(tmp_path):
    model = _mlp()
    path = trace_onnx(model, _feed(), tmp_path / "t", raw=True, median=True)
    trace = tracefmt.open(path)
    nodes = trace.nodes.to_pylist()
    # Independent run: the same graph with every intermediate exposed, in one plain session.
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = ["h0", "h1", "h2", "h3", "h4"]
    exposed.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, _feed())))
    raw = {(k["node_id"], k["slot"]): v for k, v in trace.tensors(kinds=["activation"])}
    acts = [r for r in _records(path) if r["kind"] == "activation"]
    assert {nodes[r["node_id"]]["outputs"][int(r["slot"])] for r in acts} == set(expected)  # Constant output not captured
    for r in acts:
        tensor = nodes[r["node_id"]]["outputs"][int(r["slot"])]
        np.testing.assert_array_equal(raw[(r["node_id"], r["slot"])], expected[tensor])
        ref = tensor_stats(expected[tensor], median=True)
        for col in (
            "numel",
            "nan_count",
            "inf_count",
            "zero_count",
            "pos_count",
            "mean",
            "std",
            "min",
            "max",
            "abs_mean",
            "l2",
            "median",
            "hist_counts",
        ):
            assert r[col] == ref[col], (tensor, col)
        assert r["channel_pos_frac"] == pytest.approx(channel_stats(expected[tensor])["channel_pos_frac"])
    logx = next(r for r in acts if nodes[r["node_id"]]["op_type"] == "Log")
    assert logx["inf_count"] == 1 and logx["nan_count"] == int((_feed()["x"] < 0).sum()) > 0
    inputs = [r for r in _records(path) if r["kind"] == "input"]
    assert sorted(nodes[r["node_id"]]["name"] for r in inputs) == ["/Log", "/fc1/MatMul"]
    seqs = [r["seq"] for r in _records(path)]
    assert seqs == list(range(len(seqs)))


def test_nodes_table_from_graph(tmp_path):
    path = trace_onnx(_mlp(), _feed(), tmp_path / "t", histogram=FASTAI_BINNING)
    nodes = tracefmt.open(path).nodes.to_pylist()
    assert [n["op_type"] for n in nodes] == ["MatMul", "Add", "Relu", "Constant", "MatMul", "Mul", "Softmax", "Log"]
    assert [n["order"] for n in nodes] == list(range(8))
    assert [n["scope"] for n in nodes] == ["fc1", "fc1", "act", "", "fc2", "", "", ""]
    assert sum(n["param_count"] for n in nodes) == 4 * 8 + 8 + 8 * 3
    assert nodes[0]["param_count"] == 32 and nodes[1]["param_count"] == 8
    assert json.loads(nodes[6]["attributes"]) == {"axis": 1}
    assert json.loads(nodes[3]["attributes"])["value"]["values"] == 0.5
    assert nodes[3]["note"].startswith("constant")
    assert nodes[4]["inputs"] == ["h2", "w2"] and nodes[4]["outputs"] == ["h3"]
    edges = {(s, d) for s, d, _ in tracefmt.open(path).edges()}
    assert (0, 1) in edges and (3, 5) in edges
    assert tracefmt.validate(path).valid
    rec = _records(path)[1]
    assert rec["hist_scheme"] == "abs_linear" and len(rec["hist_counts"]) == 40


def test_chunked_capture_equals_one_session(tmp_path):
    model = _mlp()
    one = _records(trace_onnx(model, _feed(), tmp_path / "one", chunk_outputs=None))
    info = load_graph(model)
    chunks = plan_chunks(info, 1, {"x"})
    assert len(chunks) == 7  # one captured output each; the Constant joins a neighbour
    for c in chunks:
        assert len([o for o in c.outputs if o in {"h0", "h1", "h2", "h3", "h4", "y", "logx"}]) <= 1
    many = _records(trace_onnx(model, _feed(), tmp_path / "many", chunk_outputs=1))
    assert repr(many) == repr(one)  # repr: NaN channel means compare equal


def test_several_batches_are_steps_and_manifest_records_the_runtime(tmp_path):
    feeds = [_feed(s) for s in range(3)]
    path = trace_onnx(_mlp(), feeds, tmp_path / "t", phase="eval", start_step=5, optimization="all")
    trace = tracefmt.open(path)
    recs = _records(path)
    assert sorted({r["step"] for r in recs}) == [5, 6, 7] and {r["phase"] for r in recs} == {"eval"}
    means = {r["step"]: r["mean"] for r in recs if r["kind"] == "activation" and r["node_id"] == 2}
    assert len(set(means.values())) == 3
    meta = trace.manifest["metadata"]
    assert meta["providers"] == ["CPUExecutionProvider"] and meta["graph_optimization_level"] == "all" and meta["steps"] == 3
    assert trace.manifest["producer"]["framework"] == "onnxruntime" and trace.complete


def test_subgraph_node_is_opaque_and_reads_outer_scope_across_chunks(tmp_path):
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["a", "two"], ["t_out"])], "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)]
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e_out"])], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Exp", ["x"], ["b"], name="exp"),
        helper.make_node("ReduceSum", ["b"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    path = trace_onnx(model, {"x": x}, tmp_path / "t", chunk_outputs=1, raw=True)
    trace = tracefmt.open(path)
    node = trace.nodes.to_pylist()[4]
    assert node["op_type"] == "If" and "opaque" in node["note"] and "reads outer-scope tensors a" in node["note"]
    assert "then_branch" in json.loads(node["attributes"])
    y = next(v for k, v in trace.tensors(kinds=["activation"]) if k["node_id"] == 4)
    np.testing.assert_array_equal(y, np.maximum(x, 0) * 2)


def test_external_data_is_read_by_path(tmp_path):
    model = _mlp()
    onnx.save_model(
        model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0
    )
    info = load_graph(tmp_path / "m.onnx")
    assert info.has_external_data and all(not t.raw_data for t in info.initializers.values())
    ext = _records(trace_onnx(tmp_path / "m.onnx", _feed(), tmp_path / "ext", chunk_outputs=2))
    assert repr(ext) == repr(_records(trace_onnx(_mlp(), _feed(), tmp_path / "mem")))
    # onnx.save_model turned the in-memory proto's initializers into file references
    with pytest.raises(UsageError, match="external data.*path"):
        trace_onnx(model, _feed(), tmp_path / "proto")


def test_scope_recovery_from_both_exporters():
    names = [
        "/layer1/layer1.0/conv1/Conv",
        "/layer1/layer1.0/relu/Relu",
        "/layer1/layer1.0/relu_1/Relu",
        "/h.0/ln_1/LayerNormalization",
        "/Flatten",
        "Conv_3",
        "",
    ]
    nodes = [helper.make_node("Relu", ["x"], [f"o{i}"], name=n) for i, n in enumerate(names)]
    dyn = helper.make_node("Conv", ["x"], ["c"], name="node_Conv_33")
    dyn.metadata_props.add(
        key="pkg.torch.onnx.name_scopes", value="['', 'layer1', 'layer1.0', 'layer1.0.bn1', '_native_batch_norm_legit_no_training']"
    )
    top = helper.make_node("Reshape", ["x"], ["v"], name="node_view")
    top.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'view']")
    scopes = recover_scopes(nodes + [dyn, top])
    assert scopes == ["layer1.0.conv1", "layer1.0.relu", "layer1.0.relu", "h.0.ln_1", "", "", "", "layer1.0.bn1", ""]


def test_bad_inputs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="missing model input.*x"):
        trace_onnx(_mlp(), {"y": np.zeros((2, 4), np.float32)}, tmp_path / "a")
    with pytest.raises(UsageError, match="unknown input.*z"):
        trace_onnx(_mlp(), {"x": np.zeros((2, 4), np.float32), "z": 1}, tmp_path / "b")
    with pytest.raises(UsageError, match="not available"):
        trace_onnx(_mlp(), _feed(), tmp_path / "c", providers=("NoSuchExecutionProvider",))
    with pytest.raises(UsageError, match="optimization level"):
        trace_onnx(_mlp(), _feed(), tmp_path / "d", optimization="max")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UsageError, match="bad.onnx"):
        trace_onnx(bad, _feed(), tmp_path / "e")
    # float64 data for a float input is cast, not refused; random feeds follow the declared types
    path = trace_onnx(_mlp(), {"x": np.ones((2, 4))}, tmp_path / "f")
    assert tracefmt.open(path).read().column("dtype").to_pylist()[0] == "float32"
    feed = random_feed(load_graph(_mlp()), dim=5)
    assert feed["x"].shape == (5, 4) and feed["x"].dtype == np.float32


def test_byte_budget_chunks_from_inferred_shapes(tmp_path):
    model = _mlp()
    info = load_graph(model)
    feed = {"x": np.zeros((5, 4), np.float32)}
    sizes = estimate_sizes(info, feed)
    assert sizes["h0"] == sizes["h1"] == 5 * 8 * 4 and sizes["y"] == 5 * 3 * 4
    chunks = plan_chunks(info, 64, {"x"}, sizes=sizes, chunk_bytes=5 * 8 * 4 * 2)
    for c in chunks:
        captured = [o for o in c.outputs if o in sizes and o != "scale"]
        assert sum(sizes[o] for o in captured) <= 5 * 8 * 4 * 2 or len(captured) == 1
    assert 1 < len(chunks) < 7
    by_bytes = _records(trace_onnx(model, [feed], tmp_path / "b", chunk_bytes=5 * 8 * 4 * 2))
    assert repr(by_bytes) == repr(_records(trace_onnx(model, [feed], tmp_path / "one", chunk_outputs=None)))
