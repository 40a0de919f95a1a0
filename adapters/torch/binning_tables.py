"""Boundary tables that reproduce the reference symlog histogram with one ``bucketize``.

The reference (:func:`tracefmt.histogram.histogram`) compares float64 values against
float64 magnitude edges ``m_j``. For a float32 element ``x`` and a float64 edge ``e``,
``x >= e`` holds exactly when ``x >= up32(e)``, where ``up32(e)`` is the smallest float32
not below ``e``; so float32 boundaries rounded *up* give bins identical to the reference
without widening the tensor. ``torch.bucketize(..., right=False)`` puts ``x`` in bin ``i``
with ``B[i-1] < x <= B[i]``; a half-open bin ``[a, b)`` of float32 values is therefore
``(nextdown(a), nextdown(b)]``.

The *extended* bins separate everything the record needs from one pass: -inf, the symlog
bins (the zero bin split into negative, exact-zero and positive parts), +inf and NaN
(``bucketize`` sends NaN past the last boundary).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tracefmt.enums import HistScheme
from tracefmt.histogram import Binning, round_up_edges

__all__ = ["ExtendedLayout", "extended_layout", "symlog_boundaries"]


class ExtendedLayout:
    """Index arithmetic of the extended symlog bins for ``M`` magnitude bins per sign.

    Extended bin indices (``E = 2M + 8`` bins): ``0`` -inf; ``1`` finite ``<= -hi``;
    ``2 .. M+1`` the negative symlog bins; ``M+2`` ``(-lo, 0)``; ``M+3`` exact zeros;
    ``M+4`` ``(0, lo)``; ``M+5 .. 2M+4`` the positive symlog bins; ``2M+5`` finite
    ``>= hi``; ``2M+6`` +inf; ``2M+7`` NaN.
    """

    def __init__(self, per_sign: int) -> None:
        self.per_sign = M = per_sign
        self.width = 2 * M + 8
        self.neg_inf, self.pos_inf, self.nan = 0, 2 * M + 6, 2 * M + 7
        self.zero = M + 3
        #: extended bins holding elements > 0 (+inf included)
        self.positive = slice(M + 4, 2 * M + 7)

    def histogram(self, ext: np.ndarray) -> np.ndarray:
        """Fold extended counts ``(rows, E)`` into reference symlog counts ``(rows, 2M+3)``."""
        M = self.per_sign
        zero_bin = ext[:, M + 2 : M + 5].sum(axis=1, keepdims=True)
        return np.concatenate([ext[:, 1 : M + 2], zero_bin, ext[:, M + 5 : 2 * M + 6]], axis=1)


@lru_cache(maxsize=16)
def extended_layout(per_sign: int) -> ExtendedLayout:
    """The (cached) :class:`ExtendedLayout` for ``per_sign`` magnitude bins per sign."""
    return ExtendedLayout(per_sign)


@lru_cache(maxsize=16)
def symlog_boundaries(binning: Binning, dtype_name: str) -> np.ndarray:
    """Ascending ``bucketize`` boundaries (``right=False``) of the extended symlog bins.

    Args:
        binning: A symlog binning.
        dtype_name: ``'float32'`` or ``'float64'``: the type of the values bucketized.

    Returns:
        ``2M + 7`` boundaries of that type (read-only).
    """
    if binning.scheme is not HistScheme.SYMLOG:
        raise ValueError("symlog_boundaries() needs a symlog binning")
    dt = np.float32 if dtype_name == "float32" else np.float64
    m = round_up_edges(binning.magnitude_edges(), dt)
    inf, fmax, dmin = dt(np.inf), np.finfo(dt).max, np.nextafter(dt(0), dt(1))
    below = np.nextafter(m, dt(-np.inf))  # [a, b) on the positive side is (nextdown a, nextdown b]
    b = np.concatenate([[-inf], -m[::-1], [-dmin, dt(0)], below, [fmax, inf]]).astype(dt)
    b.setflags(write=False)
    return b
