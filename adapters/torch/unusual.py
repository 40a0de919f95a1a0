"""Tensors the statistics cannot take as they are: what the tracer records of them.

The tracer never raises into the training loop because of a tensor: quantized tensors
are summarised through their dequantized values, float8 and other narrow floating types
through float32; sparse (or otherwise non-strided) and complex tensors are skipped; raw
values of empty tensors are not stored. Each such case, and any failure to summarise a
tensor, is reported once per module and reason as a :class:`RuntimeWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

__all__ = ["UnusualTensors"]

#: Dtypes whose values numpy holds exactly (bfloat16 is widened when the raw values are read).
_NUMPY_DTYPES = {
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
}  # fmt: skip
_STAT_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class UnusualTensors:
    """Prepares tensors for the statistics and raw capture; warns once per module and reason.

    Args:
        module_name: Node id -> module name, for the warnings.
    """

    def __init__(self, module_name: Callable[[int], str]) -> None:
        self._name = module_name
        self._warned: set[tuple[int, str]] = set()

    def warn(self, node: int, reason: str) -> None:
        """Warn once for ``node`` and ``reason``."""
        if (node, reason) in self._warned:
            return
        self._warned.add((node, reason))
        warnings.warn(f"tracefmt: module {self._name(node)!r}: {reason}", RuntimeWarning, stacklevel=4)

    def for_stats(self, node: int, t: torch.Tensor) -> torch.Tensor | None:
        """The tensor whose statistics are recorded for ``t``, or None to skip it."""
        if t.layout != torch.strided:
            self.warn(node, f"{t.layout} tensors are not summarised (skipped)")
            return None
        if t.is_quantized:
            return t.dequantize()
        if t.is_complex():
            self.warn(node, f"complex tensors ({t.dtype}) are not summarised (skipped)")
            return None
        if t.is_floating_point() and t.dtype not in _STAT_FLOATS:
            return t.detach().float()  # float8 and other narrow types: exact in float32
        return t

    def for_raw(self, node: int, t: torch.Tensor) -> torch.Tensor | None:
        """A private copy of ``t`` for the tensors table, or None when it cannot be stored."""
        if t.numel() == 0:
            self.warn(node, "raw values of empty tensors are not stored")
            return None
        c = t.detach()
        if c.dtype not in _NUMPY_DTYPES:
            c = c.to(torch.float64 if not c.is_floating_point() else torch.float32)
        return c.clone()

    def failed(self, node: int, kind: str, exc: BaseException) -> None:
        """Report a tensor that could not be summarised (the record is skipped)."""
        self.warn(node, f"{kind} record skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
