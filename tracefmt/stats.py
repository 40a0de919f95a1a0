"""Reference statistics (spec section 'Statistics'): the definition every adapter meets.

All floating statistics are over the *finite* elements only, accumulated in float64;
NaN and ±Inf are counted separately and never poison a statistic. Adapters compute the
same quantities their own way (on the device for PyTorch) and are tested against
:func:`tensor_stats` here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .histogram import DEFAULT_BINNING, Binning, histogram

__all__ = ["STAT_COLUMNS", "tensor_stats", "channel_stats", "matrix_stats", "dtype_name"]

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
            name = name[len(prefix):]
    name = name.rstrip(")'>")
    aliases = {"float": "float32", "double": "float64", "half": "float16", "bool_": "bool", "long": "int64", "int": "int32"}
    return aliases.get(name, name)


def _scaled(f: np.ndarray) -> tuple[np.ndarray, float]:
    """``f`` divided by a power of two near max|f| (exact), to avoid overflow in sums."""
    peak = float(np.max(np.abs(f)))
    if peak == 0.0:
        return f, 1.0
    # peak = m * 2**e with m in [0.5, 1): dividing by 2**(e-1) is exact and keeps |g| < 2.
    scale = float(np.ldexp(1.0, np.frexp(peak)[1] - 1))
    return f / scale, scale


def tensor_stats(
    x: Any,
    *,
    binning: Binning | None = DEFAULT_BINNING,
    median: bool = False,
) -> dict[str, Any]:
    """Compute the record statistics of one tensor.

    Definitions (n = number of finite elements f_i):
    ``mean = sum f_i / n``; ``std = sqrt(sum (f_i - mean)^2 / n)`` (population, ddof 0);
    ``abs_mean = sum |f_i| / n``; ``l2 = sqrt(sum f_i^2)``; ``min``/``max`` over the f_i;
    all null when n = 0 except ``l2`` = 0. Sums are scaled by an exact power of two so that
    huge values do not overflow. Counts cover every element: ``nan_count``, ``inf_count``,
    ``zero_count`` (x == 0), ``pos_count`` (x > 0, +Inf included).

    Args:
        x: A numpy array or anything ``np.asarray`` accepts (bool treated as 0/1).
        binning: Histogram binning, or None for no histogram. Defaults to the symlog default.
        median: Also compute the lower median of the finite elements. Defaults to False.

    Returns:
        A dict keyed by record column names (``dtype``, ``shape``, the statistics and, with
        a binning, ``hist_scheme``/``hist_lo``/``hist_hi``/``hist_counts``).
    """
    a = np.asarray(x)
    out: dict[str, Any] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape)}
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    flat = a.reshape(-1)
    if flat.dtype.kind == "f":
        nan = np.isnan(flat)
        inf = np.isinf(flat)
        finite = flat[~(nan | inf)].astype(np.float64)
        nan_count, inf_count = int(nan.sum()), int(inf.sum())
        pos_count = int(np.count_nonzero(flat > 0))
    else:
        finite = flat.astype(np.float64)
        nan_count = inf_count = 0
        pos_count = int(np.count_nonzero(flat > 0))
    n = finite.size
    out.update(
        numel=int(flat.size),
        nan_count=nan_count,
        inf_count=inf_count,
        zero_count=int(np.count_nonzero(flat == 0)),
        pos_count=pos_count,
    )
    if n == 0:
        out.update(mean=None, std=None, min=None, max=None, abs_mean=None, l2=0.0)
    else:
        g, scale = _scaled(finite)
        mean_g = float(np.mean(g))
        out.update(
            mean=mean_g * scale,
            std=float(np.sqrt(np.mean((g - mean_g) ** 2))) * scale,
            min=float(np.min(finite)),
            max=float(np.max(finite)),
            abs_mean=float(np.mean(np.abs(g))) * scale,
            l2=float(np.sqrt(np.dot(g, g))) * scale,
        )
    if median:
        out["median"] = float(np.partition(finite, (n - 1) // 2)[(n - 1) // 2]) if n else None
    if binning is not None:
        out.update(
            hist_scheme=binning.scheme.value,
            hist_lo=float(binning.lo),
            hist_hi=float(binning.hi),
            hist_counts=histogram(flat, binning).tolist(),
        )
        if binning.explicit is not None:
            out["hist_edges"] = list(binning.explicit)
    return out


def channel_stats(x: Any, axis: int = 1) -> dict[str, Any] | None:
    """Per-channel vectors of one tensor along ``axis`` (spec 'Per-channel vectors').

    ``channel_pos_frac[c]`` = (elements > 0 in channel c) / (elements in channel c);
    ``channel_mean[c]`` = mean of the finite elements of channel c (NaN if none).

    Args:
        x: Array with at least 2 dimensions.
        axis: The channel axis; negative counts from the end. Defaults to 1 (NCHW / NC).

    Returns:
        ``channel_axis`` (non-negative), ``channel_pos_frac`` and ``channel_mean`` as
        float32 lists, or None for arrays with fewer than 2 dimensions or no elements.
    """
    a = np.asarray(x)
    if a.ndim < 2 or a.size == 0:
        return None
    ax = axis % a.ndim
    moved = np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1)
    if moved.dtype == np.bool_:
        moved = moved.astype(np.uint8)
    pos_frac = np.count_nonzero(moved > 0, axis=1) / moved.shape[1]
    vals = moved.astype(np.float64)
    fin = np.isfinite(vals)
    with np.errstate(invalid="ignore", over="ignore"):
        cnt = fin.sum(axis=1)
        mean = np.where(fin, vals, 0.0).sum(axis=1) / np.where(cnt > 0, cnt, np.nan)
    return {
        "channel_axis": int(ax),
        "channel_pos_frac": pos_frac.astype(np.float32).tolist(),
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
