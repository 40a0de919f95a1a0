"""TorchTracer's default selection observes every parameter and every module output.

Modules with children are traced for what their children do not show: parameters they
hold directly, and outputs that are not the very tensor a descendant returned.
"""

from __future__ import annotations

import torch
from torch import nn

import tracefmt
from tracefmt.adapters.torch import TorchTracer


class ScaledBlock(nn.Module):
    """A residual block holding a parameter of its own (LayerScale) beside its children."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.gamma = nn.Parameter(torch.full((width,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.act(self.fc(x))


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.block = ScaledBlock(width)
        self.head = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(width, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.token.expand(len(x), -1, -1), x], dim=1)
        a, _ = self.attn(x, x, x)
        return self.head(self.block(a)[:, 0])


def _trace(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TorchTracer(model, tmp_path / "t.trace", optimizer=opt):
        for _ in range(2):
            loss = model(torch.randn(4, 5, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, tracefmt.open(tmp_path / "t.trace")


def _records(trace, kind):
    names = dict(zip(trace.nodes.column("node_id").to_pylist(), trace.nodes.column("name").to_pylist()))
    out = set()
    for b in trace.scan("records", columns=["node_id", "slot"], kinds=[kind]):
        out |= {(names[n], s) for n, s in zip(b.column("node_id").to_pylist(), b.column("slot").to_pylist())}
    return out


def test_every_parameter_is_recorded_by_default(tmp_path):
    model, trace = _trace(tmp_path)
    weights = _records(trace, "weight")
    root = trace.nodes.column("name")[0].as_py()
    seen = {s if n == root else f"{n}.{s}" for n, s in weights}
    assert set(dict(model.named_parameters())) <= seen
    # Held directly by modules with children: the class token, attention's packed
    # projection, LayerScale's gamma, the weight-norm parametrisation.
    assert {"token", "attn.in_proj_weight", "block.gamma", "head.0.parametrizations.weight.original0"} <= seen


def test_container_outputs_of_their_own_are_recorded_once(tmp_path):
    _, trace = _trace(tmp_path)
    acts = _records(trace, "activation")
    # MultiheadAttention computes its output functionally; the block's residual sum is its own.
    assert ("attn", "0") in acts and ("block", "0") in acts
    # A Sequential returning its last child's output adds no record of its own.
    assert not any(n == "head" for n, _ in acts)
    assert ("head.0", "0") in acts
    grads = _records(trace, "gradient")
    assert ("block", "0") in grads
