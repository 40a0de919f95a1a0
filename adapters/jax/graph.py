"""The ``nodes`` table of a Flax NNX model: module hierarchy, functional activations, data flow.

Module nodes come from :func:`flax.nnx.iter_modules` (the root is node 0 with ``scope = ''``
and its class name as ``name``; a module's ``scope`` is its attribute path joined by dots,
``'blocks.0.mlp'``, as a PyTorch qualified name would be). Functional activations called
between modules (``nnx.relu(self.conv(x))``) become functional nodes named
``'<scope>.<op>_<k>'`` under the enclosing module, as the PyTorch adapter names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flax import nnx

from tracefmt.op_classes import OpClass, classify_op_type

__all__ = ["ModuleTable", "FunctionalNode", "flax_op_class"]

# Flax layers whose class name the shared table would misread.
_FLAX_CLASSES = {
    "Einsum": OpClass.LINEAR,
    "LinearGeneral": OpClass.LINEAR,
    "Embed": OpClass.EMBEDDING,
    "MultiHeadAttention": OpClass.ATTENTION,
}


def flax_op_class(cls: type, *, container: bool) -> OpClass:
    """The op class of a Flax module class (its class name through the shared table)."""
    found = _FLAX_CLASSES.get(cls.__name__)
    if found is not None:
        return found
    return classify_op_type(cls.__name__, container=container)


def _param_count(module: nnx.Module) -> int:
    total = 0
    for value in vars(module).values():
        if isinstance(value, nnx.Param):
            total += int(getattr(value.get_value(), "size", 0))
    return total


@dataclass
class FunctionalNode:
    """A functional activation observed between modules."""

    node_id: int
    name: str
    scope: str
    op: str
    parent: int


@dataclass
class ModuleTable:
    """Node ids, paths and classes of a model's modules.

    Args:
        model: The root module.
    """

    model: nnx.Module
    paths: list[tuple] = field(default_factory=list)
    classes: list[type] = field(default_factory=list)
    leaf: list[bool] = field(default_factory=list)
    param_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Pre-order by path: the root (path ()) first, every module before its children.
        found = sorted(
            nnx.iter_modules(self.model), key=lambda pm: tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in pm[0])
        )
        self.paths = [tuple(p) for p, _ in found]
        self.classes = [type(m) for _, m in found]
        prefixes = {p[:-1] for p in self.paths if p}
        prefixes |= {p[:i] for p in self.paths for i in range(len(p))}
        self.leaf = [p not in prefixes for p in self.paths]
        self.param_counts = [_param_count(m) for _, m in found]
        self.node_of_path = {p: i for i, p in enumerate(self.paths)}
        self.functional: list[FunctionalNode] = []
        self._functional_key: dict[tuple[int, str, int], int] = {}

    def scope(self, node: int) -> str:
        """The dotted attribute path of a module node ('' for the root)."""
        if node < len(self.paths):
            return ".".join(str(p) for p in self.paths[node])
        return self.functional[node - len(self.paths)].name

    def name(self, node: int) -> str:
        """Node name: the scope, or the class name for the root."""
        return self.scope(node) or self.classes[0].__name__

    def parent(self, node: int) -> int | None:
        """The enclosing module's node id (None for the root)."""
        if node == 0:
            return None
        if node >= len(self.paths):
            return self.functional[node - len(self.paths)].parent
        path = self.paths[node]
        for cut in range(len(path) - 1, -1, -1):
            found = self.node_of_path.get(path[:cut])
            if found is not None:
                return found
        return 0

    def modules_of(self, model: nnx.Module) -> dict[int, int]:
        """``id(module) -> node id`` for ``model``, a module with this table's structure."""
        return {id(m): self.node_of_path[tuple(p)] for p, m in nnx.iter_modules(model) if tuple(p) in self.node_of_path}

    def functional_node(self, parent: int, op: str, k: int) -> int:
        """The node id of the ``k``-th call of ``op`` directly inside ``parent`` (created once)."""
        key = (parent, op, k)
        found = self._functional_key.get(key)
        if found is None:
            scope = self.scope(parent)
            name = f"{scope}.{op}_{k}" if scope else f"{op}_{k}"
            found = len(self.paths) + len(self.functional)
            self.functional.append(FunctionalNode(found, name, scope, op, parent))
            self._functional_key[key] = found
        return found

    def rows(self, *, order: dict[int, int], inputs: dict[int, list[str]], outputs: dict[int, list[str]]) -> list[dict[str, Any]]:
        """Rows of the nodes table (modules first, then functional nodes)."""
        rows = []
        for i, cls in enumerate(self.classes):
            container = not self.leaf[i]
            rows.append(
                {
                    "node_id": i,
                    "name": self.name(i),
                    "scope": self.scope(i),
                    "op_type": cls.__name__,
                    "op_class": flax_op_class(cls, container=container).value,
                    "parent": self.parent(i),
                    "container": container,
                    "inputs": [] if container else inputs.get(i, []),
                    "outputs": [] if container else outputs.get(i, []),
                    "attributes": json.dumps({"module": f"{cls.__module__}.{cls.__qualname__}"}),
                    "param_count": self.param_counts[i],
                    "order": order.get(i),
                    "note": None,
                }
            )
        for f in self.functional:
            rows.append(
                {
                    "node_id": f.node_id,
                    "name": f.name,
                    "scope": f.scope,
                    "op_type": f.op,
                    "op_class": classify_op_type(f.op).value,
                    "parent": f.parent,
                    "container": False,
                    "inputs": inputs.get(f.node_id, []),
                    "outputs": outputs.get(f.node_id, []),
                    "attributes": None,
                    "param_count": 0,
                    "order": order.get(f.node_id),
                    "note": "functional activation",
                }
            )
        return rows
