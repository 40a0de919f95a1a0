"""Histogram binnings (spec section 'Histograms'): the reference definition.

A histogram is stored in a record as ``hist_scheme``, ``hist_lo``, ``hist_hi`` and
``hist_counts``; the bin edges follow from those four values alone, so any reader can
recover them (:func:`edges`). Four schemes exist:

``symlog`` (the default, mergeable)
    Fixed, data-independent, sign-symmetric log-spaced bins. With ``M = (n - 3) / 2``
    bins per sign and magnitude edges ``m_j = 10**(log10(lo) + j * (log10(hi) -
    log10(lo)) / M)`` (``m_0 = lo``, ``m_M = hi`` exactly), the ``n`` bins in ascending
    order are ``(-inf, -hi]``, the ``M`` negative bins ``(-m_{j+1}, -m_j]``, the zero bin
    ``(-lo, lo)``, the ``M`` positive bins ``[m_j, m_{j+1})`` and ``[hi, +inf)``. Every
    finite element lands in exactly one bin, so histograms with equal ``(lo, hi, n)`` merge
    by adding counts, across steps and ranks.

``linear``
    ``n`` equal-width bins over ``[lo, hi]`` with ``torch.histc`` semantics: elements
    outside ``[lo, hi]`` are not counted; the bin index is
    ``floor((x - lo) * n / (hi - lo))`` evaluated in the tensor's floating type (float32
    for float16/bfloat16/float32 tensors, float64 for float64), and index ``n`` (x == hi)
    goes to the last bin.

``abs_linear``
    ``linear`` applied to ``|x|``. ``abs_linear`` with lo=0, hi=10, n=40 reproduces
    fast.ai's ``ActivationStats`` histogram ``x.abs().histc(40, 0, 10)`` exactly.

``edges`` (since format 1.1)
    Explicit ascending finite edges stored in the row's ``hist_edges`` (``n + 1`` of them,
    ``hist_lo``/``hist_hi`` equal to the first/last). Bin ``i`` holds values between
    edges ``i`` and ``i + 1``; values outside are not counted. This keeps bucket limits
    chosen by another tool (TensorBoard's ``bucket_limit``) exactly; :func:`histogram`
    counts ``[e_i, e_{i+1})`` with the last bin closed.

NaN and ±Inf are never counted in a histogram (they have their own counters).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .enums import HistScheme, coerce
from .errors import UsageError

__all__ = ["Binning", "DEFAULT_BINNING", "FASTAI_BINNING", "edges", "histogram", "merge", "round_up_edges"]


@dataclass(frozen=True)
class Binning:
    """A histogram binning: scheme, range and number of bins.

    Args:
        scheme: ``symlog``, ``linear``, ``abs_linear`` or ``edges``.
        lo: Lower parameter (smallest resolved magnitude for symlog).
        hi: Upper parameter (largest resolved magnitude for symlog).
        bins: Total number of bins ``n`` (odd and >= 5 for symlog).
        explicit: For ``edges`` only: the ``n + 1`` ascending finite edges (see
            :meth:`from_edges`). Defaults to None.
    """

    scheme: HistScheme
    lo: float
    hi: float
    bins: int
    explicit: tuple[float, ...] | None = None

    @classmethod
    def from_edges(cls, bin_edges: Any) -> Binning:
        """An ``edges`` binning over the given ascending finite edges (at least two)."""
        e = tuple(float(v) for v in np.asarray(bin_edges, dtype=np.float64).reshape(-1))
        return cls(HistScheme.EDGES, e[0] if e else 0.0, e[-1] if e else 0.0, len(e) - 1, e)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", coerce(HistScheme, self.scheme, what="histogram scheme"))
        if self.scheme is HistScheme.EDGES:
            e = np.asarray(self.explicit if self.explicit is not None else (), dtype=np.float64)
            if len(e) < 2 or not np.isfinite(e).all() or not (e[1:] > e[:-1]).all():
                raise UsageError(f"an edges binning needs at least two strictly ascending finite edges; got {len(e)}")
            if len(e) != self.bins + 1 or e[0] != self.lo or e[-1] != self.hi:
                raise UsageError("an edges binning needs bins + 1 edges, lo equal to the first and hi to the last")
            return
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise UsageError(f"histogram range must satisfy lo < hi (finite); got lo={self.lo}, hi={self.hi}")
        if self.scheme is HistScheme.SYMLOG:
            if self.lo <= 0 or self.bins < 5 or (self.bins - 3) % 2:
                raise UsageError(f"symlog binning needs lo > 0 and an odd number of bins >= 5; got lo={self.lo}, bins={self.bins}")
        elif self.bins < 1:
            raise UsageError(f"histogram needs at least one bin; got {self.bins}")

    def edges(self) -> np.ndarray:
        """The ``bins + 1`` ascending bin edges (may start with -inf and end with +inf)."""
        return edges(self.scheme, self.lo, self.hi, self.bins, self.explicit)

    def magnitude_edges(self) -> np.ndarray:
        """For symlog: the ``M + 1`` magnitude edges ``m_0 = lo .. m_M = hi``."""
        if self.scheme is not HistScheme.SYMLOG:
            raise UsageError("magnitude_edges() applies to the symlog scheme only")
        return _magnitude_edges(float(self.lo), float(self.hi), (self.bins - 3) // 2).copy()


#: The default: 12 decades from 1e-6 to 1e6 at 4 bins per decade, 99 bins in all.
DEFAULT_BINNING = Binning(HistScheme.SYMLOG, 1e-6, 1e6, 99)
#: fast.ai's ActivationStats histogram: histc(|x|, 40, 0, 10).
FASTAI_BINNING = Binning(HistScheme.ABS_LINEAR, 0.0, 10.0, 40)


@lru_cache(maxsize=64)
def _magnitude_edges(lo: float, hi: float, per_sign: int) -> np.ndarray:
    a, b = np.log10(lo), np.log10(hi)
    m = 10.0 ** (a + np.arange(per_sign + 1, dtype=np.float64) * ((b - a) / per_sign))
    m[0], m[-1] = lo, hi
    m.setflags(write=False)
    return m


def edges(scheme: str | HistScheme, lo: float, hi: float, bins: int, explicit: Any = None) -> np.ndarray:
    """Recover the ``bins + 1`` bin edges of a stored histogram from its row.

    Args:
        scheme: The record's ``hist_scheme``.
        lo: The record's ``hist_lo``.
        hi: The record's ``hist_hi``.
        bins: ``len(hist_counts)``.
        explicit: The record's ``hist_edges`` (scheme ``edges`` only). Defaults to None.

    Returns:
        Ascending float64 edges. For ``abs_linear`` they are edges of ``|x|``.
    """
    scheme = coerce(HistScheme, scheme, what="histogram scheme")
    if scheme is HistScheme.SYMLOG:
        m = _magnitude_edges(float(lo), float(hi), (bins - 3) // 2)
        return np.concatenate([[-np.inf], -m[::-1], m, [np.inf]])
    if scheme is HistScheme.EDGES:
        if explicit is None:
            raise UsageError("a histogram of scheme 'edges' needs its hist_edges")
        return np.asarray(explicit, dtype=np.float64)
    return np.linspace(lo, hi, bins + 1)


def _float_kind(x: np.ndarray) -> np.ndarray:
    """View ``x`` in the floating type histc computes in (float32 below float64)."""
    if x.dtype == np.float64:
        return x
    return x.astype(np.float32, copy=False)


def histogram(x: np.ndarray, binning: Binning = DEFAULT_BINNING) -> np.ndarray:
    """Count the finite elements of ``x`` into ``binning``'s bins (the reference).

    Args:
        x: Any real array (bool and integer arrays are treated as numbers).
        binning: The binning. Defaults to :data:`DEFAULT_BINNING`.

    Returns:
        int64 counts, ``binning.bins`` long.
    """
    a = np.asarray(x)
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    a = a.reshape(-1)
    if binning.scheme is HistScheme.SYMLOG:
        return _symlog_counts(a, binning)
    if binning.scheme is HistScheme.EDGES:
        e = np.asarray(binning.explicit, dtype=np.float64)
        v = a.astype(np.float64, copy=False)
        v = v[np.isfinite(v) & (v >= e[0]) & (v <= e[-1])]
        idx = np.minimum(np.searchsorted(e, v, side="right") - 1, binning.bins - 1)
        return np.bincount(idx, minlength=binning.bins).astype(np.int64)
    v = _float_kind(a) if a.dtype.kind == "f" else a.astype(np.float64)
    if binning.scheme is HistScheme.ABS_LINEAR:
        v = np.abs(v)
    v = v[np.isfinite(v)]
    lo, hi, n = v.dtype.type(binning.lo), v.dtype.type(binning.hi), binning.bins
    v = v[(v >= lo) & (v <= hi)]
    with np.errstate(over="ignore", invalid="ignore"):
        idx = np.floor((v - lo) * v.dtype.type(n) / (hi - lo)).astype(np.int64)
    idx[idx >= n] = n - 1
    return np.bincount(idx, minlength=n).astype(np.int64)


def _symlog_counts(a: np.ndarray, binning: Binning) -> np.ndarray:
    per_sign = (binning.bins - 3) // 2
    m = _magnitude_edges(float(binning.lo), float(binning.hi), per_sign)
    v = a.astype(np.float64, copy=False)
    v = v[np.isfinite(v)]
    mag = np.abs(v)
    # j in [-1, per_sign]: -1 = zero bin (|x| < lo), per_sign = overflow (|x| >= hi).
    j = np.searchsorted(m, mag, side="right") - 1
    j[mag >= binning.hi] = per_sign
    center = per_sign + 1
    pos = np.where(j < 0, center, center + 1 + j)
    neg = np.where(j < 0, center, center - 1 - j)
    idx = np.where(v < 0, neg, pos)
    return np.bincount(idx, minlength=binning.bins).astype(np.int64)


def merge(counts: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Merge histograms of the same binning (the sum of their counts)."""
    arr = np.asarray(counts, dtype=np.int64)
    return arr.sum(axis=0) if arr.ndim == 2 else arr


def round_up_edges(edges: np.ndarray, dtype: Any) -> np.ndarray:
    """The smallest value of ``dtype`` not below each float64 edge.

    A value ``x`` of ``dtype`` satisfies ``x >= e`` for a float64 edge ``e`` exactly when
    ``x >= round_up_edges(e)``, so device kernels that compare in float32 bin as this
    module does in float64 (used by the torch and JAX adapters).
    """
    dt = np.dtype(dtype).type
    r = edges.astype(dt)
    low = r.astype(np.float64) < edges
    r[low] = np.nextafter(r[low], dt(np.inf))
    return r
