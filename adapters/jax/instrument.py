"""Observe a Flax NNX forward pass from inside a traced (jit/grad) function.

While a :class:`Probe` is active, the ``__call__`` of every module class of the model
and the activation functions of ``jax.nn`` (also reached as ``nnx.relu`` ...) are wrapped,
the way :func:`flax.nnx.capture` wraps methods to sow their outputs; everything is restored
on exit, even on error. A leaf module's output, or a functional activation's output inside
a non-leaf module, is an *observation*: its statistics are computed in the trace (so they
run on the device, inside ``jit``) and, for gradients dL/d(output), a zero *perturbation*
is added to it: the gradient of the loss with respect to that perturbation is the gradient
with respect to the output (the perturbation trick of ``nnx.Module.perturb``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .graph import ModuleTable

__all__ = ["Probe", "Slot", "ACTIVATION_FUNCTIONS"]

#: Functional activations observed between modules (names in ``jax.nn``).
ACTIVATION_FUNCTIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "softplus", "mish",
    "sigmoid", "hard_sigmoid", "hard_tanh", "hard_swish", "hard_silu", "log_sigmoid", "soft_sign", "tanh",
    "softmax", "log_softmax",
)  # fmt: skip


@dataclass(frozen=True)
class Slot:
    """One observed output: where it was produced and what it looked like."""

    node_id: int
    call: int
    slot: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def key(self) -> str:
        """Key of its perturbation."""
        return f"{self.node_id}:{self.call}:{self.slot}"


def _slots(value: Any) -> list[tuple[str, Any]]:
    """``(slot, array)`` of every floating array of an output (single array: slot '0')."""
    if isinstance(value, jax.Array) or hasattr(value, "aval"):
        return [("0", value)] if jnp.issubdtype(value.dtype, jnp.floating) else []
    flat, _ = jax.tree_util.tree_flatten_with_path(value)
    out = []
    for path, leaf in flat:
        if (isinstance(leaf, jax.Array) or hasattr(leaf, "aval")) and jnp.issubdtype(leaf.dtype, jnp.floating):
            out.append((".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path), leaf))
    return out


class Probe:
    """Instrumentation of one traced forward pass.

    Args:
        table: The model's module table (functional nodes are added to it on discovery).
        model: The module object the traced function runs (inside ``jit`` a copy of the user's).
        keep: Keep the observed arrays (:attr:`observed`, for statistics); False to only discover slots.
        perturb: Perturbation arrays by :attr:`Slot.key`, or None for no gradients.
    """

    def __init__(self, table: ModuleTable, model: nnx.Module, keep: bool, perturb: dict[str, jax.Array] | None) -> None:
        self.table = table
        self.node_of = table.modules_of(model)
        self.keep = keep
        self.perturb = perturb
        self.slots: list[Slot] = []
        #: The observed arrays, in execution order (with ``keep``).
        self.observed: list[jax.Array] = []
        self.order: dict[int, int] = {}
        self.inputs: dict[int, list[str]] = {}
        self.outputs: dict[int, list[str]] = {}
        self._names: dict[int, tuple[str, Any]] = {}
        self._stack: list[int] = []
        self._calls: dict[int, int] = {}
        self._functional_k: dict[tuple[int, str], int] = {}

    # -- observing ------------------------------------------------------------------------
    def _observe(self, node: int, args: tuple, out: Any) -> Any:
        call = self._calls.get(node, 0)
        self._calls[node] = call + 1
        self.order.setdefault(node, len(self.order))
        ins = self.inputs.setdefault(node, [])
        for leaf in jax.tree_util.tree_leaves(args):
            named = self._names.get(id(leaf))
            if named is not None and named[1] is leaf and named[0] not in ins:
                ins.append(named[0])
        slots = _slots(out)
        if not slots:
            return out
        replaced: dict[int, Any] = {}
        base = self.table.name(node) + (f"#{call}" if call else "")
        for slot, y in slots:
            s = Slot(node, call, slot, tuple(int(d) for d in y.shape), str(y.dtype))
            if self.perturb is not None and s.key in self.perturb:
                y2 = y + self.perturb[s.key].astype(y.dtype)
                replaced[id(y)] = y2
                y = y2
            self.slots.append(s)
            if self.keep:
                self.observed.append(y)
            name = f"{base}:{slot}"
            if call == 0 or name not in self.outputs.get(node, []):
                self.outputs.setdefault(node, []).append(name)
            self._names[id(y)] = (name, y)
        if not replaced:
            return out
        return jax.tree_util.tree_map(lambda leaf: replaced.get(id(leaf), leaf), out)

    def _module_call(self, original: Any) -> Any:
        probe = self

        def __call__(module: nnx.Module, *args: Any, **kwargs: Any) -> Any:
            node = probe.node_of.get(id(module))
            if node is None or (probe._stack and probe._stack[-1] == node):
                # a module of the same class outside the traced model, or super().__call__
                return original(module, *args, **kwargs)
            probe._stack.append(node)
            if len(probe._stack) == 1:
                probe._functional_k.clear()
            try:
                out = original(module, *args, **kwargs)
            finally:
                probe._stack.pop()
            if probe.table.leaf[node] and node != 0:
                return probe._observe(node, (args, kwargs), out)
            return out

        __call__._tracefmt_original = original  # type: ignore[attr-defined]
        return __call__

    def _function(self, op: str, original: Any) -> Any:
        probe = self

        def activation(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            stack = probe._stack
            if not stack or probe.table.leaf[stack[-1]]:
                return out  # outside the model, or inside a leaf module (its output is observed)
            parent = stack[-1]
            k = probe._functional_k.get((parent, op), 0)
            probe._functional_k[(parent, op)] = k + 1
            node = probe.table.functional_node(parent, op, k)
            return probe._observe(node, (args, kwargs), out)

        return activation

    # -- patching ---------------------------------------------------------------------------
    @contextmanager
    def active(self) -> Iterator[Probe]:
        """Wrap the model's module classes and the activation functions while inside."""
        undo: list[tuple[Any, str, Any]] = []
        try:
            # The class that defines __call__ (a container such as nnx.List may have none).
            owners = dict.fromkeys(next((k for k in cls.__mro__ if "__call__" in k.__dict__), None) for cls in self.table.classes)
            for owner in owners:
                if owner is None or owner is object:
                    continue
                original = owner.__dict__["__call__"]
                undo.append((owner, "__call__", original))
                owner.__call__ = self._module_call(original)
            spaces = [jax.nn, nnx]
            for op in ACTIVATION_FUNCTIONS:
                fn = getattr(jax.nn, op, None)
                if fn is None:
                    continue
                wrapped = self._function(op, fn)
                for space in spaces:
                    if getattr(space, op, None) is fn:
                        undo.append((space, op, fn))
                        setattr(space, op, wrapped)
            yield self
        finally:
            for owner, attr, value in reversed(undo):
                setattr(owner, attr, value)
