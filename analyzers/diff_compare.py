"""Tolerances and the comparison of two observations of one tensor (trace diff).

The elementwise rule is NumPy's ``isclose`` convention: values ``a`` (trace A) and ``b``
(trace B, the reference) agree when ``|a - b| <= atol + rtol * |b|``; NaN agrees with NaN
and an infinity with the same infinity. Where both traces hold raw values the rule is
applied element by element. Otherwise the recorded statistics are compared against
bounds the rule implies: if every element satisfies it then (n = finite elements)

* ``|mean_a - mean_b| <= atol + rtol * abs_mean_b`` (the mean of the bounds),
* ``|abs_mean_a - abs_mean_b| <= atol + rtol * abs_mean_b``,
* ``|min_a - min_b|`` and ``|max_a - max_b| <= atol + rtol * max(|min_b|, |max_b|)``,
* ``|std_a - std_b| <= atol + rtol * rms_b`` with ``rms_b = l2_b / sqrt(n)``
  (Minkowski's inequality on the centred vectors),
* ``|l2_a - l2_b| <= sqrt(n) * atol + rtol * l2_b`` (triangle inequality),

so a statistics comparison never reports a divergence the elementwise rule would not.
NaN and Inf counts must be equal. The *error* of a comparison is the largest ratio of a
difference to its bound: ``error <= 1`` means within tolerance, and its growth from
node to node is the error-growth curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Tolerance", "DEFAULT_TOLERANCES", "tolerance_for", "stat_bounds", "compare_stats", "compare_values", "Comparison"]

#: Default (atol, rtol) per element type; other types (integers, bool) compare exactly.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-5, 1e-4),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 5e-2),
    # Float8 carries 2-3 mantissa bits: half a unit in the last place is 1/16 (e4m3) or 1/8 (e5m2).
    "float8e4m3fn": (1e-2, 0.125),
    "float8e4m3fnuz": (1e-2, 0.125),
    "float8e5m2": (1e-2, 0.25),
    "float8e5m2fnuz": (1e-2, 0.25),
}

_STATS = ("mean", "abs_mean", "std", "min", "max", "l2")


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance of the elementwise rule ``|a-b| <= atol + rtol*|b|``."""

    atol: float
    rtol: float


def tolerance_for(dtype_a: str, dtype_b: str, *, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The tolerance for comparing tensors of these element types.

    The looser default of the two types applies (fp32 vs bf16 is judged as bf16); an
    explicit ``atol``/``rtol`` replaces the default for floating types. Integer and bool
    tensors compare exactly unless a tolerance is given.
    """
    # 'float8_e4m3fn' (PyTorch) and 'float8e4m3fn' (ONNX Runtime) name one type.
    defaults = [DEFAULT_TOLERANCES.get(d.replace("_", "")) for d in (dtype_a, dtype_b)]
    known = [d for d in defaults if d is not None]
    base = (max(d[0] for d in known), max(d[1] for d in known)) if known else (0.0, 0.0)
    return Tolerance(base[0] if atol is None else float(atol), base[1] if rtol is None else float(rtol))


@dataclass(frozen=True)
class Comparison:
    """Result of comparing two observations.

    Attributes:
        error: Largest ratio of a difference to its bound (> 1: out of tolerance;
            ``inf`` for shape, NaN-count or Inf-count disagreements).
        metric: The statistic (or 'values') with the largest ratio.
        abs_diff: The absolute difference of that statistic (max |a-b| for values).
        method: 'stats' or 'values'.
    """

    error: float
    metric: str
    abs_diff: float
    method: str


def _squeezed(shape: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (shape or []) if int(s) != 1)


def stat_bounds(b: dict[str, Any], tol: Tolerance) -> dict[str, float]:
    """Bounds on each statistic's difference implied by the elementwise rule (see module doc)."""
    n = max(int(b.get("numel") or 0) - int(b.get("nan_count") or 0) - int(b.get("inf_count") or 0), 0)
    abs_mean = abs(b.get("abs_mean") or 0.0)
    peak = max(abs(b.get("min") or 0.0), abs(b.get("max") or 0.0))
    l2 = abs(b.get("l2") or 0.0)
    rms = l2 / math.sqrt(n) if n else 0.0
    return {
        "mean": tol.atol + tol.rtol * abs_mean,
        "abs_mean": tol.atol + tol.rtol * abs_mean,
        "std": tol.atol + tol.rtol * rms,
        "min": tol.atol + tol.rtol * peak,
        "max": tol.atol + tol.rtol * peak,
        "l2": math.sqrt(n) * tol.atol + tol.rtol * l2,
    }


def _ratio(diff: float, bound: float) -> float:
    if diff == 0.0:
        return 0.0
    return diff / bound if bound > 0 else math.inf


def compare_stats(a: dict[str, Any], b: dict[str, Any], tol: Tolerance) -> Comparison:
    """Compare two records' statistics (B is the reference)."""
    if _squeezed(a.get("shape")) != _squeezed(b.get("shape")):
        return Comparison(math.inf, "shape", math.inf, "stats")
    for count in ("nan_count", "inf_count"):
        if int(a.get(count) or 0) != int(b.get(count) or 0):
            return Comparison(math.inf, count, float(abs(int(a.get(count) or 0) - int(b.get(count) or 0))), "stats")
    bounds = stat_bounds(b, tol)
    worst = Comparison(0.0, "mean", 0.0, "stats")
    for stat in _STATS:
        va, vb = a.get(stat), b.get(stat)
        if va is None or vb is None:
            if (va is None) != (vb is None):
                return Comparison(math.inf, stat, math.inf, "stats")
            continue
        diff = abs(float(va) - float(vb))
        r = _ratio(diff, bounds[stat])
        if r > worst.error:
            worst = Comparison(r, stat, diff, "stats")
    return worst


def compare_values(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> Comparison:
    """Compare raw values element by element (B is the reference)."""
    if _squeezed(a.shape) != _squeezed(b.shape):
        return Comparison(math.inf, "shape", math.inf, "values")
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    fin_x, fin_y = np.isfinite(x), np.isfinite(y)
    # Non-finite elements must be the same non-finite value at the same position.
    if not np.array_equal(fin_x, fin_y) or not np.array_equal(np.isnan(x), np.isnan(y)) or np.any(x[np.isinf(x)] != y[np.isinf(y)]):
        return Comparison(math.inf, "values", math.inf, "values")
    x, y = x[fin_x], y[fin_y]
    if not x.size:
        return Comparison(0.0, "values", 0.0, "values")
    diff = np.abs(x - y)
    bound = tol.atol + tol.rtol * np.abs(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(diff == 0, 0.0, diff / bound)
    return Comparison(float(np.max(ratios)), "values", float(np.max(diff)), "values")
