"""Record statistics computed on the tensor's device, with no host synchronisation.

:class:`StatKernel` turns one tensor into one float64 *row* on the tensor's device (a
handful of kernel launches, no ``.item()``); a step's rows are stacked and copied to the
host once, where :meth:`StatKernel.decode` turns the matrix into record columns. The
result equals :func:`tracefmt.stats.tensor_stats` (tested): counts and histogram bins
exactly, floating statistics to rounding.

Row layout: ``[counts ..., mean_c, std_c, abs_sum_c, min, max]`` where ``c`` is the tensor
with non-finite elements replaced by 0 (the decoder removes their contribution exactly).
For symlog binnings the counts are the extended bins of
:mod:`tracefmt.adapters.torch.binning_tables` (one ``bucketize`` + one :func:`count_bins`);
for linear binnings, or no histogram, they are ``[nan, inf, zero, pos]`` followed by the
histogram.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tracefmt.enums import HistScheme
from tracefmt.histogram import Binning

from .binning_tables import extended_layout, symlog_boundaries
from .cpu_stats import cpu_row

__all__ = ["StatKernel", "as_float", "count_bins", "MOMENTS"]

#: Number of moment columns at the end of each row.
MOMENTS = 5

_HALF = (torch.float16, torch.bfloat16)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``x`` to a 1-D float32/float64 tensor, exactly (integers and bool as float64)."""
    f = x.detach().reshape(-1)
    if f.dtype in (torch.float32, torch.float64):
        return f
    if f.dtype in _HALF:
        return f.float()
    if f.is_complex():
        raise TypeError("complex tensors are not supported")
    return f.to(torch.float64)


def count_bins(idx: torch.Tensor, n: int) -> torch.Tensor:
    """int64 counts of the values ``0 .. n-1`` of ``idx`` (all in range).

    ``torch.bincount`` reads the maximum of ``idx`` on the host to size its output (a
    synchronisation on CUDA); ``index_add_`` into a fixed-size buffer does not.
    """
    out = torch.zeros(n, dtype=torch.int64, device=idx.device)
    return out.index_add_(0, idx, torch.ones(1, dtype=torch.int64, device=idx.device).expand(idx.numel()))


class StatKernel:
    """Compute and decode statistic rows for one binning (or none).

    CPU tensors go through :func:`tracefmt.reduction.reduce` (tracefmt's native kernel:
    one pass, no launches; see :mod:`tracefmt.adapters.torch.cpu_stats`); tensors on
    other devices through a few torch operations on the tensor's device.

    Args:
        binning: The histogram binning, or None for statistics only.
        native: CPU tensors through tracefmt's reduction (None, the default) or through
            the torch operations (False).
    """

    def __init__(self, binning: Binning | None, *, native: bool | None = None) -> None:
        self.binning = binning
        self.symlog = binning is not None and binning.scheme is HistScheme.SYMLOG
        if self.symlog:
            self.layout = extended_layout((binning.bins - 3) // 2)
            self.counts = self.layout.width
        else:
            self.counts = 4 + (binning.bins if binning is not None else 0)
        #: Length of one row.
        self.width = self.counts + MOMENTS
        self._boundaries: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        #: CPU tensors go through tracefmt's reduction (native kernel or numpy twin) unless False.
        self.cpu_reduction = native is not False
        #: Kept for compatibility: the reduction runs on the calling thread.
        self.threads = 1

    @property
    def uses_native(self) -> bool:
        """True when CPU tensors use tracefmt's native kernel."""
        from tracefmt.reduction import native_available

        return self.cpu_reduction and native_available()

    # -- device side ------------------------------------------------------------------
    def _bounds(self, f: torch.Tensor) -> torch.Tensor:
        key = (f.device, f.dtype)
        b = self._boundaries.get(key)
        if b is None:
            name = "float64" if f.dtype == torch.float64 else "float32"
            b = torch.from_numpy(symlog_boundaries(self.binning, name).copy()).to(f.device)
            self._boundaries[key] = b
        return b

    def row(self, x: torch.Tensor) -> torch.Tensor:
        """One float64 row of statistics for ``x``, on ``x``'s device (no synchronisation)."""
        f = as_float(x)
        if f.numel() == 0:
            row = torch.zeros(self.width, dtype=torch.float64, device=f.device)
            row[-2:] = float("nan")
            return row
        if self.cpu_reduction and f.device.type == "cpu":
            return cpu_row(self, f)
        fin = torch.isfinite(f)
        if self.symlog:
            idx = torch.bucketize(f, self._bounds(f), out_int32=True, right=False)
            counts = count_bins(idx, self.counts)
        else:
            counts = self._linear_counts(f, fin)
        c = torch.where(fin, f, 0)
        # std (not var) in the tensor's type: it cannot overflow where the values don't.
        std, mean = torch.std_mean(c, correction=0)
        moments = torch.stack(
            [
                mean.to(torch.float64),
                std.to(torch.float64),
                c.abs().sum(dtype=torch.float64),
                torch.where(fin, f, float("inf")).amin().to(torch.float64),
                torch.where(fin, f, float("-inf")).amax().to(torch.float64),
            ]
        )
        return torch.cat([counts.to(torch.float64), moments])

    def _linear_counts(self, f: torch.Tensor, fin: torch.Tensor) -> torch.Tensor:
        basic = torch.stack([torch.isnan(f).sum(), torch.isinf(f).sum(), (f == 0).sum(), (f > 0).sum()])
        if self.binning is None:
            return basic
        b = self.binning
        # Same arithmetic, types and order of operations as the reference (histc semantics).
        v = f.abs() if b.scheme is HistScheme.ABS_LINEAR else f
        np_t = np.float64 if v.dtype == torch.float64 else np.float32
        lo, hi, n = np_t(b.lo), np_t(b.hi), b.bins
        inside = fin & (v >= float(lo)) & (v <= float(hi))
        idx = torch.floor((v - float(lo)) * float(np_t(n)) / float(hi - lo))
        idx = torch.where(inside, idx.clamp(max=n - 1), n).to(torch.int64)
        hist = count_bins(idx, n + 1)[:n]
        return torch.cat([basic, hist])

    # -- host side --------------------------------------------------------------------
    def decode(self, rows: np.ndarray, numel: np.ndarray) -> dict[str, Any]:
        """Turn stacked rows into record columns.

        Args:
            rows: ``(R, width)`` float64 rows, as produced by :meth:`row`.
            numel: ``(R,)`` element counts of the observed tensors.

        Returns:
            Column name -> numpy array (float columns hold NaN where the record is null)
            and ``hist_counts`` as an ``(R, bins)`` int64 array (absent without binning).
        """
        counts = rows[:, : self.counts]
        out: dict[str, Any] = {}
        if self.symlog:
            lay = self.layout
            nan = counts[:, lay.nan]
            inf = counts[:, lay.neg_inf] + counts[:, lay.pos_inf]
            zero = counts[:, lay.zero]
            pos = counts[:, lay.positive].sum(axis=1)
            if self.binning is not None:
                out["hist_counts"] = lay.histogram(counts).astype(np.int64)
        else:
            nan, inf, zero, pos = counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3]
            if self.binning is not None:
                out["hist_counts"] = counts[:, 4:].astype(np.int64)
        big_n = numel.astype(np.float64)
        k = nan + inf
        n = big_n - k
        mean_c, std_c, abs_sum, mn, mx = (rows[:, self.counts + i] for i in range(MOMENTS))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            # c holds k zeros in place of the non-finite elements: undo them exactly
            # (parallel-variance combination of the finite part with k zeros), on values
            # scaled by s so that statistics near the float64 range do not overflow.
            ratio = big_n / n
            mean = mean_c * ratio
            s = np.maximum(np.abs(mean), np.abs(std_c))
            s = np.where((s > 0) & np.isfinite(s), s, 1.0)
            var_s = (std_c / s) ** 2 * ratio - (mean / s) ** 2 * (k / big_n)
            none = n == 0
            out["mean"] = np.where(none, np.nan, mean)
            out["std"] = np.where(none, np.nan, s * np.sqrt(np.maximum(var_s, 0.0)))
            out["abs_mean"] = np.where(none, np.nan, abs_sum / n)
            # sum of c^2 = N * (var_c + mean_c^2): the finite elements' squares.
            out["l2"] = np.where(none, 0.0, np.sqrt(big_n) * np.hypot(mean_c, std_c))
            out["min"] = np.where(none, np.nan, mn)
            out["max"] = np.where(none, np.nan, mx)
        out.update(
            numel=numel.astype(np.int64),
            nan_count=nan.astype(np.int64),
            inf_count=inf.astype(np.int64),
            zero_count=zero.astype(np.int64),
            pos_count=pos.astype(np.int64),
        )
        return out
