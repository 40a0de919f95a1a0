"""Record statistics of a JAX array, computed inside ``jit`` on the array's device.

One array becomes one *row*: an int32 count vector ``[nan, inf, zero, pos, hist..., scale exponent]`` and
a float32 moment vector ``[mean, std, min, max, abs_mean, l2]``; a step's rows are stacked
and copied to the host once. The definitions are those of :func:`tracefmt.stats.tensor_stats`
(spec 'Statistics'): moments over the finite elements, scaled by an exact power of two so
that sums cannot overflow where the values do not; NaN and Inf only counted. Histograms
follow :mod:`tracefmt.histogram`: for symlog, a float32 element ``x`` satisfies ``x >= e``
for a float64 edge ``e`` exactly when ``x >= up32(e)`` (the smallest float32 not below
``e``), so float32 edges rounded up give the reference's bins without float64 on the device.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tracefmt.enums import HistScheme
from tracefmt.histogram import Binning, round_up_edges

__all__ = ["StatRows", "MOMENTS"]

#: The moment columns of a row, in order.
MOMENTS = ("mean", "std", "min", "max", "abs_mean", "l2")
_COUNTS = ("nan_count", "inf_count", "zero_count", "pos_count")


@lru_cache(maxsize=16)
def _edges(binning: Binning, dtype: str) -> np.ndarray:
    """Symlog magnitude edges in ``dtype``, each rounded up (see the module docstring)."""
    m = binning.magnitude_edges()
    return m if dtype == "float64" else round_up_edges(m, np.float32)


def _float(x: jax.Array) -> jax.Array:
    """Flatten to float32 (float64 kept; half types widen exactly; ints and bool as float32)."""
    f = jnp.ravel(x)
    if f.dtype == jnp.float64:
        return f
    return f.astype(jnp.float32)


class StatRows:
    """Compute statistic rows of arrays inside a traced function, decode them on the host.

    Args:
        binning: The histogram binning, or None for statistics only.
    """

    def __init__(self, binning: Binning | None) -> None:
        self.binning = binning
        self.bins = binning.bins if binning is not None else 0
        #: Length of the count vector of a row.
        self.width = len(_COUNTS) + self.bins + 1

    # -- device side (inside jit) ------------------------------------------------------
    def rows(self, arrays: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """The rows of ``arrays``: ``(R, width)`` int32 counts and ``(R, 6)`` float32 moments.

        The last count column is the exponent of the power-of-two scale of the moments.

        Traceable, no host synchronisation. All arrays are flattened into one vector with a
        segment id per element, so the compiled program has the same few reductions
        whatever the number of arrays (compiling one reduction chain per array is slow).
        """
        R = len(arrays)
        flats = [_float(a) for a in arrays]
        sizes = [int(f.size) for f in flats]
        f = jnp.concatenate(flats) if R else jnp.zeros(0, jnp.float32)
        seg = jnp.asarray(np.repeat(np.arange(R, dtype=np.int32), sizes))

        def total(v: jax.Array) -> jax.Array:
            return jax.ops.segment_sum(v, seg, num_segments=R, indices_are_sorted=True)

        nan, inf = jnp.isnan(f), jnp.isinf(f)
        fin = ~(nan | inf)
        i32 = jnp.int32
        parts = [total(nan.astype(i32)), total(inf.astype(i32)), total((f == 0).astype(i32)), total((f > 0).astype(i32))]
        counts = jnp.stack(parts, axis=1)
        if self.binning is not None:
            n_bins = self.bins + 1  # the last one collects what the histogram does not count
            flat_idx = seg * n_bins + self._bin_index(f, fin)
            hist = jnp.bincount(flat_idx, length=R * n_bins).reshape(R, n_bins)[:, : self.bins]
            counts = jnp.concatenate([counts, hist.astype(i32)], axis=1)
        c = jnp.where(fin, f, 0)
        n = total(fin.astype(i32))
        peak = jax.ops.segment_max(jnp.abs(c), seg, num_segments=R, indices_are_sorted=True)
        # peak = m * 2**e with m in [0.5, 1): dividing by 2**(e-1) is exact (the reference's scale).
        _, e = jnp.frexp(jnp.where(peak > 0, peak, 1))
        exponent = jnp.where(peak > 0, e - 1, 0).astype(i32)
        scale = jnp.ldexp(jnp.ones_like(peak), exponent)
        g = c / scale[seg]
        nf = jnp.maximum(n, 1).astype(f.dtype)
        mean_g = total(g) / nf
        var_g = total(jnp.where(fin, (g - mean_g[seg]) ** 2, 0)) / nf
        mn = jax.ops.segment_min(jnp.where(fin, f, jnp.inf), seg, num_segments=R, indices_are_sorted=True)
        mx = jax.ops.segment_max(jnp.where(fin, f, -jnp.inf), seg, num_segments=R, indices_are_sorted=True)
        none = n == 0
        nul = jnp.array(jnp.nan, f.dtype)
        # Mean, std, abs_mean and l2 stay scaled (l2 of finite float32 values may exceed
        # float32); the host multiplies by 2**exponent in float64.
        moments = jnp.stack(
            [
                jnp.where(none, nul, mean_g),
                jnp.where(none, nul, jnp.sqrt(var_g)),
                jnp.where(none, nul, mn),
                jnp.where(none, nul, mx),
                jnp.where(none, nul, total(jnp.abs(g)) / nf),
                jnp.sqrt(total(g * g)),
            ],
            axis=1,
        )
        counts = jnp.concatenate([counts, exponent[:, None]], axis=1)
        return counts.astype(i32), moments.astype(jnp.float32)

    def _bin_index(self, f: jax.Array, fin: jax.Array) -> jax.Array:
        """Histogram bin of every element; ``bins`` for elements the histogram leaves out."""
        b = self.binning
        n = b.bins
        if b.scheme is HistScheme.SYMLOG:
            per_sign = (n - 3) // 2
            m = jnp.asarray(_edges(b, "float64" if f.dtype == jnp.float64 else "float32"))
            mag = jnp.abs(f)
            # j in [-1, per_sign]: -1 = zero bin (|x| < lo), per_sign = overflow (|x| >= hi).
            j = jnp.searchsorted(m, mag, side="right", method="compare_all") - 1
            j = jnp.where(mag >= m[-1], per_sign, j)
            center = per_sign + 1
            idx = jnp.where(j < 0, center, jnp.where(f < 0, center - 1 - j, center + 1 + j))
        else:
            # Same arithmetic, types and order of operations as the reference (histc semantics).
            v = jnp.abs(f) if b.scheme is HistScheme.ABS_LINEAR else f
            lo, hi = jnp.asarray(b.lo, f.dtype), jnp.asarray(b.hi, f.dtype)
            inside = fin & (v >= lo) & (v <= hi)
            # Barriers keep XLA from reassociating "(v - lo) * n / (hi - lo)" (into a fused
            # multiply-add, or one multiplication): each operation rounds as in the reference.
            shifted = jax.lax.optimization_barrier(jnp.where(inside, v, lo) - lo)
            num, den = jax.lax.optimization_barrier((jnp.asarray(n, f.dtype), hi - lo))
            raw = jnp.floor(jax.lax.optimization_barrier(shifted * num) / den)
            idx = jnp.where(inside, jnp.minimum(raw, n - 1), n)
        return jnp.where(fin, idx, n).astype(jnp.int32)

    # -- host side ----------------------------------------------------------------------
    def decode(self, counts: np.ndarray, moments: np.ndarray) -> dict[str, Any]:
        """Record columns from stacked rows: ``(R, width)`` counts and ``(R, 6)`` moments.

        Returns:
            Column name -> numpy array (floats NaN where the record is null; ``l2`` never
            null) and, with a binning, ``hist_counts`` as an ``(R, bins)`` int64 array.
        """
        out: dict[str, Any] = {name: counts[:, i].astype(np.int64) for i, name in enumerate(_COUNTS)}
        scale = np.ldexp(1.0, counts[:, -1].astype(np.int64))
        for i, name in enumerate(MOMENTS):
            v = moments[:, i].astype(np.float64)
            out[name] = v if name in ("min", "max") else v * scale
        if self.binning is not None:
            out["hist_counts"] = counts[:, len(_COUNTS) : -1].astype(np.int64)
        return out
