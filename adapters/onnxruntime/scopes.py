"""Recover the PyTorch module scope of ONNX nodes from the exporter's naming.

The ``scope`` column joins an ONNX trace to the PyTorch trace of the same model, so it
must be the PyTorch module's qualified name (``'layer1.0.conv1'``). Two exporters name
nodes differently:

* the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default of current
  PyTorch) stores the module path in the node's ``metadata_props`` under
  ``pkg.torch.onnx.name_scopes``: a Python list literal such as
  ``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`` whose last entry is the
  FX operation and the entry before it the innermost module;
* the TorchScript exporter (``dynamo=False``) names nodes by their module path, one path
  segment per module and the operation last: ``/layer1/layer1.0/conv1/Conv``. A module
  called several times gets ``_<n>`` appended for calls after the first
  (``/layer1/relu_1/Relu``); such a suffix is removed when the path without it names a
  module seen elsewhere in the same graph. A child of a ``Sequential`` or ``ModuleList``
  is named ``<container>.<index>`` relative to the container's parent, so a segment
  that repeats the tail of the path so far overlaps it instead of extending it:
  ``/encoder/stages.0/layer/layer.0/conv/Conv`` is ``encoder.stages.0.layer.0.conv``.

Nodes with neither keep the empty scope.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["NAME_SCOPES_KEY", "dynamo_scope", "torchscript_path", "recover_scopes"]

#: metadata_props key written by the dynamo exporter.
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

_CALL_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<n>\d+)$")


def _join(parent: str, segment: str) -> str:
    """Qualified name of ``segment`` under ``parent`` (segments may already be absolute)."""
    if not parent:
        return segment
    if segment.startswith(parent + "."):
        return segment
    return f"{parent}.{segment}"


def _join_segment(parent: str, segment: str) -> str:
    """Append a TorchScript path segment, overlapping a container name it repeats.

    ``('a.layer', 'layer.0')`` -> ``'a.layer.0'``; ``('a', 'stages.0')`` -> ``'a.stages.0'``.
    """
    if not parent:
        return segment
    parts = segment.split(".")
    for k in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:k])
        if parent == head or parent.endswith("." + head):
            return f"{parent}.{'.'.join(parts[k:])}"
    return _join(parent, segment)


def dynamo_scope(metadata: dict[str, str]) -> str | None:
    """The module qualname from a dynamo-exported node's metadata, or None if absent.

    Args:
        metadata: The node's ``metadata_props`` as a dict.

    Returns:
        The innermost module's qualified name ('' for operations of the root module), or
        None when the node carries no ``pkg.torch.onnx.name_scopes`` entry.
    """
    raw = metadata.get(NAME_SCOPES_KEY)
    if raw is None:
        return None
    try:
        entries = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(entries, (list, tuple)) or len(entries) < 2:
        return ""
    scope = ""
    for entry in entries[:-1]:  # the last entry is the operation, not a module
        if entry:
            scope = _join(scope, str(entry))
    return scope


def torchscript_path(name: str) -> list[str] | None:
    """Module path segments of a TorchScript-exported node name, or None.

    ``'/layer1/layer1.0/conv1/Conv'`` -> ``['layer1', 'layer1.0', 'conv1']``;
    ``'/Flatten'`` -> ``[]``; names not starting with '/' -> None.
    """
    if not name.startswith("/"):
        return None
    parts = name.split("/")[1:]
    return [p for p in parts[:-1] if p]


def recover_scopes(nodes: Iterable[Any]) -> list[str]:
    """The scope of every node of a graph, in the order given.

    Args:
        nodes: ``onnx.NodeProto`` objects of one graph (top level).

    Returns:
        One scope per node: from dynamo metadata when present, else from a TorchScript
        path name (repeated-call suffixes removed where the base path exists), else ''.
    """
    nodes = list(nodes)
    found: list[str | None] = []
    paths: list[list[str] | None] = []
    for node in nodes:
        meta = {p.key: p.value for p in node.metadata_props}
        found.append(dynamo_scope(meta))
        paths.append(torchscript_path(node.name) if found[-1] is None else None)
    # Every module path that occurs (and its prefixes): a suffixed segment 'relu_1' is a
    # repeated call of 'relu' only if 'relu' itself names a module of this graph.
    known: set[str] = set()
    for segs in paths:
        if segs:
            scope = ""
            for seg in segs:
                scope = _join_segment(scope, seg)
                known.add(scope)
    out = []
    for scope, segs in zip(found, paths):
        if scope is not None:
            out.append(scope)
            continue
        if not segs:
            out.append("")
            continue
        qual = ""
        for seg in segs:
            m = _CALL_SUFFIX.match(seg)
            if m and _join_segment(qual, m.group("base")) in known:
                seg = m.group("base")
            qual = _join_segment(qual, seg)
        out.append(qual)
    return out
