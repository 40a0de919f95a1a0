"""The one reduction behind the reference statistics: a native kernel and its numpy twin.

:func:`reduce` turns an array into a :class:`Reduction` (counts, min, max, histogram and
scaled sums) from which :func:`tracefmt.stats.tensor_stats` derives the record
statistics. It runs the C kernel ``tracefmt._stats`` (built at install time) when it is
available and a pure-numpy implementation otherwise; both perform the same floating-point
operations in the same order, so their results are bit-identical (tested).

The order of the sums (spec 'Statistics'): the finite elements are scaled by an exact
power of two ``2**-e`` (``e`` from the largest finite magnitude, so ``|g| < 2`` and no sum
overflows), non-finite elements contribute ``+0.0``; element ``i`` is added to
accumulator ``i % 8`` in index order (the array padded with zeros to a multiple of 8),
and the 8 accumulators are then added in order. ``M2``, the sum of squared deviations, is
``S2 - S1**2 / n`` unless that keeps less than 2**-10 of ``S2`` (cancellation), in
which case it is summed the same way from ``(g - S1 / n)**2``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .enums import HistScheme
from .histogram import Binning, _magnitude_edges, histogram, round_up_edges

__all__ = ["Reduction", "reduce", "ChannelSums", "channel_sums", "native_available", "native_status", "LANES"]

#: Number of accumulators of every sum (must equal LANES in _stats.c).
LANES = 8
#: Rows of LANES elements summed per numpy call in the fallback (bounds its memory).
_CHUNK_ROWS = 1 << 16
# EDGES (explicit edges) has no kernel mode: 0 = moments in the kernel, the histogram in numpy.
_MODES = {None: 0, HistScheme.SYMLOG: 1, HistScheme.LINEAR: 2, HistScheme.ABS_LINEAR: 3, HistScheme.EDGES: 0}


@dataclass(frozen=True)
class Reduction:
    """What one pass over an array yields; the record statistics are derived from it.

    Attributes:
        numel: Number of elements.
        nan_count: Elements that are NaN.
        inf_count: Elements that are +Inf or -Inf.
        zero_count: Elements equal to 0.
        pos_count: Elements > 0 (+Inf included).
        neg_inf_count: Elements that are -Inf.
        exponent: ``e``: the finite elements were summed as ``g = x * 2**-e``.
        s1: Sum of ``g``.
        sa: Sum of ``|g|``.
        s2: Sum of ``g**2``.
        m2: Sum of ``(g - mean_g)**2``.
        min: Smallest finite element (+inf when none).
        max: Largest finite element (-inf when none).
        hist: Histogram counts (int64), or None without a binning.
    """

    numel: int
    nan_count: int
    inf_count: int
    zero_count: int
    pos_count: int
    neg_inf_count: int
    exponent: int
    s1: float
    sa: float
    s2: float
    m2: float
    min: float
    max: float
    hist: np.ndarray | None

    @property
    def finite(self) -> int:
        """Number of finite elements."""
        return self.numel - self.nan_count - self.inf_count

    def moments(self) -> dict[str, float | None]:
        """``mean``, ``std``, ``abs_mean``, ``l2``, ``min``, ``max`` (None when no element is finite)."""
        n = self.finite
        if n == 0:
            return {"mean": None, "std": None, "min": None, "max": None, "abs_mean": None, "l2": 0.0}
        scale = 2.0**self.exponent  # exact: -1074 <= exponent <= 1023
        return {
            "mean": self.s1 / n * scale,
            "std": float(np.sqrt(max(self.m2, 0.0) / n)) * scale,
            "min": self.min + 0.0,  # -0.0 -> +0.0: which zero is the minimum is order-dependent
            "max": self.max + 0.0,
            "abs_mean": self.sa / n * scale,
            "l2": float(np.sqrt(self.s2)) * scale,
        }


def _as_kernel_input(x: Any) -> np.ndarray:
    """Flat float32/float64 view of ``x`` with the values the reference defines on."""
    a = np.asarray(x)
    if a.dtype == np.float32 or a.dtype == np.float64:
        return np.ascontiguousarray(a).reshape(-1)
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        return a.astype(np.float32).reshape(-1)  # float16: exact, and the histogram's type
    return a.astype(np.float64).reshape(-1)  # bool, integers, long double


@dataclass(frozen=True)
class _SymlogTable:
    first: np.ndarray
    bound: np.ndarray
    kmin: int
    kmax: int
    center: int
    first32: np.ndarray
    bound32: np.ndarray


def _key(v: float) -> int:
    return int(np.array(v, dtype=np.float64).view(np.uint64)) >> 49


@lru_cache(maxsize=16)
def _symlog_table(binning: Binning) -> _SymlogTable | None:
    """Lookup tables of the kernel for a symlog binning; None if a key would hold two edges."""
    per_sign = (binning.bins - 3) // 2
    m = _magnitude_edges(float(binning.lo), float(binning.hi), per_sign)
    kmin, kmax = max(_key(binning.lo) - 1, 0), min(_key(binning.hi) + 1, (1 << 15) - 1)
    keys = np.arange(kmin, kmax + 1, dtype=np.uint64)
    start = (keys << np.uint64(49)).view(np.float64)
    end = (((keys + np.uint64(1)) << np.uint64(49)) - np.uint64(1)).view(np.float64)
    js, je = np.searchsorted(m, start, side="right"), np.searchsorted(m, end, side="right")
    if np.any(je - js > 1):
        return None
    bound = np.where(je > js, m[np.minimum(js, per_sign)], np.inf)
    first32, bound32 = _float32_table(m, binning.bins)
    return _SymlogTable(js.astype(np.int32), bound.astype(np.float64), kmin, kmax, per_sign + 1, first32, bound32)


def _float32_table(m: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables keyed by the top 12 bits of a float32 (see ``symlog_bin32`` in _stats.c).

    For float32 values the reference bins are ``bin(v) = #(t < v)`` over the ascending
    float32 thresholds ``t``: the largest float32 <= ``-m_j`` (negative bins are closed on
    the right) and the largest float32 < ``m_j`` (positive bins are closed on the left).
    An empty table is returned when a key would hold two thresholds.
    """
    inf = np.float32(np.inf)
    up = round_up_edges(m, np.float32)  # smallest float32 >= m_j
    thresholds = np.concatenate([-up[::-1], np.nextafter(up, -inf)])  # -up = largest float32 <= -m_j
    keys = np.arange(4096, dtype=np.uint32)
    lo_bits, hi_bits = keys << np.uint32(20), (keys << np.uint32(20)) | np.uint32(0xFFFFF)
    negative = keys >= 0x800
    smallest = np.where(negative, hi_bits, lo_bits).view(np.float32)
    largest = np.where(negative, lo_bits, hi_bits).view(np.float32)
    special = (keys & 0x7FF) >= 0x7F8  # exponent 255: Inf and NaN
    with np.errstate(invalid="ignore"):
        bs = np.searchsorted(thresholds, np.where(special, 0, smallest), side="left")
        bl = np.searchsorted(thresholds, np.where(special, 0, largest), side="left")
    if np.any(bl - bs > 1):
        return _NO_TABLE32
    bound32 = np.where(bl > bs, thresholds[np.minimum(bs, thresholds.size - 1)], inf).astype(np.float32)
    first32 = np.where(special, bins, bs).astype(np.int32)
    bound32[special] = inf
    return first32, bound32


_NO_TABLE = (np.zeros(1, np.int32), np.zeros(1, np.float64))
_NO_TABLE32 = (np.zeros(0, np.int32), np.zeros(0, np.float32))


@lru_cache(maxsize=1)
def _native() -> Any:
    if os.environ.get("TRACEFMT_NATIVE", "1") == "0":
        return None
    try:
        from . import _stats
    except ImportError:
        return None
    return _stats


def native_available() -> bool:
    """True when the native kernel is built and enabled (``TRACEFMT_NATIVE`` is not 0)."""
    return _native() is not None


def native_status() -> str:
    """One line saying which statistics engine runs ('native kernel' or why the fallback runs)."""
    if os.environ.get("TRACEFMT_NATIVE", "1") == "0":
        return "numpy fallback (TRACEFMT_NATIVE=0)"
    if _native() is None:
        return "numpy fallback (the native kernel tracefmt._stats was not built: no C compiler at install time)"
    return "native kernel (tracefmt._stats)"


_warned: list[bool] = []


def _warn_fallback_once() -> None:
    if not _warned and os.environ.get("TRACEFMT_NATIVE", "1") != "0":
        _warned.append(True)
        warnings.warn(f"tracefmt statistics: {native_status()}; results are identical, only slower", RuntimeWarning, stacklevel=3)


def reduce(x: Any, binning: Binning | None = None, *, native: bool | None = None) -> Reduction:
    """Reduce an array to counts, extremes, histogram and scaled sums (see the module docstring).

    Args:
        x: A numpy array or anything ``np.asarray`` accepts (real numbers; bool as 0/1).
        binning: Histogram binning, or None for no histogram. Defaults to None.
        native: True or None: the C kernel when it is built (None warns once when it is
            not); False: the numpy implementation. Defaults to None.

    Returns:
        The :class:`Reduction`.
    """
    a = _as_kernel_input(x)
    lib = _native() if native is not False else None
    if lib is None and native is None:
        _warn_fallback_once()
    if lib is None:
        return _reduce_numpy(a, binning)
    counts = np.empty(5, np.int64)
    mom = np.empty(8, np.float64)
    mode = _MODES.get(binning.scheme if binning is not None else None, 0)  # others (edges): histogram in numpy
    table = _symlog_table(binning) if mode == 1 else None
    if mode == 1 and table is None:
        mode = 0  # an edge spacing finer than the kernel's keys: the histogram in numpy
    hist = np.empty(binning.bins if mode else 0, np.int64)
    lo, hi = (float(binning.lo), float(binning.hi)) if binning is not None else (0.0, 0.0)
    if table is not None:
        args = (table.first, table.bound, table.first32, table.bound32, table.kmin, table.kmax, table.center)
        lib.reduce(a, counts, mom, hist, mode, *args, lo, hi)
    else:
        lib.reduce(a, counts, mom, hist, mode, *_NO_TABLE, *_NO_TABLE32, 0, 0, 0, lo, hi)
    if binning is not None and mode == 0:
        hist = histogram(a, binning)
    return Reduction(
        int(a.size), int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]), int(counts[4]),
        int(mom[0]), float(mom[1]), float(mom[2]), float(mom[3]), float(mom[4]), float(mom[5]), float(mom[6]),
        hist if binning is not None else None,
    )  # fmt: skip


def _lane_sum(v: np.ndarray) -> float:
    """``v`` summed in the kernel's order: 8 sequential accumulators, then added in order."""
    pad = (-v.size) % LANES
    if pad:
        v = np.concatenate([v, np.zeros(pad)])
    rows = v.reshape(-1, LANES)
    acc = np.zeros((1, LANES))
    for start in range(0, rows.shape[0], _CHUNK_ROWS):
        # add.accumulate along axis 0 is strictly sequential per column: acc + r0 + r1 + ...
        acc = np.add.accumulate(np.concatenate([acc, rows[start : start + _CHUNK_ROWS]]), axis=0)[-1:]
    total = float(acc[0, 0])
    for k in range(1, LANES):
        total += float(acc[0, k])
    return total


def _reduce_numpy(a: np.ndarray, binning: Binning | None) -> Reduction:
    """The numpy twin of the C kernel (same operations, same order)."""
    nan = np.isnan(a)
    inf = np.isinf(a)
    fin = ~(nan | inf)
    finite = a[fin]
    n = int(finite.size)
    peak = float(np.max(np.abs(finite))) if n else 0.0
    e = int(np.frexp(peak)[1]) - 1 if peak > 0 else 0
    s1, s2 = (2.0**-e, 1.0) if e >= -1000 else (2.0**1000, 2.0 ** (-e - 1000))
    with np.errstate(over="ignore", invalid="ignore"):
        g = np.where(fin, (a.astype(np.float64) * s1) * s2, 0.0)
    S1, SA, S2 = _lane_sum(g), _lane_sum(np.abs(g)), _lane_sum(g * g)
    M2 = 0.0
    if n:
        M2 = S2 - S1 * S1 / n
        if not M2 >= S2 * 2.0**-10:
            d = np.where(fin, g - S1 / n, 0.0)
            M2 = _lane_sum(d * d)
    return Reduction(
        int(a.size), int(nan.sum()), int(inf.sum()), int(np.count_nonzero(a == 0)), int(np.count_nonzero(a > 0)),
        int(np.count_nonzero(a == -np.inf)),
        e, S1, SA, S2, M2,
        float(finite.min()) if n else float("inf"), float(finite.max()) if n else float("-inf"),
        histogram(a, binning) if binning is not None else None,
    )  # fmt: skip


@dataclass(frozen=True)
class ChannelSums:
    """Per-channel reduction along one axis: ``sums`` of the finite elements (float64,
    summed in the lane order above, elements of a channel in index order), ``finite`` and
    ``positive`` counts (int64), and ``size``, the elements per channel.
    """

    sums: np.ndarray
    finite: np.ndarray
    positive: np.ndarray
    size: int


def channel_sums(x: Any, axis: int, *, native: bool | None = None) -> ChannelSums:
    """Reduce each slice of ``x`` along ``axis`` (see :class:`ChannelSums`).

    Args:
        x: An array with at least one dimension (bool and integers as numbers).
        axis: The channel axis (non-negative).
        native: As for :func:`reduce`. Defaults to None.

    Returns:
        The :class:`ChannelSums`.
    """
    a = np.asarray(x)
    shape = a.shape
    nch = int(shape[axis])
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    flat = _as_kernel_input(a)
    lib = _native() if native is not False else None
    if lib is None and native is None:
        _warn_fallback_once()
    if lib is not None:
        sums, fin, pos = np.empty(nch), np.empty(nch, np.int64), np.empty(nch, np.int64)
        lib.channels(flat, outer, inner, sums, fin, pos)
        return ChannelSums(sums, fin, pos, outer * inner)
    rows = flat.reshape(outer, nch, inner).transpose(1, 0, 2).reshape(nch, -1)
    finite = np.isfinite(rows)
    vals = np.where(finite, rows.astype(np.float64), 0.0)
    pad = (-vals.shape[1]) % LANES
    if pad:  # an accumulator that starts at +0.0 never becomes -0.0: adding +0.0 changes nothing
        vals = np.concatenate([vals, np.zeros((nch, pad))], axis=1)
    lanes = vals.reshape(nch, -1, LANES)
    acc = np.add.accumulate(np.concatenate([np.zeros((nch, 1, LANES)), lanes], axis=1), axis=1)[:, -1, :]
    sums = acc[:, 0].copy()
    for k in range(1, LANES):
        sums += acc[:, k]
    return ChannelSums(sums, finite.sum(axis=1).astype(np.int64), np.count_nonzero(rows > 0, axis=1).astype(np.int64), outer * inner)
