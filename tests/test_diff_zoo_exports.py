"""The trace diff on real exports: ten ``transformers`` architectures, both exporters.

Each tiny random-initialised model (rotary decoders Llama, Qwen2 and GPT-NeoX, GPT-2, BERT,
the encoder-decoder T5, ViT, ResNet with BatchNorm folded into Conv, ConvNeXt with nested
stages) is exported with the TorchScript exporter (``dynamo=False``) and the dynamo
exporter (``dynamo=True``); every one of the twenty exports succeeds (the decoders are
given an explicit attention mask: without one, recent ``transformers`` look for packed
sequences with ``torch.diff``, which the TorchScript exporter cannot export). The PyTorch
eval trace and the ONNX Runtime trace of each export on the same input must agree with a
conclusive verdict, compare at least half of the leaf modules and account for at least
90 % of them; scaling one weight initializer of the ONNX file must make the module that
computes with it the first divergence.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from zoo_exports import ZOO, build

from tracefmt.adapters.onnxruntime import load_graph, trace_onnx
from tracefmt.adapters.torch import trace_forward
from tracefmt.analyzers.diff import diff_traces

pytestmark = pytest.mark.slow

EXPORTERS = {"torchscript": False, "dynamo": True}
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Build, trace and export each zoo model once (lazily) for every test of the module."""
    root = tmp_path_factory.mktemp("zoo")
    cache: dict[tuple[str, str], dict] = {}

    def get(name: str, exporter: str) -> dict:
        if (name, exporter) in cache:
            return cache[(name, exporter)]
        if (name, "torch") not in cache:
            z = build(name)
            trace_forward(z.model, z.inputs, root / f"{name}.torch.trace")
            cache[(name, "torch")] = {"zoo": z, "trace": root / f"{name}.torch.trace",
                                      "feed": {n: t.numpy() for n, t in zip(z.input_names, z.inputs)}}  # fmt: skip
        base = cache[(name, "torch")]
        z = base["zoo"]
        path = root / f"{name}.{exporter}.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(z.model, z.inputs, str(path), dynamo=EXPORTERS[exporter], input_names=z.input_names)
        trace_onnx(path, base["feed"], root / f"{name}.{exporter}.trace", phase="eval")
        cache[(name, exporter)] = {**base, "onnx": path, "ort": root / f"{name}.{exporter}.trace"}
        return cache[(name, exporter)]

    return get


CASES = [(name, exporter) for name in ZOO for exporter in EXPORTERS]


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_export_agrees_with_pytorch(exports, name, exporter):
    case = exports(name, exporter)
    result = diff_traces(case["trace"], case["ort"])
    assert result.verdict == "agree", (result.first_divergence, result.reasons)
    assert all(c.status in ("ok", "drift") for c in result.compared)
    cov = result.coverage
    assert cov["side"] == "a" and cov["matched_fraction"] >= 0.5, cov
    assert cov["accounted_fraction"] >= 0.9, (cov, [(u.name, u.reason) for u in result.unmatched_a if u.leaf])
    # Every module left out is left out for a stated reason.
    assert all(u.reason for u in result.unmatched_a)
    assert 0 < cov["op_nodes_compared"] <= cov["op_nodes_covered"] <= cov["op_nodes"], cov


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt_neox"])
def test_rotary_cos_and_sin_are_not_swapped(exports, name):
    # The rotary embedding returns (cos, sin) of one shape: the graph cannot tell them
    # apart, the statistics can; both slots agree and the match says it was inferred.
    case = exports(name, "torchscript")
    result = diff_traces(case["trace"], case["ort"])
    rotary = [c for c in result.compared if c.key.endswith("rotary_emb")]
    assert sorted(c.a_slot for c in rotary) == ["0", "1"]
    assert all(c.error <= 1 and c.match == "inferred" for c in rotary), [(c.a_slot, c.error) for c in rotary]
    assert len({c.b_node_id for c in rotary} | {c.b_slot for c in rotary}) >= 2
    assert any("inferred" in n for n in result.notes)


def _fault_target(case: dict, result) -> tuple[str, set[str]]:  # type: ignore[no-untyped-def]
    """A weight initializer read by one MatMul/Gemm/Conv node inside a compared module's op group.

    Returns the initializer's name and the modules that may be named as the origin: the
    earliest compared module whose op group holds the node, or the node's own scope (a
    Conv+BatchNorm node is named after the Conv by the TorchScript exporter; the healthy
    diff moved its match to the BatchNorm, which a faulty output no longer agrees with).
    """
    info = load_graph(case["onnx"])
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(info.nodes):
        for t in node.input:
            readers.setdefault(t, []).append(i)
    grouped = {n for c in result.compared if c.key for n in c.pair.group}
    candidates = []
    for i, node in enumerate(info.nodes):
        if node.op_type not in _WEIGHT_OPS or i not in grouped:
            continue
        for t in node.input:
            init = info.initializers.get(t)
            if init is not None and len(init.dims) >= 2 and readers[t] == [i] and init.data_type == onnx.TensorProto.FLOAT:
                candidates.append((i, t))
    assert candidates, "no weight initializer to perturb"
    i, t = candidates[len(candidates) // 2]
    # The expected origin: the earliest compared tensor whose op group holds the node.
    expected = min((c for c in result.compared if i in c.pair.group), key=lambda c: c.pair.order)
    return t, {expected.key, info.scopes[i]}


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_scaled_initializer_is_the_first_divergence(exports, name, exporter, tmp_path):
    case = exports(name, exporter)
    healthy = diff_traces(case["trace"], case["ort"])
    init_name, expected = _fault_target(case, healthy)
    model = onnx.load(str(case["onnx"]))  # external data loaded, saved back self-contained
    init = next(t for t in model.graph.initializer if t.name == init_name)
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w * np.float32(1.5)).astype(w.dtype), init_name))
    onnx.save_model(model, str(tmp_path / "bad.onnx"))
    trace_onnx(tmp_path / "bad.onnx", case["feed"], tmp_path / "bad.trace", phase="eval")
    result = diff_traces(case["trace"], tmp_path / "bad.trace")
    assert result.verdict == "divergent"
    assert result.first_divergence.key in expected, (result.first_divergence.key, expected)
    # Everything computed before it still agrees.
    before = [c for c in result.compared if c.pair.order < result.first_divergence.pair.order]
    assert before and all(c.status in ("ok", "drift") for c in before)
