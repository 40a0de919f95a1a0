"""Tracing a forward pass leaves the module's output bit for bit as it is untraced.

``nn.MultiheadAttention`` takes a fused kernel in eval mode only when no torch-function
mode is active; the graph recorder steps out of its mode while it runs, so the traced
output equals the untraced one exactly. ``nn.TransformerEncoderLayer`` refuses its fast
path whenever a hook is attached: the manifest states it, and the output stays close.
"""

from __future__ import annotations

import torch
from torch import nn

import tracefmt
from tracefmt.adapters.torch import trace_forward


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mha(x, x, x, need_weights=False)[0])


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(x))


def test_traced_attention_output_equals_untraced(tmp_path):
    torch.manual_seed(0)
    model = _Attention().eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = model(x)
    out = trace_forward(model, x, tmp_path / "t.trace")
    assert torch.equal(out, expected)
    trace = tracefmt.open(tmp_path / "t.trace")
    nodes = {r["node_id"]: r for r in trace.nodes.select(["node_id", "scope", "inputs", "outputs"]).to_pylist()}
    recorded = {nodes[r]["scope"] for r in trace.read(columns=["node_id"], kinds=["activation"]).column("node_id").to_pylist()}
    fused = "mha"
    assert "fast_path_off" not in (trace.manifest.get("metadata") or {})
    # The fused module is recorded as one unit (its output named, read by the next module).
    assert {fused, "fc"} <= recorded
    unit = next(n for n in nodes.values() if n["scope"] == fused)
    assert unit["outputs"] and set(unit["outputs"]) & set(next(n for n in nodes.values() if n["scope"] == "fc")["inputs"])


def test_encoder_layer_exception_is_stated_in_the_manifest(tmp_path):
    torch.manual_seed(0)
    model = _Encoder().eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = model(x)
    out = trace_forward(model, x, tmp_path / "t.trace")
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    note = tracefmt.open(tmp_path / "t.trace").manifest["metadata"]["fast_path_off"]
    assert note["modules"] == ["layer"] and "fast path" in note["reason"]
