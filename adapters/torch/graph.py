"""The ``nodes`` table of a PyTorch model: module hierarchy plus observed data flow.

Module nodes come from ``named_modules()`` (pre-order, so node ids are stable for a given
model): the root is node 0 with ``scope = ''`` and ``name`` = its class name; modules with
children are containers. Edges are discovered during one forward pass: leaf modules name
their output tensors (``'<qualname>:<slot>'``, ``'<qualname>#<call>:<slot>'`` for later
calls), and a :class:`torch.overrides.TorchFunctionMode` records every torch function
called *between* modules (residual ``add``, ``cat``, ``view``, ``getitem``, attention
``matmul`` ...) as a functional node whose scope is the enclosing module. A tensor's name
is replaced when an in-place op rewrites it, so each name has exactly one producer.

Modules with a fused fast path (``nn.MultiheadAttention``, ``nn.TransformerEncoder``) take
it only when no torch-function mode is active, so the recording mode is suspended while
they run and they are recorded as one unit (like a leaf, traced by default): tracing does
not move them off the fused kernels or change their outputs. ``nn.TransformerEncoderLayer``
refuses its fast path whenever any hook is attached to it, so a traced one runs its
unfused path (:data:`HOOKS_BLOCK_FAST_PATH`; the trace's manifest says so).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .op_classes import functional_op_class, module_op_class
from .slots import tensor_slots

__all__ = ["ModuleIndex", "GraphRecorder", "module_attributes", "FUSED_FAST_PATH", "HOOKS_BLOCK_FAST_PATH"]

#: Module types whose eval forward takes a fused kernel unless a torch-function mode is active.
FUSED_FAST_PATH: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.TransformerEncoder)
#: Module types whose fused fast path is refused whenever a forward hook is attached.
HOOKS_BLOCK_FAST_PATH: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer,)


class ModuleIndex:
    """Node ids, names and parents of a model's modules (one node per module object).

    Args:
        model: The root module.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules: list[tuple[str, nn.Module]] = list(model.named_modules())
        self.node_of: dict[int, int] = {id(m): i for i, (_, m) in enumerate(self.modules)}
        self.qualname = {i: q for i, (q, _) in enumerate(self.modules)}
        self.parent: dict[int, int | None] = {0: None}
        for i, (q, _) in enumerate(self.modules[1:], start=1):
            head = q.rpartition(".")[0]
            self.parent[i] = self._id_of_name(head)
        self.leaf = {i: next(m.children(), None) is None for i, (_, m) in enumerate(self.modules)}
        #: Recorded as one data-flow unit: leaves, and modules with a fused fast path.
        self.unit = {i: self.leaf[i] or isinstance(m, FUSED_FAST_PATH) for i, (_, m) in enumerate(self.modules)}

    def _id_of_name(self, qualname: str) -> int:
        for i, (q, _) in enumerate(self.modules):
            if q == qualname:
                return i
        return 0

    def name(self, node_id: int) -> str:
        """Node name: the qualified name, or the class name for the root."""
        q = self.qualname[node_id]
        return q if q else type(self.modules[node_id][1]).__name__

    def __len__(self) -> int:
        return len(self.modules)


def module_attributes(module: nn.Module) -> str | None:
    """JSON of a module's simple public attributes (kernel_size, stride, eps, ...)."""
    attrs: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, (bool, int, float, str)) or (
            isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value)
        ):
            attrs[key] = list(value) if isinstance(value, (tuple, list)) else value
    return json.dumps(attrs, sort_keys=True) if attrs else None


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.strip("_") or name


def _tensors_in(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors_in(v, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v, depth + 1)


class _FunctionalMode(TorchFunctionMode):
    def __init__(self, recorder: GraphRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.recorder._functional(func, args, kwargs, out)
        return out


class GraphRecorder:
    """Records the data flow of one forward pass; :meth:`rows` builds the nodes table.

    Attach with :meth:`attach` before a forward and :meth:`detach` after it (the tracer
    does both, hooks removed even if the forward raises).

    Args:
        index: The model's :class:`ModuleIndex`.
    """

    def __init__(self, index: ModuleIndex) -> None:
        self.index = index
        n = len(index)
        self.inputs: dict[int, list[str]] = {i: [] for i in range(n)}
        self.outputs: dict[int, list[str]] = {i: [] for i in range(n)}
        self.order: dict[int, int] = {}
        self.calls: dict[int, int] = {}
        self.functional: list[dict[str, Any]] = []
        # id -> (weak reference, name): a tensor is matched only while it is alive, so the
        # recorder never extends the life of an activation (ids of dead tensors are reused).
        self._names: dict[int, tuple[weakref.ref, str]] = {}
        self._stack: list[int] = []
        self._leaf_depth = 0
        self._paused = 0
        self._counter: dict[tuple[str, str], int] = {}
        self._handles: list[Any] = []
        self._mode: _FunctionalMode | None = None
        self._suspended: int | None = None
        #: Record at the next forward of the root (set by the owner).
        self.armed = False
        self.done = False
        #: Called with the recorder when a recorded forward completes.
        self.on_done: Any = None

    # -- attach / detach --------------------------------------------------------------
    def attach(self) -> None:
        """Register the recording hooks on every module of the model."""
        for i, (_, m) in enumerate(self.index.modules):
            self._handles.append(m.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post(i), with_kwargs=True, always_call=True))

    def detach(self) -> None:
        """Remove every hook and leave the functional mode if a forward failed inside it."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._mode is not None and self._suspended is None:
            self._mode.__exit__(None, None, None)
        self._mode = None
        self._suspended = None
        self._names.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Ignore torch functions called meanwhile (the tracer's own statistics)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # -- naming -----------------------------------------------------------------------
    def _name_of(self, t: torch.Tensor) -> str | None:
        entry = self._names.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _set_name(self, t: torch.Tensor, name: str) -> None:
        self._names[id(t)] = (weakref.ref(t), name)

    def _add_inputs(self, node: int, values: Any) -> None:
        for t in _tensors_in(values):
            name = self._name_of(t)
            if name is not None and name not in self.inputs[node]:
                self.inputs[node].append(name)

    def _mark(self, node: int) -> None:
        if node not in self.order:
            self.order[node] = len(self.order)

    # -- hooks ------------------------------------------------------------------------
    def _pre(self, node: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._paused or not (self.armed or self._stack) or self.done:
                return
            if node == 0 and not self._stack:
                for slot, t in tensor_slots(args):
                    self._set_name(t, f"input:{slot}")
                for slot, t in tensor_slots(kwargs):
                    self._set_name(t, f"input:{slot}")
                self._mode = _FunctionalMode(self)
                self._mode.__enter__()
            self._stack.append(node)
            self._mark(node)
            if self.index.unit[node] and self._leaf_depth == 0:
                self._add_inputs(node, (args, kwargs))
                if not self.index.leaf[node] and self._mode is not None and self._suspended is None:
                    # Leave the mode so that the module's fast-path check sees no torch function.
                    self._mode.__exit__(None, None, None)
                    self._suspended = node
            if self.index.unit[node]:
                self._leaf_depth += 1

        return hook

    def _post(self, node: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self._paused or not self._stack or self._stack[-1] != node:
                return
            self._stack.pop()
            call = self.calls.get(node, 0)
            self.calls[node] = call + 1
            if self.index.unit[node]:
                self._leaf_depth -= 1
                if self._suspended == node and self._mode is not None:
                    self._mode.__enter__()
                    self._suspended = None
                if self._leaf_depth == 0:
                    base = self.index.name(node) + (f"#{call}" if call else "")
                    for slot, t in tensor_slots(output):
                        name = f"{base}:{slot}"
                        self._set_name(t, name)
                        self.outputs[node].append(name)
            if node == 0 and not self._stack:
                if self._mode is not None:
                    self._mode.__exit__(None, None, None)
                    self._mode = None
                self.done = True
                self.armed = False
                try:
                    if self.on_done is not None:
                        self.on_done(self)
                finally:
                    # Nothing from discovery outlives the recorded forward: the named
                    # tensors (activations of the whole pass) and the hooks on every
                    # module are released as soon as the graph is known.
                    self.detach()

        return hook

    def _functional(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if self._paused or self._leaf_depth or not self._stack:
            return
        inputs = [n for n in (self._name_of(t) for t in _tensors_in((args, kwargs))) if n is not None]
        outs = list(tensor_slots(out))
        if not inputs or not outs:
            return
        enclosing = self._stack[-1]
        scope = self.index.qualname[enclosing]
        op = _op_name(func)
        k = self._counter.get((scope, op), 0)
        self._counter[(scope, op)] = k + 1
        name = f"{scope}.{op}_{k}" if scope else f"{op}_{k}"
        out_names = []
        for slot, t in outs:
            tname = f"{name}:{slot}"
            self._set_name(t, tname)
            out_names.append(tname)
        self.functional.append(
            {
                "name": name,
                "scope": scope,
                "op_type": op,
                "op_class": functional_op_class(op, len(set(inputs))).value,
                "parent": enclosing,
                "inputs": list(dict.fromkeys(inputs)),
                "outputs": out_names,
            }
        )
        self.order[-len(self.functional)] = len(self.order)

    # -- result -----------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Rows of the nodes table: modules first (node id = pre-order index), then functional nodes."""
        idx = self.index
        rows = []
        for i, (_, m) in enumerate(idx.modules):
            rows.append(
                {
                    "node_id": i,
                    "name": idx.name(i),
                    "scope": idx.qualname[i],
                    "op_type": type(m).__name__,
                    "op_class": module_op_class(m, container=not idx.leaf[i]).value,
                    "parent": idx.parent[i],
                    "container": not idx.leaf[i],
                    "inputs": self.inputs[i] if idx.unit[i] else [],
                    "outputs": self.outputs[i] if idx.unit[i] else [],
                    "attributes": module_attributes(m),
                    "param_count": sum(p.numel() for p in m.parameters(recurse=False)),
                    "order": self.order.get(i),
                    "note": None,
                }
            )
        n = len(idx)
        for k, f in enumerate(self.functional):
            rows.append(
                {
                    "node_id": n + k,
                    "name": f["name"],
                    "scope": f["scope"],
                    "op_type": f["op_type"],
                    "op_class": f["op_class"],
                    "parent": f["parent"],
                    "container": False,
                    "inputs": f["inputs"],
                    "outputs": f["outputs"],
                    "attributes": None,
                    "param_count": 0,
                    "order": self.order.get(-(k + 1)),
                    "note": "functional op between modules",
                }
            )
        return rows
