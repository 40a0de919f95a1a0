"""Choosing the modules to trace (hook points) from glob patterns and module types."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from tracefmt.errors import UsageError

from .graph import ModuleIndex

__all__ = ["as_patterns", "matches", "select_modules", "channel_axis"]


def as_patterns(value: str | Sequence[str] | None) -> list[str] | None:
    """Normalise a glob option: a string, a list of strings, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def matches(qualname: str, patterns: list[str] | None) -> bool:
    """True if ``qualname`` matches any of ``patterns`` (fnmatch, case-sensitive)."""
    return bool(patterns) and any(fnmatchcase(qualname, p) for p in patterns)


def select_modules(
    index: ModuleIndex,
    *,
    modules: str | Sequence[str] | None = None,
    module_types: tuple[type[nn.Module], ...] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[int]:
    """Node ids of the modules to trace.

    Without ``modules`` and ``module_types`` every module is traced: leaf modules (no
    children) whole, and modules with children for what their children do not show (the
    parameters they hold directly, an output that is not a child's output; see
    :class:`~tracefmt.adapters.torch.TorchTracer`), so every parameter and every module
    output is observed. With either, a module must satisfy each one given (qualified-name glob patterns;
    ``isinstance`` of the types); ``exclude`` patterns then remove modules.

    Raises:
        UsageError: Nothing is selected.
    """
    pats, excl = as_patterns(modules), as_patterns(exclude)
    chosen = []
    for node, (qualname, module) in enumerate(index.modules):
        if pats is None and module_types is None:
            ok = True
        else:
            ok = (pats is None or matches(qualname, pats)) and (module_types is None or isinstance(module, module_types))
        if ok and not matches(qualname, excl):
            chosen.append(node)
    if not chosen:
        names = ", ".join(index.name(i) for i in range(min(len(index), 8)))
        raise UsageError(f"no module matches modules={pats!r}, module_types={module_types!r}, exclude={excl!r}; modules are: {names}, ...")
    return chosen


def channel_axis(module: nn.Module, ndim: int) -> int:
    """The channel axis of a module's output: 1 for convolution/batch-norm and 2-D outputs, else the last."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

    if ndim == 2 or isinstance(module, (_ConvNd, _BatchNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
        return 1
    return ndim - 1
