"""Statistic rows of CPU tensors, from tracefmt's own reduction (no torch operations).

A CPU tensor is reduced by :func:`tracefmt.reduction.reduce` (the native kernel built
with tracefmt, or its bit-identical numpy twin) on a zero-copy numpy view, and the
result is packed into the row layout of
:class:`~tracefmt.adapters.torch.device_stats.StatKernel`, so that rows of CPU and
accelerator tensors decode alike. One pass over memory, no kernel launches, no
temporaries the size of the tensor (except for float16/bfloat16/integer tensors, which
are widened first, exactly).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tracefmt.reduction import Reduction, reduce

__all__ = ["cpu_row", "pack_row"]


def cpu_row(kernel: Any, f: torch.Tensor) -> torch.Tensor:
    """The row of ``kernel`` (a StatKernel) for a flat float32/float64 CPU tensor ``f``."""
    r = reduce(f.detach().contiguous().numpy(), kernel.binning)
    return torch.from_numpy(pack_row(kernel, r))


def pack_row(kernel: Any, r: Reduction) -> np.ndarray:
    """Pack a :class:`Reduction` into ``kernel``'s row: counts, then the moments of ``c``.

    ``c`` is the tensor with its non-finite elements replaced by 0 (the row convention):
    ``mean_c = mean * n / N`` and ``var_c = (var * n + mean**2 * n * k / N) / N`` for
    ``n`` finite and ``k`` non-finite of ``N`` elements, computed on scaled values so
    that finite statistics near the float64 range never overflow.
    """
    row = np.zeros(kernel.width, dtype=np.float64)
    if kernel.symlog:
        lay = kernel.layout
        m = lay.per_sign
        h = r.hist
        pos_inf = r.inf_count - r.neg_inf_count
        negative_finite = r.numel - r.nan_count - r.zero_count - r.pos_count - r.neg_inf_count
        row[lay.neg_inf], row[lay.pos_inf], row[lay.nan] = r.neg_inf_count, pos_inf, r.nan_count
        row[1 : m + 2] = h[: m + 1]
        row[m + 2] = negative_finite - int(h[: m + 1].sum())  # (-lo, 0)
        row[lay.zero] = r.zero_count
        row[m + 4] = r.pos_count - pos_inf - int(h[m + 2 :].sum())  # (0, lo)
        row[m + 5 : 2 * m + 6] = h[m + 2 :]
    else:
        row[:4] = r.nan_count, r.inf_count, r.zero_count, r.pos_count
        if r.hist is not None:
            row[4 : kernel.counts] = r.hist
    n, big_n = r.finite, r.numel
    at = kernel.counts
    if n == 0:
        row[at : at + 5] = 0.0, 0.0, 0.0, np.nan, np.nan
        return row
    mo = r.moments()
    mean, std = mo["mean"], mo["std"]
    frac = n / big_n
    s = max(abs(mean), std) or 1.0
    row[at] = mean * frac
    row[at + 1] = s * math.sqrt((std / s) ** 2 * frac + (mean / s) ** 2 * frac * (1.0 - frac))
    row[at + 2] = mo["abs_mean"] * n
    row[at + 3], row[at + 4] = mo["min"], mo["max"]
    return row
