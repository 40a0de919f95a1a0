"""Splitting a graph into consecutive chunks, each run as its own ONNX Runtime session.

Statistics-only tracing must not hold every intermediate tensor at once. The nodes, in
execution order, are cut into chunks of at most ``chunk_outputs`` captured outputs. Each
chunk becomes a small model whose inputs are the tensors it reads from earlier chunks
(or the graph inputs), whose initializers are those its nodes read, and whose outputs
are its captured tensors plus the tensors later chunks still need. Running the chunks in
order computes every node exactly once; between chunks only the live boundary tensors
are kept, so peak memory is bounded by one chunk's outputs plus the live set, however
many tensors are captured in all.

Element types NumPy has no type for (bfloat16, the float8 and float4 types) cannot leave
an ONNX Runtime session as arrays. A chunk that outputs such a tensor gets a ``Cast`` to
float32 appended, and returns the float32 copy under the *wire name*
``<name>::tracefmt_f32`` (exact: every value of those types is a float32 value); a later
chunk that reads it takes the copy and casts it back to the original type first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracefmt.errors import UsageError

from .graph import GraphInfo

__all__ = ["Chunk", "plan_chunks", "chunk_model", "type_proto", "estimate_sizes", "NARROW_FLOATS", "WIDE_SUFFIX", "narrow_type"]

#: ONNX Runtime element names of float types without a NumPy dtype, carried as float32.
NARROW_FLOATS = ("bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz", "float4e2m1", "float8e8m0")
#: Suffix of the float32 copy of a narrow-float tensor between sessions.
WIDE_SUFFIX = "::tracefmt_f32"


def narrow_type(ort_type: str) -> str | None:
    """The element name if ``ort_type`` is a tensor of a narrow float type ('tensor(bfloat16)' -> 'bfloat16')."""
    t = ort_type.strip()
    if t.startswith("tensor(") and t.endswith(")") and t[7:-1] in NARROW_FLOATS:
        return t[7:-1]
    return None


@dataclass
class Chunk:
    """One consecutive run of nodes executed by one session.

    Attributes:
        start: Index of the first node (execution order).
        stop: One past the last node.
        inputs: Tensors read from outside the chunk (earlier chunks or graph inputs).
        initializers: Initializer names the chunk's nodes read.
        outputs: Tensors the chunk's session returns (captured ones and those needed later).
        release: Tensors no chunk after this one reads: dropped once this chunk has run.
    """

    start: int
    stop: int
    inputs: list[str] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)


def plan_chunks(
    info: GraphInfo,
    chunk_outputs: int | None,
    fed: set[str],
    *,
    sizes: dict[str, int] | None = None,
    chunk_bytes: int | None = None,
) -> list[Chunk]:
    """Cut the graph into chunks of at most ``chunk_outputs`` captured outputs.

    Args:
        info: The loaded graph.
        chunk_outputs: Captured outputs per chunk; None for one chunk with everything.
        fed: Names the caller feeds (graph inputs, including initializer overrides).
        sizes: Estimated bytes of tensors (see :func:`estimate_sizes`); unknown ones count 0.
        chunk_bytes: Also end a chunk before its captured outputs exceed this many
            estimated bytes. Ignored when ``chunk_outputs`` is None.

    Returns:
        The chunks, in execution order.
    """
    if chunk_outputs is not None and chunk_outputs < 1:
        raise UsageError(f"chunk_outputs must be a positive integer or None, got {chunk_outputs}")
    n = len(info.nodes)
    bounds: list[tuple[int, int]] = []
    start, count, size = 0, 0, 0
    budget = chunk_bytes if chunk_bytes is not None and sizes else None
    for i in range(n):
        captured = info.captured_outputs(i)
        k = len(captured)
        b = sum((sizes or {}).get(name, 0) for _, name in captured)
        if chunk_outputs is not None and count and (count + k > chunk_outputs or (budget is not None and size + b > budget)):
            bounds.append((start, i))
            start, count, size = i, 0, 0
        count += k
        size += b
    if n:
        bounds.append((start, n))
    graph_outputs = {o.name for o in info.graph.output}
    chunk_of = [0] * n
    for c, (a, b) in enumerate(bounds):
        for i in range(a, b):
            chunk_of[i] = c
    last_reader: dict[str, int] = {}
    for i, reads in enumerate(info.reads):
        for r in reads:
            last_reader[r] = max(last_reader.get(r, -1), chunk_of[i])
    chunks = []
    for c, (a, b) in enumerate(bounds):
        produced: list[str] = []
        reads_in: list[str] = []
        seen: set[str] = set()
        for i in range(a, b):
            for r in info.reads[i]:
                if r not in seen:
                    seen.add(r)
                    reads_in.append(r)
            produced.extend(o for o in info.nodes[i].output if o)
        produced_set = set(produced)
        inputs = [r for r in reads_in if r not in produced_set and (r in fed or r not in info.initializers)]
        inits = [r for r in reads_in if r not in produced_set and r not in fed and r in info.initializers]
        captured = {name for i in range(a, b) for _, name in info.captured_outputs(i)}
        outputs = [o for o in produced if o in captured or last_reader.get(o, -1) > c or o in graph_outputs]
        release = [t for t in set(inputs) | set(outputs) if last_reader.get(t, -1) <= c]
        chunks.append(Chunk(a, b, inputs, inits, outputs, sorted(release)))
    return chunks


def type_proto(ort_type: str) -> Any:
    """An ``onnx.TypeProto`` from an ONNX Runtime type string (``'seq(tensor(float))'``)."""
    from onnx import helper

    t = ort_type.strip()
    if t.startswith("tensor(") and t.endswith(")"):
        return helper.make_tensor_type_proto(_elem(t[7:-1]), shape=None)
    if t.startswith("seq(") and t.endswith(")"):
        return helper.make_sequence_type_proto(type_proto(t[4:-1]))
    if t.startswith("optional(") and t.endswith(")"):
        return helper.make_optional_type_proto(type_proto(t[9:-1]))
    if t.startswith("map(") and t.endswith(")"):
        key, value = t[4:-1].split(",", 1)
        return helper.make_map_type_proto(_elem(key.strip()), type_proto(value))
    raise UsageError(f"cannot pass a value of type {ort_type} between chunks; trace with chunk_outputs=None (CLI: --chunk-outputs 0)")


def _elem(name: str) -> int:
    """ONNX element type of an ONNX Runtime element name ('float' -> TensorProto.FLOAT)."""
    from onnx import TensorProto

    table = {
        "float": TensorProto.FLOAT, "double": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
        "bfloat16": TensorProto.BFLOAT16, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
        "int32": TensorProto.INT32, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8,
        "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
        "bool": TensorProto.BOOL, "string": TensorProto.STRING,
    }  # fmt: skip
    for narrow in NARROW_FLOATS:
        code = getattr(TensorProto, narrow.upper(), None)
        if code is not None:
            table[narrow] = code
    if name not in table:
        raise UsageError(f"unsupported element type {name!r} between chunks; trace with chunk_outputs=None (CLI: --chunk-outputs 0)")
    return table[name]


def chunk_model(info: GraphInfo, chunk: Chunk, input_types: dict[str, Any], widen: frozenset[str] = frozenset()) -> Any:
    """Build the ModelProto that runs ``chunk``.

    Args:
        info: The loaded graph.
        chunk: The chunk.
        input_types: Tensor name -> ``onnx.TypeProto`` of every chunk input.
        widen: Narrow-float tensors (see module doc): outputs of this chunk among them
            are returned as float32 copies, inputs among them are read as float32
            copies and cast back.

    Returns:
        A ModelProto with the chunk's nodes, initializers, inputs and outputs; opsets,
        IR version and local functions are those of the original model.
    """
    from onnx import TensorProto, ValueInfoProto, helper

    graph = info.graph
    inputs = []
    head, tail = [], []
    for name in chunk.inputs:
        if name in widen:
            elem = input_types[name].tensor_type.elem_type
            inputs.append(helper.make_tensor_value_info(name + WIDE_SUFFIX, TensorProto.FLOAT, None))
            head.append(helper.make_node("Cast", [name + WIDE_SUFFIX], [name], to=elem, name=name + WIDE_SUFFIX + "_in"))
            continue
        vi = ValueInfoProto(name=name)
        vi.type.CopyFrom(input_types[name])
        inputs.append(vi)
    inits = [info.initializers[name] for name in chunk.initializers]
    if info.model.ir_version < 4:
        # Before IR 4 every initializer must also be declared as a graph input.
        for t in inits:
            inputs.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    outputs = []
    for name in chunk.outputs:
        if name in widen:
            tail.append(helper.make_node("Cast", [name], [name + WIDE_SUFFIX], to=TensorProto.FLOAT, name=name + WIDE_SUFFIX + "_out"))
            name += WIDE_SUFFIX
        outputs.append(ValueInfoProto(name=name))
    nodes = head + list(info.nodes[chunk.start : chunk.stop]) + tail
    sub = helper.make_graph(nodes, f"{graph.name or 'graph'}_{chunk.start}", inputs, outputs, initializer=inits)
    model = helper.make_model(sub, opset_imports=list(info.model.opset_import), ir_version=info.model.ir_version)
    model.functions.extend(info.model.functions)
    return model


def estimate_sizes(info: GraphInfo, feed: dict[str, Any]) -> dict[str, int]:
    """Bytes of every tensor whose shape ONNX shape inference can derive for this feed.

    The graph inputs are given the feed's concrete shapes first, so symbolic batch sizes
    resolve. Tensors of unknown shape or type are left out. Inference failures yield {}.
    """
    import numpy as np
    import onnx
    from onnx import helper, shape_inference

    model = onnx.ModelProto()
    model.ir_version = info.model.ir_version
    model.opset_import.extend(info.model.opset_import)
    model.functions.extend(info.model.functions)
    graph = model.graph
    graph.node.extend(info.nodes)
    # Only small initializers are copied (shape tensors that data propagation reads);
    # large ones are declared by type and shape so the estimate never duplicates weights.
    for t in info.initializers.values():
        small = t.data_location != 1 and len(t.raw_data) + 8 * len(t.int64_data) + 4 * (len(t.float_data) + len(t.int32_data)) <= 4096
        if small:
            graph.initializer.append(t)
        if not small or model.ir_version < 4:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for vi in list(info.required_inputs) + list(info.optional_inputs):
        value = feed.get(vi.name)
        if isinstance(value, np.ndarray) and vi.type.HasField("tensor_type"):
            graph.input.append(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(value.shape)))
        elif vi.name not in info.initializers:
            graph.input.append(vi)
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is a best effort: a model it cannot handle gets count-based chunks
        return {}
    sizes: dict[str, int] = {}
    for vi in inferred.graph.value_info:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.elem_type or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if any(d < 0 for d in dims):
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize if tt.elem_type != onnx.TensorProto.STRING else 8
        sizes[vi.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    return sizes
