"""Reference statistics (spec section 'Statistics'): the definition every adapter meets.

All floating statistics are over the *finite* elements only, accumulated in float64;
NaN and ±Inf are counted separately and never poison a statistic. The sums come from
:func:`tracefmt.reduction.reduce` (a native kernel built at install time, or its
bit-identical numpy twin). Adapters use these functions directly (ONNX Runtime, PyTorch
tensors on the CPU) or compute the same quantities their own way (on the GPU) and are
tested against :func:`tensor_stats` here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .histogram import DEFAULT_BINNING, Binning
from .reduction import channel_sums, reduce

__all__ = ["STAT_COLUMNS", "tensor_stats", "lower_median", "channel_stats", "matrix_stats", "dtype_name"]

#: The record columns produced by :func:`tensor_stats`, in schema order.
STAT_COLUMNS = (
    "numel", "nan_count", "inf_count", "zero_count", "pos_count",
    "mean", "std", "min", "max", "abs_mean", "l2",
)  # fmt: skip


def dtype_name(dtype: Any) -> str:
    """Canonical dtype name used in the ``dtype`` column ('float32', 'bfloat16', ...)."""
    name = str(dtype)
    for prefix in ("torch.", "tensor(", "np.", "<class 'numpy."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = name.rstrip(")'>")
    aliases = {"float": "float32", "double": "float64", "half": "float16", "bool_": "bool", "long": "int64", "int": "int32"}
    return aliases.get(name, name)


def tensor_stats(
    x: Any,
    *,
    binning: Binning | None = DEFAULT_BINNING,
    median: bool = False,
    native: bool | None = None,
) -> dict[str, Any]:
    """Compute the record statistics of one tensor.

    Definitions (n = number of finite elements f_i):
    ``mean = sum f_i / n``; ``std = sqrt(sum (f_i - mean)^2 / n)`` (population, ddof 0);
    ``abs_mean = sum |f_i| / n``; ``l2 = sqrt(sum f_i^2)``; ``min``/``max`` over the f_i
    (a zero minimum or maximum is +0.0); all null when n = 0 except ``l2`` = 0. Sums are
    taken in float64 over the elements scaled by an exact power of two, so that huge
    values never overflow, in the fixed order of :mod:`tracefmt.reduction`. Counts cover
    every element: ``nan_count``, ``inf_count``, ``zero_count`` (x == 0), ``pos_count``
    (x > 0, +Inf included).

    Args:
        x: A numpy array or anything ``np.asarray`` accepts (bool treated as 0/1).
        binning: Histogram binning, or None for no histogram. Defaults to the symlog default.
        median: Also compute the lower median of the finite elements. Defaults to False.
        native: The native kernel when built (None), always the numpy implementation
            (False); both give bit-identical results. Defaults to None.

    Returns:
        A dict keyed by record column names (``dtype``, ``shape``, the statistics and, with
        a binning, ``hist_scheme``/``hist_lo``/``hist_hi``/``hist_counts``).
    """
    a = np.asarray(x)
    out: dict[str, Any] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape)}
    r = reduce(a, binning, native=native)
    out.update(numel=r.numel, nan_count=r.nan_count, inf_count=r.inf_count, zero_count=r.zero_count, pos_count=r.pos_count)
    out.update(r.moments())
    if median:
        out["median"] = lower_median(a)
    if binning is not None:
        out.update(
            hist_scheme=binning.scheme.value,
            hist_lo=float(binning.lo),
            hist_hi=float(binning.hi),
            hist_counts=r.hist.tolist(),
        )
        if binning.explicit is not None:
            out["hist_edges"] = list(binning.explicit)
    return out


def lower_median(x: Any) -> float | None:
    """The lower median of the finite elements of ``x`` (None when there is none)."""
    flat = np.asarray(x).reshape(-1)
    if flat.dtype == np.bool_:
        flat = flat.astype(np.uint8)
    finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    finite = finite.astype(np.float64)
    n = finite.size
    return float(np.partition(finite, (n - 1) // 2)[(n - 1) // 2]) if n else None


def channel_stats(x: Any, axis: int = 1, *, native: bool | None = None) -> dict[str, Any] | None:
    """Per-channel vectors of one tensor along ``axis`` (spec 'Per-channel vectors').

    ``channel_pos_frac[c]`` = (elements > 0 in channel c) / (elements in channel c);
    ``channel_mean[c]`` = mean of the finite elements of channel c (NaN if none), their
    sum taken in the order of :func:`tracefmt.reduction.channel_sums`.

    Args:
        x: Array with at least 2 dimensions.
        axis: The channel axis; negative counts from the end. Defaults to 1 (NCHW / NC).
        native: As for :func:`tensor_stats`. Defaults to None.

    Returns:
        ``channel_axis`` (non-negative), ``channel_pos_frac`` and ``channel_mean`` as
        float32 lists, or None for arrays with fewer than 2 dimensions or no elements.
    """
    a = np.asarray(x)
    if a.ndim < 2 or a.size == 0:
        return None
    ax = axis % a.ndim
    r = channel_sums(a, ax, native=native)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = r.sums / np.where(r.finite > 0, r.finite, np.nan)
    return {
        "channel_axis": int(ax),
        "channel_pos_frac": (r.positive / r.size).astype(np.float32).tolist(),
        "channel_mean": mean.astype(np.float32).tolist(),
    }


def matrix_stats(w: Any) -> dict[str, float] | None:
    """Spectral statistics of a 2-D weight (spec 'Matrix statistics'), None otherwise.

    ``mat_trace`` = sum of the diagonal (of the leading square block); ``mat_spectral`` =
    largest singular value; ``mat_sv_mean`` / ``mat_sv_var`` = mean and population
    variance of all singular values. Computed in float64; null if non-finite elements.
    """
    a = np.asarray(w, dtype=np.float64)
    if a.ndim != 2 or a.size == 0 or not np.all(np.isfinite(a)):
        return None
    sv = np.linalg.svd(a, compute_uv=False)
    return {
        "mat_trace": float(np.trace(a)),
        "mat_spectral": float(sv[0]),
        "mat_sv_mean": float(sv.mean()),
        "mat_sv_var": float(sv.var()),
    }
