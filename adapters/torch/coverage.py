"""What a module with children adds to what its children already show.

By default every module is traced. A module with children is a container of others, but
it may hold parameters directly (a class token, LayerScale's gamma, a relative position
bias table) and compute an output of its own (the residual sum of a block, attention's
output projection done functionally). Its output slots are recorded only when the tensor
is not the output of a module that ran inside it: a container that just returns its last
child's output adds no record.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["ModuleOutputs"]


class ModuleOutputs:
    """The tensors traced modules returned during the current forward (weak references).

    Weak references: the tracer never keeps an activation alive longer than the model does.
    """

    def __init__(self) -> None:
        self._seen: dict[int, weakref.ref] = {}

    def clear(self) -> None:
        """Forget every tensor (a new forward of the root begins)."""
        self._seen.clear()

    def add(self, t: torch.Tensor) -> None:
        """Remember that a module returned ``t``."""
        try:
            self._seen[id(t)] = weakref.ref(t)
        except TypeError:  # pragma: no cover - every torch.Tensor supports weak references
            pass

    def returned(self, t: torch.Tensor) -> bool:
        """True if a module already returned this very tensor in the current forward."""
        ref = self._seen.get(id(t))
        return ref is not None and ref() is t
