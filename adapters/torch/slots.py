"""Naming the tensors inside a module's inputs or outputs (the record's ``slot``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["tensor_slots"]


def tensor_slots(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(slot, tensor)`` for every tensor in a (nested) output, skipping the rest.

    A single tensor is slot ``'0'``; tuple/list items are their index; mapping items
    (dicts, ``transformers`` model outputs) their key; nesting joins with ``'.'``
    (``'1.0'``). Non-tensor values (None, ints, caches) are skipped.

    Args:
        value: A module's output (or its positional arguments).
        prefix: Slot prefix used for nested values. Defaults to ''.
    """
    if isinstance(value, torch.Tensor):
        yield (prefix or "0"), value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _nested(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _nested(item, f"{prefix}.{i}" if prefix else str(i))


def _nested(value: Any, slot: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield slot, value
    elif isinstance(value, (Mapping, tuple, list)):
        yield from tensor_slots(value, slot)
