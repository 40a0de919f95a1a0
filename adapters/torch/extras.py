"""Optional per-tensor vectors computed on the device: channels, matrix statistics, median.

Each function returns a float64 vector on the tensor's device without synchronising;
the definitions are those of :func:`tracefmt.stats.channel_stats`,
:func:`tracefmt.stats.matrix_stats` and the ``median`` column of
:func:`tracefmt.stats.tensor_stats`.
"""

from __future__ import annotations

import numpy as np
import torch

from tracefmt.reduction import channel_sums

from .device_stats import as_float

__all__ = ["channel_vector", "matrix_vector", "median_vector"]


def channel_vector(x: torch.Tensor, axis: int, *, native: bool = True) -> torch.Tensor:
    """``[pos_frac (C), mean (C)]`` along ``axis``: fraction > 0 and mean of the finite elements.

    Args:
        x: The tensor.
        axis: The channel axis.
        native: CPU tensors through tracefmt's native kernel (the statistics kernel's
            ``cpu_reduction`` setting); False keeps them on the torch operations every
            other device uses. Defaults to True.
    """
    v = x.detach()
    if native and v.device.type == "cpu":
        # tracefmt's own kernel: one pass, no temporaries the size of the tensor.
        f = v if v.dtype in (torch.float32, torch.float64) else v.float() if v.is_floating_point() else v.to(torch.float64)
        r = channel_sums(f.contiguous().numpy(), axis % max(f.ndim, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return torch.from_numpy(np.concatenate([r.positive / r.size, r.sums / r.finite]))
    if not (v.is_floating_point() or v.dtype == torch.float64):
        v = v.to(torch.float64)
    moved = v.movedim(axis, 0).reshape(v.shape[axis], -1)
    per = moved.shape[1]
    pos = (moved > 0).sum(dim=1, dtype=torch.float64) / per
    fin = torch.isfinite(moved)
    total = torch.where(fin, moved, 0).sum(dim=1, dtype=torch.float64)
    mean = total / fin.sum(dim=1)  # 0/0 = NaN for channels without finite elements
    return torch.cat([pos, mean])


def matrix_vector(w: torch.Tensor) -> torch.Tensor:
    """``[trace, spectral norm, mean, variance of the singular values]`` of a 2-D weight.

    Computed in float64; all NaN if the matrix has non-finite elements (then null in the
    record, as the reference defines).
    """
    a = w.detach().to(torch.float64)
    fin = torch.isfinite(a).all()
    a = torch.where(torch.isfinite(a), a, 0)
    sv = torch.linalg.svdvals(a)
    out = torch.stack([torch.diagonal(a).sum(), sv[0], sv.mean(), sv.var(correction=0)])
    return torch.where(fin, out, float("nan"))


def median_vector(x: torch.Tensor) -> torch.Tensor:
    """``[lower median of the finite elements]`` (NaN if none), without a host round-trip."""
    f = as_float(x)
    fin = torch.isfinite(f)
    ordered = torch.sort(torch.where(fin, f, float("inf"))).values
    n = fin.sum()
    k = ((n - 1).clamp(min=0) // 2).reshape(1)
    med = ordered.gather(0, k).to(torch.float64)
    return torch.where(n > 0, med, float("nan"))
