"""The op vocabulary: what every adapter writes into nodes.op_class, and the name fallback."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import tracefmt
from tracefmt.adapters.onnxruntime import trace_onnx
from tracefmt.adapters.torch import TorchTracer
from tracefmt.op_classes import OpClass, classify_op_type, node_op_classes


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ReLU", "rectifier"), ("Relu", "rectifier"), ("relu", "rectifier"), ("relu_", "rectifier"),
        ("LeakyRelu", "leaky-rectifier"), ("gelu", "smooth-activation"), ("Sigmoid", "bounded-activation"),
        ("LlamaRMSNorm", "norm"), ("BatchNormalization", "norm"), ("GPT2Attention", "attention"),
        ("Conv", "conv"), ("Gemm", "linear"), ("Dense", "linear"), ("GlobalAveragePool", "pooling"),
        ("ConvNextDropPath", "dropout"), ("com.microsoft.FastGelu", "smooth-activation"), ("LSTM", "recurrent"),
        ("SomethingNew", "other"),
    ],
)  # fmt: skip
def test_name_fallback(name, cls):
    assert classify_op_type(name) == cls


def test_container_fallback_and_stated_classes_win():
    assert classify_op_type("ResNetModel", container=True) == OpClass.CONTAINER
    classes, inferred = node_op_classes(["linear", None], ["Weird", "ReLU"], [False, False])
    assert classes == [OpClass.LINEAR, OpClass.RECTIFIER] and inferred == 1


def test_torch_adapter_classifies_a_real_architecture(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=32)
    model = transformers.GPT2LMHeadModel(cfg)
    with TorchTracer(model, tmp_path / "t", mode="overwrite") as tr:
        model(torch.randint(0, 32, (2, 8)))
        tr.step()
    nodes = tracefmt.open(tmp_path / "t").nodes.to_pylist()
    by_name = {n["name"]: n["op_class"] for n in nodes}
    assert by_name["transformer.h.0.attn.c_attn"] == "linear"  # HF Conv1D holds a weight matrix
    assert by_name["transformer.h.0.ln_1"] == "norm"
    assert by_name["transformer.h.0.mlp.act"] == "smooth-activation"
    assert by_name["transformer.h.0.attn"] == "attention"
    assert by_name["transformer.wte"] == "embedding"
    assert by_name["transformer.h.0"] == "container"
    assert all(n["op_class"] in {c.value for c in OpClass} for n in nodes)
    residual = [n for n in nodes if n["op_type"] == "add" and n["op_class"] == "residual-add"]
    assert residual, "the residual additions between blocks are residual-add"


def test_onnx_adapter_classifies_by_what_nodes_read(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Relu", ["h"], ["r"], name="act"),
            helper.make_node("Add", ["r", "x"], ["s"], name="skip"),
            helper.make_node("Add", ["s", "w"], ["y"], name="shift"),
        ],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [w],
    )  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    trace_onnx(path, {"x": np.ones((4, 4), np.float32)}, tmp_path / "t")
    classes = {n["name"]: n["op_class"] for n in tracefmt.open(tmp_path / "t").nodes.to_pylist()}
    assert classes == {"fc": "linear", "act": "rectifier", "skip": "residual-add", "shift": "elementwise"}
