"""The nodes table of traced models: hierarchy, op types, and edges through functional code."""

from __future__ import annotations

import pytest
import torch
from models import digits, gru_classifier, residual_cnn, tiny_gpt2
from torch import nn

import tracefmt
from tracefmt.adapters.torch import TorchTracer, trace_forward


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _graph(trace):
    nodes = trace.nodes.to_pylist()
    by_id = {n["node_id"]: n for n in nodes}
    edges = {(by_id[a]["name"], by_id[b]["name"]) for a, b, _ in trace.edges()}
    return {n["name"]: n for n in nodes}, edges


def test_residual_cnn_graph(tmp_path):
    model = residual_cnn()
    trace_forward(model, digits(4)[0], tmp_path / "t")
    trace = tracefmt.open(tmp_path / "t")
    nodes, edges = _graph(trace)
    root = nodes["ResidualCNN"]
    assert root["scope"] == "" and root["container"] and root["parent"] is None and root["node_id"] == 0
    assert nodes["layer1"]["container"] and nodes["layer1"]["op_type"] == "ResidualBlock"
    conv = nodes["layer1.conv1"]
    assert conv["op_type"] == "Conv2d" and conv["param_count"] == 16 * 16 * 9 and conv["parent"] == nodes["layer1"]["node_id"]
    assert '"kernel_size": [3, 3]' in conv["attributes"]
    add = nodes["layer1.add_0"]
    assert add["op_type"] == "add" and add["scope"] == "layer1" and add["parent"] == nodes["layer1"]["node_id"]
    # The skip connection: the block's input (the stem's ReLU) feeds the addition directly.
    assert ("stem.2", "layer1.add_0") in edges and ("layer1.bn2", "layer1.add_0") in edges
    assert ("layer1.add_0", "layer1.relu") in edges and ("layer1.relu", "layer2.add_0") in edges
    assert ("pool", "flatten_0") in edges and ("flatten_0", "fc") in edges
    orders = [nodes[n]["order"] for n in ("stem.0", "layer1.conv1", "layer1.add_0", "layer2.conv1", "fc")]
    assert orders == sorted(orders)
    assert not any(nodes[n]["container"] for a, b in edges for n in (a, b))


def test_gpt2_residual_stream_edges(tmp_path):
    model = tiny_gpt2()
    trace_forward(model, torch.randint(0, 64, (2, 8)), tmp_path / "t")
    nodes, edges = _graph(tracefmt.open(tmp_path / "t"))
    assert nodes["transformer.h.0.attn"]["container"] and nodes["transformer.h.0.attn.c_attn"]["op_type"] == "Conv1D"
    # residual stream: x + attn(ln_1(x)), then + mlp(ln_2(...)), into the next block
    assert ("transformer.drop", "transformer.h.0.add_0") in edges
    assert ("transformer.h.0.attn.resid_dropout", "transformer.h.0.add_0") in edges
    assert ("transformer.h.0.add_0", "transformer.h.0.add_1") in edges
    assert ("transformer.h.0.add_1", "transformer.h.1.ln_1") in edges and ("transformer.h.0.add_1", "transformer.h.1.add_0") in edges
    assert any(a.startswith("transformer.h.0.attn.matmul") for a, _ in edges)
    assert ("transformer.ln_f", "transformer.view_1") in edges or any(b == "lm_head" for _, b in edges)


def test_gru_graph_and_tuple_output_names(tmp_path):
    model = gru_classifier()
    trace_forward(model, torch.randint(0, 32, (2, 5)), tmp_path / "t")
    nodes, edges = _graph(tracefmt.open(tmp_path / "t"))
    assert nodes["gru"]["outputs"] == ["gru:0", "gru:1"]
    assert ("embed", "gru") in edges and ("gru", "getitem_0") in edges and ("getitem_0", "head") in edges
    assert nodes["embed"]["inputs"] == ["input:0"]


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x, use_b=False):
        y = self.a(x)
        return torch.cat([y, self.b(y)], dim=1) if use_b else y


def test_graph_rediscovered_when_structure_changes(tmp_path):
    model = _Branchy()
    x = torch.randn(3, 4)
    with TorchTracer(model, tmp_path / "t", phase="eval") as tracer, torch.no_grad():
        model(x)
        assert _graph(tracefmt.open(tmp_path / "t"))[0]["b"]["order"] is None
        model(x, use_b=True)  # a new module runs: the graph is recorded again next forward
        model(x, use_b=True)
        tracer.step()
    nodes, edges = _graph(tracefmt.open(tmp_path / "t"))
    assert nodes["b"]["order"] is not None and ("a", "b") in edges and ("b", "cat_0") in edges and ("a", "cat_0") in edges
