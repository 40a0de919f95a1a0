"""The ONNX graph as the trace sees it: loading, execution order and the nodes table.

:class:`GraphInfo` loads a model (by path, leaving external data on disk), orders its
top-level nodes topologically (the order the graph states, kept where it is already
valid), finds what every node reads (explicit inputs plus the outer-scope tensors its
subgraphs read) and builds the rows of the trace's ``nodes`` table.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracefmt.errors import TraceNotFoundError, UsageError

from .op_classes import onnx_op_class
from .scopes import recover_scopes

__all__ = ["GraphInfo", "load_graph", "SUBGRAPH_OPS"]

#: Operators whose attributes hold subgraphs; recorded as opaque nodes.
SUBGRAPH_OPS = ("If", "Loop", "Scan", "SequenceMap")

#: Tensor attributes with at most this many elements are written out in full.
_SMALL_TENSOR = 16


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _outputs(node: Any) -> list[str]:
    """Output names with trailing omitted (empty) optional outputs dropped.

    Empty names before a present output are kept, so that list position = output index =
    the record's ``slot``; no node lists '' among its inputs, so '' makes no edge.
    """
    names = list(node.output)
    while names and not names[-1]:
        names.pop()
    return names


def _graph_reads(graph: Any) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes (recursively)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer} if hasattr(graph, "sparse_initializer") else set()
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node.input if n)
        for sub in _subgraphs(node):
            reads |= _graph_reads(sub)
        defined.update(o for o in node.output if o)
    return reads - defined


def _subgraphs(node: Any) -> list[Any]:
    out = []
    for attr in node.attribute:
        if attr.HasField("g"):
            out.append(attr.g)
        out.extend(attr.graphs)
    return out


def attribute_json(node: Any) -> str | None:
    """The node's attributes as a JSON object string (None when it has none).

    Tensors are written as ``{"dtype", "dims"}`` plus their ``values`` when small;
    subgraphs as ``{"graph": name, "nodes": count}``; bytes decoded as UTF-8.
    """
    from onnx import helper, numpy_helper

    if not node.attribute:
        return None
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.HasField("g") or attr.graphs:
            graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            desc = [{"graph": g.name, "nodes": len(g.node)} for g in graphs]
            out[attr.name] = desc[0] if attr.HasField("g") else desc
            continue
        if attr.HasField("t") or attr.tensors:
            tensors = [attr.t] if attr.HasField("t") else list(attr.tensors)
            desc = []
            for t in tensors:
                item: dict[str, Any] = {
                    "dtype": helper.tensor_dtype_to_np_dtype(t.data_type).name if t.data_type else None,
                    "dims": list(t.dims),
                }
                if _numel(t.dims) <= _SMALL_TENSOR and t.data_location != 1:
                    item["values"] = numpy_helper.to_array(t).tolist()
                desc.append(item)
            out[attr.name] = desc[0] if attr.HasField("t") else desc
            continue
        value = helper.get_attribute_value(attr)
        out[attr.name] = _jsonable(value)
    return json.dumps(out, sort_keys=True, default=str)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return "nan"
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


@dataclass
class GraphInfo:
    """A loaded model and what the tracer needs to know about its top-level graph.

    Attributes:
        model: The ModelProto (external data not loaded: initializers refer to files).
        path: The model file, or None when given as a ModelProto.
        nodes: Top-level nodes in execution (topological) order.
        scopes: Recovered PyTorch scope per node.
        names: Node names (synthesised as ``<op_type>_<index>`` where the graph has none).
        reads: Per node, every tensor it reads: explicit inputs, then outer-scope reads
            of its subgraphs.
        initializers: Initializer name -> TensorProto.
        required_inputs: Graph inputs the caller must feed (no initializer default).
        optional_inputs: Graph inputs with an initializer default (old IR versions).
    """

    model: Any
    path: Path | None
    nodes: list[Any]
    scopes: list[str]
    names: list[str]
    reads: list[list[str]]
    initializers: dict[str, Any]
    required_inputs: list[Any]
    optional_inputs: list[Any]
    outer_reads: list[list[str]] = field(default_factory=list)

    @property
    def graph(self) -> Any:
        """The model's main graph."""
        return self.model.graph

    @property
    def has_external_data(self) -> bool:
        """True if any initializer keeps its data in an external file."""
        return any(t.data_location == 1 for t in self.initializers.values())

    def captured_outputs(self, index: int) -> list[tuple[int, str]]:
        """``(slot, tensor name)`` of node ``index`` whose values are recorded.

        Constant nodes and empty (omitted optional) output names are skipped.
        """
        node = self.nodes[index]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return []
        return [(slot, name) for slot, name in enumerate(node.output) if name]

    def op_type(self, index: int) -> str:
        """Operator type, prefixed by its domain outside the default ONNX domain."""
        node = self.nodes[index]
        return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"

    def node_rows(self) -> list[dict[str, Any]]:
        """Rows of the trace's ``nodes`` table, one per top-level node, node_id = order."""
        counted: set[str] = set()
        constants = set(self.initializers) | {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        rows = []
        for i, node in enumerate(self.nodes):
            params = 0
            for name in node.input:
                if name in self.initializers and name not in counted:
                    # Each initializer is counted once, at its first consumer, so the
                    # column sums to the model's parameter count.
                    counted.add(name)
                    params += _numel(self.initializers[name].dims)
            rows.append(
                {
                    "node_id": i,
                    "name": self.names[i],
                    "scope": self.scopes[i],
                    "op_type": self.op_type(i),
                    "op_class": onnx_op_class(self.op_type(i), list(node.input), constants).value,
                    "parent": None,
                    "container": False,
                    "inputs": [n for n in node.input if n],
                    "outputs": _outputs(node),
                    "attributes": attribute_json(node),
                    "param_count": params,
                    "order": i,
                    "note": self._note(i),
                }
            )
        return rows

    def _note(self, index: int) -> str | None:
        node = self.nodes[index]
        subs = _subgraphs(node)
        if subs:
            attrs = sorted({a.name for a in node.attribute if a.HasField("g") or a.graphs})
            note = f"opaque: {node.op_type} with subgraph(s) {', '.join(attrs)}; tensors inside the subgraphs are not captured"
            outer = self.outer_reads[index] if self.outer_reads else []
            if outer:
                note += f"; reads outer-scope tensors {', '.join(outer[:8])}{' ...' if len(outer) > 8 else ''}"
            return note
        if node.op_type == "Constant":
            return "constant: output not captured"
        return None


def _topological(nodes: list[Any], available: set[str], reads: list[list[str]]) -> list[int]:
    """Node indices in an execution order; the stated order where it is already valid."""
    have = set(available)
    ok = True
    for i, node in enumerate(nodes):
        if any(r not in have for r in reads[i]):
            ok = False
            break
        have.update(o for o in node.output if o)
    if ok:
        return list(range(len(nodes)))
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for o in node.output:
            if o:
                producer[o] = i
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        deps = {producer[r] for r in reads[i] if r not in available and r in producer}
        deps.discard(i)
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i in range(len(nodes)) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise UsageError("the ONNX graph has a cycle: its nodes cannot be ordered for execution")
    return order


def load_graph(model: Any) -> GraphInfo:
    """Load ``model`` (a path or a ModelProto) for tracing.

    A path is loaded without its external data: large initializers stay on disk and
    ONNX Runtime reads them by path.

    Args:
        model: Path of an ``.onnx`` file, or an ``onnx.ModelProto``.

    Returns:
        The :class:`GraphInfo`.

    Raises:
        TraceNotFoundError: the file does not exist.
        UsageError: the file is not an ONNX model.
    """
    import onnx

    path: Path | None = None
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise TraceNotFoundError(f"{path}: no such ONNX model file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises its own DecodeError types
            raise UsageError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:
        raise UsageError(f"model must be a path to an .onnx file or an onnx.ModelProto, got {type(model).__name__}")
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    if path is None and any(t.data_location == 1 for t in initializers.values()):
        raise UsageError("the ModelProto's initializers refer to external data files; pass the model's path instead so they can be read")
    raw_nodes = list(graph.node)
    explicit = [[n for n in node.input if n] for node in raw_nodes]
    outer = [
        sorted(set().union(*[_graph_reads(g) for g in _subgraphs(node)]) - set(explicit[i])) if _subgraphs(node) else []
        for i, node in enumerate(raw_nodes)
    ]
    reads = [e + o for e, o in zip(explicit, outer)]
    available = {i.name for i in graph.input} | set(initializers)
    order = _topological(raw_nodes, available, reads)
    nodes = [raw_nodes[i] for i in order]
    reads = [reads[i] for i in order]
    outer = [outer[i] for i in order]
    scopes = recover_scopes(nodes)
    names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(nodes)]
    required = [i for i in graph.input if i.name not in initializers]
    optional = [i for i in graph.input if i.name in initializers]
    return GraphInfo(
        model=proto,
        path=path,
        nodes=nodes,
        scopes=scopes,
        names=names,
        reads=reads,
        initializers=initializers,
        required_inputs=required,
        optional_inputs=optional,
        outer_reads=outer,
    )
