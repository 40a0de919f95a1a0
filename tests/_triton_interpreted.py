"""The fused Triton kernel, run by Triton's interpreter on the CPU, equals the reference.

Collected only through tests/test_torch_triton.py, which runs this file in a subprocess
with ``TRITON_INTERPRET=1`` (Triton reads it when a kernel is defined) and
``TRACEFMT_TRITON=cpu`` (the tracer sends CPU tensors to the kernel).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from tracefmt.adapters.torch.device_stats import StatKernel
from tracefmt.adapters.torch.step_rows import StepRows
from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning
from tracefmt.stats import tensor_stats

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_torch_triton.py"

COUNTS = ("numel", "nan_count", "inf_count", "zero_count", "pos_count")
FLOATS = ("mean", "std", "min", "max", "abs_mean", "l2")
BINNINGS = [DEFAULT_BINNING, FASTAI_BINNING, Binning("linear", -2.0, 2.0, 7), Binning("symlog", 1e-3, 1e3, 25), None]


def _cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    m = DEFAULT_BINNING.magnitude_edges()
    m32 = m.astype(np.float32)
    # Values on and next to every symlog edge, both signs: bins must be exact.
    edges = np.concatenate([m, -m, np.nextafter(m32, 0), -np.nextafter(m32, 0), np.nextafter(m32, np.inf), -np.nextafter(m32, np.inf)])
    wide = torch.randn(400, generator=g) * torch.pow(10.0, torch.randint(-9, 9, (400,), generator=g).float())
    wide[::97] = float("nan")
    wide[5::131] = float("inf")
    wide[7::151] = -float("inf")
    denormal = torch.tensor([1e-45, -1e-45, 1e-40, -3e-39, 0.0, -0.0, 1.1754942e-38], dtype=torch.float32)
    return [
        wide,
        torch.tensor(edges.astype(np.float32)),
        torch.tensor(edges),  # float64: edges compare exactly
        torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-6, -1e-6, 1e6, -1e6, 3.0, 1e-45]),
        denormal,
        torch.tensor([5e-324, -5e-324, 2.2e-308, 0.0], dtype=torch.float64),  # float64 denormals
        torch.relu(torch.randn(37, 7, generator=g)),
        torch.randn(130, dtype=torch.float64, generator=g) * 1e3 + 1e4,
        (torch.randn(300, generator=g) * 5).half(),
        torch.tensor([65504.0, -65504.0, 6e-8, float("inf"), float("nan"), 0.0], dtype=torch.float16),
        (torch.randn(300, generator=g) * 5).bfloat16(),
        torch.tensor([3.0e38, -3.0e38, 1e-38], dtype=torch.bfloat16),
        torch.tensor([]),
        torch.tensor([], dtype=torch.float64),
        torch.tensor([float("inf"), 2.0, 5.0]),  # min ignores the Inf
        torch.tensor([-float("inf"), -2.0, -5.0, float("nan")]),
        torch.full((10,), float("nan")),
        torch.full((70,), 1e30) + torch.arange(70) * 1e24,  # large mean, small spread
        torch.full((9,), 3.4e38),  # huge float32: float64 sums do not overflow
        torch.tensor([1e300, -1e300, 5e299], dtype=torch.float64),  # huge float64: scaled
        torch.tensor(3.5),  # 0-d
        torch.tensor(float("-inf")),
        torch.randn(4, 6, 5, 3, generator=g).to(memory_format=torch.channels_last),  # dense, not contiguous
        torch.randn(9, 8, generator=g).t()[::2],  # neither: copied
    ]


def _reference(x: torch.Tensor, binning: Binning | None) -> dict:
    a = x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy()
    return tensor_stats(a, binning=binning)


def _check(cols: dict, i: int, ref: dict, binning: Binning | None) -> None:
    for c in COUNTS:
        assert cols[c][i] == ref[c], (i, c, cols[c][i], ref[c])
    for c in FLOATS:
        if ref[c] is None:
            assert np.isnan(cols[c][i]), (i, c)
        else:
            # Sums that cancel (mean, std) are compared on the tensor's own scale.
            scale = 1e-9 * ref["abs_mean"] if c in ("mean", "std") else 1e-300
            assert cols[c][i] == pytest.approx(ref[c], rel=1e-9, abs=scale), (i, c)
    if binning is not None:
        assert cols["hist_counts"][i].tolist() == ref["hist_counts"], i


def _decode_check(kernel: StatKernel, done: np.ndarray, slots: list[int], xs: list[torch.Tensor]) -> None:
    cols = kernel.decode(done[slots], np.array([x.numel() for x in xs]))
    for i, x in enumerate(xs):
        _check(cols, i, _reference(x, kernel.binning), kernel.binning)


def test_fused_rows_equal_reference():
    xs = _cases()
    kernel = StatKernel(DEFAULT_BINNING, native=False)
    rows = StepRows(kernel, devices=("cpu",), capacity=4)  # grows during the step
    one = [rows.add(x) for x in xs]  # one launch per tensor
    _decode_check(kernel, rows.finish()[torch.device("cpu")].numpy(), one, xs)
    group = rows.add_group(xs)  # one launch per dtype, into the reset buffer
    _decode_check(kernel, rows.finish()[torch.device("cpu")].numpy(), group, xs)


@pytest.mark.parametrize(
    "binning", [*BINNINGS[1:], Binning("symlog", 1e-40, 1e3, 25)], ids=["fastai", "linear", "symlog25", "none", "symlog-search"]
)
def test_fused_rows_other_binnings(binning):
    # The special values; the edges and random tensors matter to the default binning only.
    xs = [x for i, x in enumerate(_cases()) if i in (0, 3, 4, 5, 9, 11, 12, 14, 18, 19, 20)]
    kernel = StatKernel(binning, native=False)
    rows = StepRows(kernel, devices=("cpu",))
    group = rows.add_group(xs)
    _decode_check(kernel, rows.finish()[torch.device("cpu")].numpy(), group, xs)


def test_traced_step_equals_torch_path(tmp_path):
    import tracefmt
    from tracefmt.adapters.torch import TorchTracer

    def run(path, fused: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).double()
        x = torch.randn(8, 12, dtype=torch.float64)
        # tracer.step(), no optimizer: torch.optim's first import costs seconds here.
        with TorchTracer(model, path, channels=True) as tracer:
            assert (tracer.rows is not None) == fused
            if not fused:
                tracer.kernel = StatKernel(tracer.kernel.binning, native=False)
            model(x).square().mean().backward()
            tracer.step()
        return tracefmt.open(path).records.to_table().sort_by([("step", "ascending"), ("seq", "ascending")])

    fused = run(tmp_path / "fused.trace", True)
    os.environ["TRACEFMT_TRITON"] = "0"
    try:
        plain = run(tmp_path / "plain.trace", False)
    finally:
        os.environ["TRACEFMT_TRITON"] = "cpu"
    assert fused.num_rows == plain.num_rows > 0
    for name in fused.column_names:
        if name == "run_id":  # two traces, two runs
            continue
        a, b = fused.column(name).to_pylist(), plain.column(name).to_pylist()
        if name in ("mean", "std", "abs_mean", "l2", "min", "max"):
            np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-9, atol=1e-12, err_msg=name)
        else:
            assert a == b, name
