"""One side of a trace diff: a trace's nodes and activation records, ready to join.

A side is *module-level* when each scope has one node observed once per call (a
PyTorch trace) and *op-level* when a scope spans several operator nodes (an ONNX trace:
one module becomes Conv, or MatMul + Add, or a dozen ops). Op-level sides also give the
data-flow graph (tensor names), used to find which compared tensors feed which.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracefmt.errors import UsageError
from tracefmt.op_classes import node_op_classes

__all__ = ["Node", "Side", "load_side", "RECORD_COLUMNS"]

#: Record columns a diff reads.
RECORD_COLUMNS = ["step", "phase", "node_id", "kind", "slot", "call", "seq", "dtype", "shape", "numel",
                  "nan_count", "inf_count", "mean", "std", "min", "max", "abs_mean", "l2"]  # fmt: skip

_PHASE_PREFERENCE = ("eval", "infer", "train")


@dataclass
class Node:
    """A row of a trace's nodes table (the fields the diff uses)."""

    node_id: int
    name: str
    scope: str
    op_type: str
    container: bool
    inputs: list[str]
    outputs: list[str]
    order: int
    op_class: str = "other"


@dataclass
class Side:
    """One trace of a diff.

    Attributes:
        label: 'a' or 'b'.
        trace: The opened trace.
        phase: The phase compared.
        nodes: node_id -> Node.
        records: (node_id, slot, call) -> step -> record dict (activation records).
        op_level: True for operator graphs (several nodes per scope).
    """

    label: str
    trace: Any
    phase: str
    nodes: dict[int, Node]
    records: dict[tuple[int, str, int], dict[int, dict[str, Any]]]
    op_level: bool
    _producer: dict[str, int] = field(default_factory=dict)
    _consumers: dict[str, list[int]] = field(default_factory=dict)
    _values: dict[tuple[int, str, int, int], np.ndarray] | None = None

    @property
    def steps(self) -> list[int]:
        """Steps with activation records, ascending."""
        return sorted({s for per_step in self.records.values() for s in per_step})

    def producer(self, tensor: str) -> int | None:
        """node_id producing ``tensor`` (op-level sides), or None for graph inputs."""
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[int]:
        """node_ids reading ``tensor``."""
        return self._consumers.get(tensor, [])

    def values(self, node_id: int, slot: str, call: int, step: int) -> np.ndarray | None:
        """Raw values of one observation if the trace stored them."""
        if self._values is None:
            self._values = {}
            if self.trace.has("tensors"):
                for key, arr in self.trace.tensors(kinds=["activation"], phases=[self.phase]):
                    self._values[(int(key["node_id"]), str(key["slot"]), int(key["call"]), int(key["step"]))] = arr
        return self._values.get((node_id, slot, call, step))


def _pick_phase(trace: Any, phase: str | None) -> str:
    table = trace.read(columns=["phase"], kinds=["activation"])
    phases = sorted(set(table.column("phase").to_pylist()))
    if not phases:
        raise UsageError(f"{trace.path}: no activation records to compare")
    if phase is not None:
        if phase not in phases:
            raise UsageError(f"{trace.path}: no activation records in phase {phase!r}; phases present: {', '.join(phases)}")
        return phase
    for p in _PHASE_PREFERENCE:
        if p in phases:
            return p
    return phases[0]


def load_side(trace: Any, label: str, *, phase: str | None = None, steps: list[int] | None = None) -> Side:
    """Read what the diff needs from ``trace``.

    Args:
        trace: An opened :class:`tracefmt.Trace`.
        label: 'a' or 'b'.
        phase: Phase to compare; None picks eval, else infer, else train.
        steps: Steps to read; None reads all.
    """
    phase = _pick_phase(trace, phase)
    n = trace.nodes
    nodes: dict[int, Node] = {}
    rows = n.select(["node_id", "name", "scope", "op_type", "container", "inputs", "outputs", "order"]).to_pylist()
    stated = n.column("op_class").to_pylist() if "op_class" in n.schema.names else [None] * len(rows)
    classes, _ = node_op_classes(stated, [r["op_type"] for r in rows], [bool(r["container"]) for r in rows])
    for row, op_class in zip(rows, classes):
        nodes[row["node_id"]] = Node(
            row["node_id"], row["name"], row["scope"] or "", row["op_type"], bool(row["container"]),
            list(row["inputs"] or []), list(row["outputs"] or []), row["order"] if row["order"] is not None else row["node_id"],
            str(op_class),
        )  # fmt: skip
    available = trace.records.schema.names
    cols = [c for c in RECORD_COLUMNS if c in available]
    step_range = (min(steps), max(steps)) if steps else None
    table = trace.read(columns=cols, kinds=["activation"], phases=[phase], steps=step_range)
    records: dict[tuple[int, str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for rec in table.to_pylist():
        if steps is not None and rec["step"] not in steps:
            continue
        records[(rec["node_id"], str(rec["slot"]), int(rec["call"]))][int(rec["step"])] = rec
    side = Side(label, trace, phase, nodes, dict(records), op_level=False)
    side.op_level = _is_op_level(trace, nodes, records)
    if side.op_level:
        for node in sorted(nodes.values(), key=lambda x: x.order):
            if node.container:
                continue
            for t in node.outputs:
                side._producer.setdefault(t, node.node_id)
            for t in node.inputs:
                side._consumers.setdefault(t, []).append(node.node_id)
    return side


def _is_op_level(trace: Any, nodes: dict[int, Node], records: dict) -> bool:
    """Op-level: produced by an operator-graph adapter, or a scope spans several observed nodes."""
    producer = trace.manifest.get("producer", {}) or {}
    framework = str(producer.get("framework", "")).lower()
    if framework == "onnxruntime":
        return True
    if framework in ("torch", "pytorch"):
        return False
    observed = {k[0] for k in records}
    per_scope: dict[str, int] = defaultdict(int)
    for nid in observed:
        node = nodes.get(nid)
        if node is not None and not node.container and node.scope:
            per_scope[node.scope] += 1
    return any(c > 1 for c in per_scope.values())
