"""The module hierarchy of a trace's nodes, as nested clusters that can be collapsed.

Clusters come from the nodes table's container nodes (``parent`` links) when the trace has
any (PyTorch traces), and otherwise from the dotted ``scope`` paths (ONNX traces, whose
nodes carry the PyTorch module qualified name recovered from the exporter). A single
top-level cluster that encloses every node is the model itself: it is not drawn as a box
and does not count as a level of depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cluster", "Hierarchy", "build_hierarchy"]


@dataclass
class Cluster:
    """A group of nodes drawn as one box (or folded into one node when collapsed).

    Attributes:
        key: Identifier, unique within the hierarchy.
        label: Text drawn on the box (the module's name).
        op_type: The module class, when known (container nodes).
        parent: Key of the enclosing cluster, None at the top.
        depth: Number of enclosing drawn clusters (0 for top-level ones).
        node_id: The container node's id, when the cluster comes from one.
    """

    key: str
    label: str
    op_type: str = ""
    parent: str | None = None
    depth: int = 0
    node_id: int | None = None
    children: list[str] = field(default_factory=list)


@dataclass
class Hierarchy:
    """Clusters and the cluster each drawable (non-container) node sits in directly.

    Attributes:
        clusters: key -> cluster, parents before children.
        member_of: node_id -> key of the innermost cluster holding it (absent at top level).
        root: The model's enclosing cluster that is not drawn, if any.
    """

    clusters: dict[str, Cluster] = field(default_factory=dict)
    member_of: dict[int, str] = field(default_factory=dict)
    root: Cluster | None = None

    @property
    def max_depth(self) -> int:
        """Deepest cluster level (-1 when there are no clusters)."""
        return max((c.depth for c in self.clusters.values()), default=-1)

    def chain(self, node_id: int) -> list[str]:
        """Keys of the clusters enclosing ``node_id``, outermost first."""
        keys = []
        key = self.member_of.get(node_id)
        while key is not None:
            keys.append(key)
            key = self.clusters[key].parent
        return keys[::-1]

    def collapsed_at(self, node_id: int, depth: int | None) -> str | None:
        """The cluster ``node_id`` folds into when clusters deeper than ``depth`` are collapsed."""
        if depth is None:
            return None
        for key in self.chain(node_id):
            if self.clusters[key].depth >= depth:
                return key
        return None


def _from_containers(rows: Sequence[dict[str, Any]]) -> Hierarchy:
    h = Hierarchy()
    containers = {r["node_id"]: r for r in rows if r["container"]}
    for nid, r in containers.items():
        h.clusters[str(nid)] = Cluster(
            key=str(nid),
            label=r["name"] or r["op_type"] or str(nid),
            op_type=r["op_type"] or "",
            parent=str(r["parent"]) if r["parent"] in containers else None,
            node_id=nid,
        )
    for r in rows:
        if not r["container"] and r["parent"] in containers:
            h.member_of[r["node_id"]] = str(r["parent"])
    return h


def _from_scopes(rows: Sequence[dict[str, Any]]) -> Hierarchy:
    h = Hierarchy()
    scopes = [r["scope"] or "" for r in rows if not r["container"]]
    prefixes: set[str] = set()
    for s in scopes:
        parts = s.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    counts: dict[str, int] = {}
    for s in scopes:
        counts[s] = counts.get(s, 0) + 1
    for r in rows:
        s = r["scope"] or ""
        if r["container"] or not s:
            continue
        # A scope that encloses other scopes, or that several nodes share (a module lowered
        # to several ops), is a cluster of its own; otherwise the node sits in its parent.
        home = s if (s in prefixes or counts[s] > 1) else s.rpartition(".")[0]
        if home:
            h.member_of[r["node_id"]] = home
    needed = set(h.member_of.values())
    for key in list(needed):
        parts = key.split(".")
        needed.update(".".join(parts[:i]) for i in range(1, len(parts)))
    for key in sorted(needed, key=lambda k: (k.count("."), k)):
        parent = key.rpartition(".")[0] or None
        h.clusters[key] = Cluster(key=key, label=key, parent=parent if parent in needed else None)
    return h


def build_hierarchy(rows: Sequence[dict[str, Any]]) -> Hierarchy:
    """Build the cluster hierarchy of the nodes table ``rows`` (dicts, as ``to_pylist()`` gives).

    Args:
        rows: Node rows with ``node_id``, ``name``, ``scope``, ``op_type``, ``parent`` and
            ``container``.

    Returns:
        The hierarchy, with depths assigned and the undrawn model root removed.
    """
    h = _from_containers(rows) if any(r["container"] for r in rows) else _from_scopes(rows)
    for c in h.clusters.values():
        if c.parent is not None:
            h.clusters[c.parent].children.append(c.key)
    tops = [c for c in h.clusters.values() if c.parent is None]
    leaves = [r["node_id"] for r in rows if not r["container"]]
    if len(tops) == 1 and leaves and all(h.member_of.get(n) is not None for n in leaves):
        root = tops[0]
        h.root = root
        del h.clusters[root.key]
        for c in h.clusters.values():
            if c.parent == root.key:
                c.parent = None
        for n, key in list(h.member_of.items()):
            if key == root.key:
                del h.member_of[n]
    ordered: dict[str, Cluster] = {}

    def visit(c: Cluster, depth: int) -> None:
        c.depth = depth
        ordered[c.key] = c
        for k in c.children:
            if k in h.clusters:
                visit(h.clusters[k], depth + 1)

    for c in [c for c in h.clusters.values() if c.parent is None]:
        visit(c, 0)
    h.clusters = ordered
    return h
