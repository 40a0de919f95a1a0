"""The torch adapter's on-device statistics equal tracefmt's reference statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracefmt.adapters.torch.device_stats import StatKernel
from tracefmt.adapters.torch.extras import channel_vector, matrix_vector, median_vector
from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning
from tracefmt.stats import channel_stats, matrix_stats, tensor_stats

COUNTS = ("numel", "nan_count", "inf_count", "zero_count", "pos_count")
FLOATS = ("mean", "std", "min", "max", "abs_mean", "l2")


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    m = DEFAULT_BINNING.magnitude_edges()
    m32 = m.astype(np.float32)
    # Values on and next to every symlog edge, both signs: the exactness of the binning.
    edges = np.concatenate([m, -m, np.nextafter(m32, 0), -np.nextafter(m32, 0), np.nextafter(m32, np.inf), -np.nextafter(m32, np.inf)])
    wide = torch.randn(4000, generator=g) * torch.pow(10.0, torch.randint(-9, 9, (4000,), generator=g).float())
    return [
        wide,
        torch.tensor(edges.astype(np.float32)),
        torch.tensor(edges),  # float64 edges compare exactly
        torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-6, -1e-6, 1e6, -1e6, 3.0, 1e-45]),
        torch.relu(torch.randn(64, 7, generator=g)),
        torch.randn(33, dtype=torch.float64, generator=g) * 1e3,
        (torch.randn(50, generator=g) * 5).half(),
        (torch.randn(50, generator=g) * 5).bfloat16(),
        torch.randint(-5, 5, (30,), generator=g),
        torch.tensor([True, False, True]),
        torch.tensor([]),
        torch.tensor([float("inf"), 2.0, 5.0]),  # min must ignore the Inf: all finite > 0
        torch.tensor([-float("inf"), -2.0, -5.0, float("nan")]),
        torch.full((10,), float("nan")),
        torch.full((7,), 1e30) + torch.arange(7) * 1e24,  # large mean, small spread
        torch.tensor(3.5),
    ]


@pytest.mark.parametrize("native", [None, False], ids=["native", "torch"])
@pytest.mark.parametrize("binning", [DEFAULT_BINNING, FASTAI_BINNING, Binning("linear", -2.0, 2.0, 7), Binning("symlog", 1e-3, 1e3, 25), None])
def test_rows_equal_reference(binning, native):
    xs = _tensors()
    kernel = StatKernel(binning, native=native)
    if native is None and binning is not None and binning.scheme == "symlog":
        assert kernel.uses_native  # a C compiler is part of the test environment
    rows = torch.stack([kernel.row(x) for x in xs]).numpy()
    cols = kernel.decode(rows, np.array([x.numel() for x in xs]))
    for i, x in enumerate(xs):
        a = x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy()
        ref = tensor_stats(a, binning=binning)
        for c in COUNTS:
            assert cols[c][i] == ref[c], (i, c)
        for c in FLOATS:
            if ref[c] is None:
                assert np.isnan(cols[c][i]), (i, c)
            else:
                # Sums that cancel (mean, std) are compared on the tensor's own scale.
                scale = 2e-6 * ref["abs_mean"] if c in ("mean", "std") else 1e-300
                assert cols[c][i] == pytest.approx(ref[c], rel=2e-6, abs=scale), (i, c)
        if binning is not None:
            assert cols["hist_counts"][i].tolist() == ref["hist_counts"], i


def test_native_kernel_on_every_float32_bucket():
    # Every 16-bit bucket of float32 (both ends and the middle), NaN payloads included.
    keys = np.arange(1 << 16, dtype=np.uint32) << 16
    bits = np.concatenate([keys, keys | 0x7FFF, keys | 0xFFFF])
    x = torch.from_numpy(bits.view(np.float32).copy())
    for binning in (DEFAULT_BINNING, Binning("symlog", 1e-3, 1e3, 25)):
        native, ref = StatKernel(binning), StatKernel(binning, native=False)
        assert native.uses_native
        assert torch.equal(native.row(x)[: native.counts], ref.row(x)[: ref.counts])


def test_native_kernel_threads_agree():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1 << 19, generator=g) * 3
    x[12345] = float("nan")
    x[400000] = float("-inf")
    one, two = StatKernel(DEFAULT_BINNING), StatKernel(DEFAULT_BINNING)
    one.threads, two.threads = 1, 3
    a, b = one.row(x), two.row(x)
    assert torch.equal(a[: one.counts], b[: two.counts])
    torch.testing.assert_close(a[one.counts :], b[two.counts :], rtol=1e-12, atol=1e-9)


def test_extras_equal_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(8, 5, 3, 3, generator=g))
    x[0, 2, 0, 0] = float("nan")
    for axis in (1, 3):
        ref = channel_stats(x.numpy(), axis=axis)
        v = channel_vector(x, axis).numpy()
        c = x.shape[axis]
        np.testing.assert_allclose(v[:c], ref["channel_pos_frac"], rtol=1e-6)
        np.testing.assert_allclose(v[c:], ref["channel_mean"], rtol=1e-6)
    w = torch.randn(6, 4, generator=g)
    ref = matrix_stats(w.numpy())
    v = matrix_vector(w).numpy()
    np.testing.assert_allclose(v, [ref["mat_trace"], ref["mat_spectral"], ref["mat_sv_mean"], ref["mat_sv_var"]], rtol=1e-9)
    w[0, 0] = float("inf")
    assert np.isnan(matrix_vector(w).numpy()).all() and matrix_stats(w.numpy()) is None
    for t in (torch.randn(101, generator=g), torch.randn(100, generator=g), torch.tensor([float("nan"), 2.0, 1.0, float("inf")]), torch.tensor([float("nan")])):
        ref = tensor_stats(t.numpy(), binning=None, median=True)["median"]
        got = float(median_vector(t))
        assert (ref is None and np.isnan(got)) or got == ref
