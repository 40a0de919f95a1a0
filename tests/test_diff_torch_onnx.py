"""PyTorch eval trace vs ONNX Runtime trace of the same model, exported by both exporters.

A residual CNN (BatchNorm folded into Conv by both exporters, one ReLU module called twice
per block) and a small GPT-2 (random-initialised ``transformers`` config) are exported with
the TorchScript exporter (``dynamo=False``) and the dynamo exporter (``dynamo=True``, the
default). On the same input the diff must find no divergence and match >= 90 % of the
PyTorch leaf modules; after perturbing one initializer (or one attribute) of the ONNX
model, the diff must name exactly that node's module as the first divergence.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from models import digits, residual_cnn, tiny_gpt2
from onnx import numpy_helper
from torch import nn

from tracefmt.adapters.onnxruntime import load_graph, trace_onnx
from tracefmt.adapters.torch import trace_forward
from tracefmt.analyzers.diff import diff_traces
from tracefmt.findings import findings_table
from tracefmt.schema import FINDINGS

EXPORTERS = {"torchscript": False, "dynamo": True}


def _export(model: nn.Module, args: tuple, path, *, dynamo: bool, input_names: list[str]) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=dynamo, input_names=input_names)


def _cnn() -> nn.Module:
    model = residual_cnn(channels=8).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Non-trivial running statistics, so that folding BatchNorm into Conv matters.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


class _LM(nn.Module):
    """GPT-2 returning its logits, with an explicit attention mask (both exporters accept it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gpt = tiny_gpt2()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    model = _cnn()
    x = digits(4)[0]
    trace_forward(model, x, root / "torch.trace", raw="*")
    out = {"torch": root / "torch.trace", "root": root, "feed": {"x": x.numpy()}}
    for name, dynamo in EXPORTERS.items():
        _export(model, (x,), root / f"{name}.onnx", dynamo=dynamo, input_names=["x"])
        trace_onnx(root / f"{name}.onnx", out["feed"], root / f"{name}.trace", phase="eval", raw=True)
    return out


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt")
    model = _LM().eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 8, dtype=torch.int64)
    trace_forward(model, (ids, mask), root / "torch.trace")
    out = {"torch": root / "torch.trace", "root": root, "feed": {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}}
    for name, dynamo in EXPORTERS.items():
        _export(model, (ids, mask), root / f"{name}.onnx", dynamo=dynamo, input_names=["input_ids", "attention_mask"])
        trace_onnx(root / f"{name}.onnx", out["feed"], root / f"{name}.trace")
    return out


def _assert_agree(result, leaf_types_allowed_unmatched: set[str]) -> None:
    assert result.first_divergence is None, result.first_divergence
    assert all(c.error <= 1 for c in result.compared), [(c.key, c.error) for c in result.compared if c.error > 1]
    cov = result.coverage
    assert cov["side"] == "a" and cov["accounted_fraction"] >= 0.9, cov
    torch_nodes = {u.node_id: u for u in result.unmatched_a}
    assert {u.op_type for u in torch_nodes.values() if u.leaf} <= leaf_types_allowed_unmatched, [
        (u.name, u.op_type, u.reason) for u in result.unmatched_a
    ]


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_residual_cnn_torch_and_ort_agree(cnn, exporter):
    result = diff_traces(cnn["torch"], cnn["root"] / f"{exporter}.trace")
    # Folded away: every Conv2d (its BatchNorm's fused Conv node stands for both).
    _assert_agree(result, {"Conv2d"})
    assert {c.method for c in result.compared} == {"values"}  # both traces hold raw values
    assert result.coverage["matched"] == 10 and result.coverage["leaf_modules"] == 15
    assert all(u.reason.startswith(("fused", "folded")) for u in result.unmatched_a)
    relu = [c for c in result.compared if c.key == "layer1.relu"]
    assert [c.call for c in relu] == [0, 1] and len({c.b_node_id for c in relu}) == 2
    bn = next(c for c in result.compared if c.key == "layer2.bn1")
    assert load_graph(cnn["root"] / f"{exporter}.onnx").nodes[bn.b_node_id].op_type == "Conv"


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_tiny_gpt2_torch_and_ort_agree(gpt, exporter):
    result = diff_traces(gpt["torch"], gpt["root"] / f"{exporter}.trace")
    # Eval-mode dropouts have no ONNX node; the dynamo exporter also constant-folds the
    # position embedding (its input is a constant arange).
    _assert_agree(result, {"Dropout", "Embedding"})
    keys = {c.key for c in result.compared}
    for block in (0, 1):
        for leaf in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.act", "mlp.c_proj"):
            assert f"gpt.transformer.h.{block}.{leaf}" in keys
    assert "gpt.lm_head" in keys


def _perturb(src, dst, *, scope: str, ops: tuple[str, ...]) -> str:
    """Add noise to the 2-D+ weight initializer of the node with ``scope``; return the node's name."""
    info = load_graph(src)
    model = onnx.load(str(src))  # with its external data, saved back self-contained
    inits = {t.name: t for t in model.graph.initializer}
    for node, node_scope in zip(info.nodes, info.scopes):
        if node_scope != scope or node.op_type not in ops:
            continue
        for name in node.input:
            if name in inits and len(inits[name].dims) >= 2:
                w = numpy_helper.to_array(inits[name]).copy()
                w += np.random.default_rng(0).normal(0.0, 0.5, w.shape).astype(w.dtype)
                inits[name].CopyFrom(numpy_helper.from_array(w, name))
                onnx.save_model(model, str(dst))
                return node.name
    raise AssertionError(f"no {ops} node with scope {scope!r} and a weight initializer")


@pytest.mark.parametrize(
    ("exporter", "scope"),
    [("dynamo", "layer2.bn1"), ("torchscript", "layer2.conv1")],
)
def test_perturbed_initializer_is_the_first_divergence_cnn(cnn, exporter, scope, tmp_path):
    # The fused Conv+BN node is named after the BatchNorm by the dynamo exporter and after
    # the Conv by the TorchScript exporter: the diff names the module the node carries.
    node = _perturb(cnn["root"] / f"{exporter}.onnx", tmp_path / "bad.onnx", scope=scope, ops=("Conv",))
    trace_onnx(tmp_path / "bad.onnx", cnn["feed"], tmp_path / "bad.trace")
    result = diff_traces(cnn["torch"], tmp_path / "bad.trace")
    first = result.first_divergence
    assert first is not None and first.key == scope and first.b_node == node
    assert [c.key for c in result.compared if c.status == "origin"] == [scope]
    later = [c for c in result.compared if c.pair.order > first.pair.order]
    assert later and all(c.status in ("divergent", "ok") for c in later)
    table = findings_table(result.findings)
    assert table.schema == FINDINGS.schema
    errors = [r for r in table.to_pylist() if r["severity"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "first-divergence" and errors[0]["node"] == scope
    onnx_side = [f for f in result.findings_for("b") if f.code == "first-divergence"]
    assert [f.node for f in onnx_side] == [node]


def test_swapped_attribute_is_the_first_divergence(cnn, tmp_path):
    model = onnx.load(str(cnn["root"] / "dynamo.onnx"))
    info = load_graph(cnn["root"] / "dynamo.onnx")
    gemm = next(n for n, s in zip(info.nodes, info.scopes) if s == "fc" and n.op_type == "Gemm")
    target = next(n for n in model.graph.node if n.name == gemm.name)
    alpha = [a for a in target.attribute if a.name == "alpha"]
    if alpha:
        alpha[0].f = 1.5
    else:
        target.attribute.append(onnx.helper.make_attribute("alpha", 1.5))
    onnx.save_model(model, str(tmp_path / "alpha.onnx"))
    trace_onnx(tmp_path / "alpha.onnx", cnn["feed"], tmp_path / "alpha.trace")
    first = diff_traces(cnn["torch"], tmp_path / "alpha.trace").first_divergence
    assert first is not None and first.key == "fc" and first.b_node == gemm.name


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_perturbed_initializer_is_the_first_divergence_gpt2(gpt, exporter, tmp_path):
    scope = "gpt.transformer.h.1.mlp.c_fc"
    _perturb(gpt["root"] / f"{exporter}.onnx", tmp_path / "bad.onnx", scope=scope, ops=("Gemm", "MatMul"))
    trace_onnx(tmp_path / "bad.onnx", gpt["feed"], tmp_path / "bad.trace")
    result = diff_traces(gpt["torch"], tmp_path / "bad.trace")
    assert result.first_divergence is not None and result.first_divergence.key == scope
    # Errors grow downstream but are inherited, not new origins.
    assert [c.key for c in result.compared if c.status == "origin"] == [scope]
