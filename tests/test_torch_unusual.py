"""Unusual tensors never stop training; graph discovery holds nothing after the first forward."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import tracefmt
from tracefmt.adapters.torch import TorchTracer


class _Sparse(nn.Module):
    def forward(self, x):
        return x.to_sparse()


class _Complex(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x, dim=-1)


class _Quantized(nn.Module):
    def forward(self, x):
        return torch.quantize_per_tensor(x.detach(), 0.05, 128, torch.quint8)


class _Empty(nn.Module):
    def forward(self, x):
        return x[:0] * 2


class _Float8(nn.Module):
    def forward(self, x):
        return x.to(torch.float8_e4m3fn)


class _Net(nn.Module):
    def __init__(self, odd: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8, dtype=dtype)
        self.odd = odd
        self.head = nn.Linear(8, 1, dtype=dtype)

    def forward(self, x):
        h = torch.relu(self.lin(x))
        self.odd(h)
        return self.head(h).sum()


def _train(net: nn.Module, x: torch.Tensor, path, **kw) -> tuple[list[float], list[str]]:
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    losses = []
    with pytest.warns(Warning) if kw.pop("expect_warning", False) else _nothing() as rec:
        with TorchTracer(net, path, optimizer=opt, **kw) as tr:
            for _ in range(3):
                opt.zero_grad()
                loss = net(x)
                loss.backward()
                opt.step()
                tr.step()
                losses.append(float(loss))
    messages = [str(w.message) for w in rec] if rec is not None else []
    return losses, messages


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    "odd, expect",
    [
        (_Sparse(), "torch.sparse_coo tensors are not summarised"),
        (_Complex(), "complex tensors"),
        (_Empty(), "raw values of empty tensors are not stored"),
        (_Quantized(), None),
        (_Float8(), None),
    ],
    ids=["sparse", "complex", "empty-raw", "quantized", "float8"],
)
def test_unusual_outputs_never_stop_training(tmp_path, odd, expect):
    torch.manual_seed(0)
    net = _Net(odd)
    x = torch.randn(4, 8)
    losses, messages = _train(net, x, tmp_path / "t.trace", raw=["odd", "lin"], expect_warning=expect is not None)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    if expect is not None:
        hits = [m for m in messages if expect in m]
        assert len(hits) == 1 and "'odd'" in hits[0], messages  # once, naming the module
    assert tracefmt.validate(tmp_path / "t.trace").valid
    rec = tracefmt.open(tmp_path / "t.trace").records.to_table().to_pylist()
    odd_id = next(r["node_id"] for r in tracefmt.open(tmp_path / "t.trace").nodes.to_pylist() if r["name"] == "odd")
    odd_rows = [r for r in rec if r["node_id"] == odd_id and r["kind"] == "activation"]
    assert any(r["node_id"] != odd_id for r in rec)  # the other modules are recorded
    if isinstance(odd, _Quantized):  # summarised through the dequantized values
        h = torch.relu(net.lin(x)).detach()
        q = torch.quantize_per_tensor(h, 0.05, 128, torch.quint8).dequantize()
        assert odd_rows and odd_rows[-1]["max"] == pytest.approx(float(q.max()), rel=1e-6)
    if isinstance(odd, (_Float8, _Empty)):
        assert len(odd_rows) == 3


def test_float64_near_the_range_gives_a_valid_trace(tmp_path):
    torch.manual_seed(1)
    net = _Net(nn.Identity(), torch.float64)
    with torch.no_grad():
        net.lin.weight.mul_(1e300)
        net.head.weight.mul_(1e-300)
    x = torch.randn(4, 8, dtype=torch.float64)
    first = net.lin(x).detach().numpy()  # the activation of step 0
    _train(net, x, tmp_path / "t.trace")
    assert tracefmt.validate(tmp_path / "t.trace").valid
    rows = tracefmt.open(tmp_path / "t.trace").records.to_table().to_pylist()
    lin = [r for r in rows if r["kind"] == "activation" and r["node_id"] == 1]
    assert lin and all(r["max"] > 1e299 for r in lin)
    for r in rows:
        for c in ("mean", "std", "abs_mean", "l2"):
            assert r[c] is None or math.isfinite(r[c]), (r["kind"], c, r[c])
    ref = np.sqrt(np.sum((first / 1e300) ** 2)) * 1e300
    assert lin[0]["l2"] == pytest.approx(ref, rel=1e-9)


def test_graph_discovery_releases_activations_and_hooks(tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    seen: list[weakref.ref] = []
    spy = net[1].register_forward_hook(lambda m, a, out: seen.append(weakref.ref(out)))
    before = {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in net.named_modules()}
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    with TorchTracer(net, tmp_path / "t.trace", optimizer=opt) as tr:
        for _ in range(2):
            opt.zero_grad()
            net(torch.randn(8, 16)).square().mean().backward()
            opt.step()
            tr.step()
        gc.collect()
        assert seen and seen[0]() is None  # the first forward's activation is not held
        assert not tr._recorder._handles  # the recorder's hooks are gone
    spy.remove()
    after = {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in net.named_modules()}
    assert after == {k: v - (1 if k == "1" else 0) for k, v in before.items()}
