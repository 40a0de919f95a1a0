"""Histogram binnings (spec section 7): edges, the symlog rule, and torch.histc semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tracefmt
from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning, edges, histogram, merge


def _symlog_by_spec(x: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """The symlog bins of spec section 7, element by element from its table of bins."""
    e = edges("symlog", lo, hi, n)  # ascending: -inf, -m_M .. -m_0, m_0 .. m_M, +inf
    m = n // 2  # index of the centre (zero) bin
    counts = np.zeros(n, np.int64)
    for v in x[np.isfinite(x)]:
        if -lo < v < lo:
            counts[m] += 1
        elif v < 0:  # bins (e[k], e[k+1]]
            counts[int(np.searchsorted(e, v, side="left")) - 1] += 1
        else:  # bins [e[k], e[k+1])
            counts[int(np.searchsorted(e, v, side="right")) - 1] += 1
    return counts


def test_default_and_fastai_binnings():
    assert (DEFAULT_BINNING.scheme, DEFAULT_BINNING.lo, DEFAULT_BINNING.hi, DEFAULT_BINNING.bins) == ("symlog", 1e-6, 1e6, 99)
    assert (FASTAI_BINNING.scheme, FASTAI_BINNING.lo, FASTAI_BINNING.hi, FASTAI_BINNING.bins) == ("abs_linear", 0.0, 10.0, 40)
    e = DEFAULT_BINNING.edges()
    assert len(e) == 100 and e[0] == -np.inf and e[-1] == np.inf and np.all(np.diff(e) > 0)
    m = DEFAULT_BINNING.magnitude_edges()
    assert m[0] == 1e-6 and m[-1] == 1e6 and len(m) == 49
    np.testing.assert_allclose(m[::4], 10.0 ** np.arange(-6, 7), rtol=1e-12)  # 4 bins per decade


def test_edges_are_recoverable_from_a_row():
    np.testing.assert_array_equal(edges("linear", -1.0, 1.0, 4), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(edges("abs_linear", 0.0, 10.0, 40), np.linspace(0, 10, 41))
    assert len(edges("symlog", 1e-3, 1e3, 13)) == 14


def test_symlog_bins_follow_the_spec_table():
    rng = np.random.default_rng(0)
    m = DEFAULT_BINNING.magnitude_edges()
    x = np.concatenate([
        rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000),
        m, -m, [0.0, -0.0, 1e-7, -1e-7, 1e6, -1e6, 1e9, -1e9, np.nan, np.inf, -np.inf],
    ])  # fmt: skip
    got = histogram(x, DEFAULT_BINNING)
    np.testing.assert_array_equal(got, _symlog_by_spec(x, 1e-6, 1e6, 99))
    assert got.sum() == np.isfinite(x).sum()
    centre = 49
    assert got[centre] >= 4  # 0, -0, ±1e-7
    b = Binning("symlog", 1.0, 100.0, 7)  # M = 2: edges 1, 10, 100
    np.testing.assert_array_equal(histogram(np.array([-200, -100, -50, -10, -5, -1, -0.5, 0, 0.5, 1, 5, 10, 50, 100, 200.0]), b),
                                  [2, 2, 2, 3, 2, 2, 2])  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fastai_abs_linear_equals_torch_histc(dtype):
    """abs_linear(0, 10, 40) is fast.ai's x.abs().histc(40, 0, 10), exactly."""
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 3.0, 20.0):
        x = torch.randn(50_000, generator=g, dtype=dtype) * scale
        x[:400] = torch.arange(400, dtype=dtype) * 0.025  # exact bin edges, 10.0 itself and beyond
        x[400:410] = torch.tensor([float("nan"), float("inf"), -float("inf"), 10.0, -10.0, 0.0, -0.0, 0.25, 9.75, 10.000001], dtype=dtype)
        expected = x.abs().histc(40, 0, 10).to(torch.int64).numpy()
        np.testing.assert_array_equal(histogram(x.numpy(), FASTAI_BINNING), expected)
        stats = tracefmt.stats.tensor_stats(x.numpy(), binning=FASTAI_BINNING)
        assert stats["hist_counts"] == expected.tolist()


def test_linear_equals_torch_histc_on_random_ranges():
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    for _ in range(20):
        lo = float(rng.uniform(-5, 0))
        hi = lo + float(rng.uniform(0.1, 7))
        bins = int(rng.integers(1, 64))
        x = torch.randn(5000, generator=g) * 4
        expected = torch.histc(x, bins, lo, hi).to(torch.int64).numpy()
        np.testing.assert_array_equal(histogram(x.numpy(), Binning("linear", lo, hi, bins)), expected)


def test_nan_inf_and_empty_are_not_counted():
    for b in (DEFAULT_BINNING, FASTAI_BINNING, Binning("linear", -1, 1, 3)):
        assert histogram(np.array([np.nan, np.inf, -np.inf]), b).sum() == 0
        assert histogram(np.array([], np.float32), b).tolist() == [0] * b.bins


def test_integer_and_bool_inputs():
    assert histogram(np.array([0, 1, 2, 3], np.int32), Binning("linear", 0, 4, 4)).tolist() == [1, 1, 1, 1]
    assert histogram(np.array([True, False]), DEFAULT_BINNING).sum() == 2


def test_merge_adds_counts():
    parts = [histogram(np.array(p, float)) for p in ([1.0, -2.0], [0.0], [])]
    np.testing.assert_array_equal(merge(parts), histogram(np.array([1.0, -2.0, 0.0])))


@pytest.mark.parametrize(
    "args",
    [("symlog", 1e-6, 1e6, 98), ("symlog", 0.0, 1.0, 9), ("symlog", 1e-6, 1e6, 3), ("linear", 1.0, 1.0, 4), ("linear", 0, 1, 0), ("log", 0, 1, 4)],
)
def test_invalid_binnings_are_refused(args):
    with pytest.raises(tracefmt.UsageError):
        Binning(*args)
