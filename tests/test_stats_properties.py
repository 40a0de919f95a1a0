"""Property tests: the reference statistics (spec section 6) against numpy and exact arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tracefmt.histogram import DEFAULT_BINNING, Binning, histogram, merge
from tracefmt.stats import channel_stats, matrix_stats, tensor_stats

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)

# Shapes include 0-d and empty arrays; elements include NaN, ±Inf, subnormals and values
# near the largest float64 (whose squares overflow).
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
ANY_FLOAT64 = hnp.arrays(np.float64, SHAPES, elements=st.floats(allow_nan=True, allow_infinity=True))
HUGE = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=8),
                  elements=st.floats(1e300, 1e307) | st.floats(-1e307, -1e300) | st.just(0.0))  # fmt: skip
FLOAT32 = hnp.arrays(np.float32, SHAPES, elements=st.floats(width=32, allow_nan=True, allow_infinity=True))
INTS = hnp.arrays(st.sampled_from([np.int8, np.int32, np.int64, np.uint8]), SHAPES)


def _exact_moments(f: np.ndarray) -> dict[str, float]:
    """mean, std, abs_mean, l2 of finite values by exact rational arithmetic (independent of stats.py)."""
    n = len(f)
    # Scale by a power of two chosen here (not the library's), so squares cannot overflow.
    scale = Fraction(2) ** (math.frexp(float(np.max(np.abs(f))))[1] if np.any(f) else 0)
    q = [Fraction(float(v)) / scale for v in f]
    mean = sum(q) / n
    var = sum((v - mean) ** 2 for v in q) / n
    return {
        "mean": float(mean * scale),
        "std": float(Fraction(math.sqrt(float(var))) * scale),
        "abs_mean": float(sum(abs(v) for v in q) / n * scale),
        "l2": float(Fraction(math.sqrt(float(sum(v * v for v in q)))) * scale),
    }


def _check_against_numpy(x: np.ndarray) -> None:
    s = tensor_stats(x, median=True)
    flat = np.asarray(x).reshape(-1)
    as_float = flat.astype(np.float64)
    finite = as_float[np.isfinite(as_float)]
    assert s["shape"] == list(np.shape(x))
    assert s["numel"] == flat.size
    assert s["nan_count"] == int(np.isnan(as_float).sum())
    assert s["inf_count"] == int(np.isinf(as_float).sum())
    assert s["zero_count"] == int((flat == 0).sum())
    assert s["pos_count"] == int((flat > 0).sum())
    if finite.size == 0:
        assert s["mean"] is s["std"] is s["min"] is s["max"] is s["abs_mean"] is s["median"] is None
        assert s["l2"] == 0.0
        return
    assert s["min"] == finite.min() and s["max"] == finite.max()
    assert s["median"] == np.sort(finite)[(finite.size - 1) // 2]
    peak = float(np.max(np.abs(finite)))
    exact = _exact_moments(finite)
    for name in ("mean", "std", "abs_mean"):
        assert math.isfinite(s[name])
        assert abs(s[name] - exact[name]) <= 1e-12 * peak, (name, s[name], exact[name])
    assert math.isclose(s["l2"], exact["l2"], rel_tol=1e-12, abs_tol=1e-300)
    # Where numpy itself does not overflow, it gives the same numbers.
    with np.errstate(over="ignore", invalid="ignore"):
        np_values = {"mean": np.mean(finite), "std": np.std(finite), "abs_mean": np.mean(np.abs(finite)), "l2": np.sqrt(np.sum(finite**2))}
    for name, v in np_values.items():
        # (numpy's squares overflow above ~1e154 and underflow below ~1e-154.)
        if np.isfinite(v) and 1e-150 < peak < 1e150:
            assert math.isclose(s[name], float(v), rel_tol=1e-9, abs_tol=1e-12 * peak), (name, s[name], v)


@SETTINGS
@given(ANY_FLOAT64)
def test_float64_stats_match_numpy(x):
    _check_against_numpy(x)


@SETTINGS
@given(FLOAT32)
def test_float32_stats_match_numpy(x):
    _check_against_numpy(x)


@SETTINGS
@given(HUGE)
def test_huge_values_do_not_overflow(x):
    _check_against_numpy(x)
    assert all(math.isfinite(tensor_stats(x)[k]) for k in ("mean", "std", "abs_mean", "l2"))


@SETTINGS
@given(INTS)
def test_integer_stats_match_numpy(x):
    _check_against_numpy(x)


@pytest.mark.parametrize("x", [np.float32(3.5), np.array(np.nan), np.array([], np.float32), np.zeros((0, 4)), np.array([np.inf, -np.inf])])
def test_edge_cases(x):
    _check_against_numpy(np.asarray(x))


def test_bool_counts_as_zero_one():
    s = tensor_stats(np.array([True, False, True]))
    assert s["dtype"] == "bool" and s["pos_count"] == 2 and s["zero_count"] == 1 and s["mean"] == pytest.approx(2 / 3)


@SETTINGS
@given(ANY_FLOAT64, st.integers(min_value=1, max_value=4))
def test_default_histogram_merges_across_parts(x, parts):
    """Merging the default histograms of any split of a tensor gives the whole tensor's histogram."""
    flat = x.reshape(-1)
    cuts = np.array_split(flat, parts)
    whole = histogram(flat, DEFAULT_BINNING)
    assert np.array_equal(merge([histogram(c, DEFAULT_BINNING) for c in cuts]), whole)
    assert whole.sum() == np.isfinite(flat).sum()


@SETTINGS
@given(hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(-1e8, 1e8, allow_nan=False)), st.integers(0, 40))
def test_merge_is_addition_for_any_symlog_binning(x, cut):
    binning = Binning("symlog", 1e-3, 1e3, 25)
    assert np.array_equal(histogram(x[:cut], binning) + histogram(x[cut:], binning), histogram(x, binning))


@SETTINGS
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5),
                  elements=st.floats(allow_nan=True, allow_infinity=False).map(lambda v: v if abs(v) < 1e6 or math.isnan(v) else 0.0)))  # fmt: skip
def test_channel_stats_match_numpy(x):
    c = channel_stats(x, axis=1)
    moved = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    assert c["channel_axis"] == 1
    np.testing.assert_allclose(c["channel_pos_frac"], (moved > 0).mean(axis=1).astype(np.float32))
    with np.errstate(invalid="ignore"):
        expected = np.array([np.mean(row[np.isfinite(row)]) if np.isfinite(row).any() else np.nan for row in moved], np.float32)
    np.testing.assert_allclose(c["channel_mean"], expected, rtol=1e-5, atol=1e-6 * (np.nanmax(np.abs(x)) if np.isfinite(x).any() else 1))


@SETTINGS
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6), elements=st.floats(-1e3, 1e3)))
def test_matrix_stats_match_numpy(w):
    m = matrix_stats(w)
    sv = np.linalg.svd(w, compute_uv=False)
    assert m["mat_trace"] == pytest.approx(np.trace(w), abs=1e-9 * (1 + np.abs(w).sum()))
    assert m["mat_spectral"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-9, abs=1e-9)
    assert m["mat_sv_mean"] == pytest.approx(sv.mean(), rel=1e-9, abs=1e-9)
    assert m["mat_sv_var"] == pytest.approx(sv.var(), rel=1e-7, abs=1e-9)


def test_matrix_stats_only_for_finite_2d():
    assert matrix_stats(np.ones(3)) is None
    assert matrix_stats(np.array([[1.0, np.nan]])) is None
