"""trace_onnx: record every intermediate tensor of an ONNX model run by ONNX Runtime."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt.enums import Kind, Phase, coerce
from tracefmt.errors import UsageError
from tracefmt.histogram import DEFAULT_BINNING, Binning
from tracefmt.stats import channel_stats, dtype_name, tensor_stats
from tracefmt.writer import TraceWriter, WriterOptions

from .chunks import WIDE_SUFFIX, Chunk, chunk_model, estimate_sizes, narrow_type, plan_chunks, type_proto
from .graph import GraphInfo, load_graph
from .inputs import as_batches, check_feed
from .session import Optimization, SessionFactory

__all__ = ["trace_onnx", "DEFAULT_CHUNK_OUTPUTS", "DEFAULT_CHUNK_BYTES", "ADAPTER_NAME"]

#: Captured outputs per chunk session in statistics-only mode.
DEFAULT_CHUNK_OUTPUTS = 64
#: Estimated bytes of captured outputs per chunk session.
DEFAULT_CHUNK_BYTES = 16 << 20
#: The ``producer.adapter`` written to the manifest.
ADAPTER_NAME = "tracefmt.adapters.onnxruntime"
#: Hand buffered records to the writer (compact Arrow) at this many rows: rows as Python
#: objects cost ~30x more memory (per-channel vectors of wide layers).
_FLUSH_ROWS = 256


def _tensor_record(value: Any, *, binning: Binning | None, median: bool, channels: bool) -> dict[str, Any] | None:
    """Record columns for one runtime value; None for values that are not tensors."""
    if not isinstance(value, np.ndarray):
        return None  # sequences, maps and empty optionals have no tensor statistics
    if value.dtype.kind in "biuf":
        rec = tensor_stats(value, binning=binning, median=median)
        if channels and value.ndim >= 2 and value.dtype.kind == "f":
            rec.update(channel_stats(value, axis=1) or {})
        return rec
    # Strings (and other non-numeric tensors): shape and size only, no statistics.
    return {"dtype": "string" if value.dtype.kind in "OUS" else dtype_name(value.dtype), "shape": list(value.shape),
            "numel": int(value.size), "nan_count": 0, "inf_count": 0, "zero_count": 0, "pos_count": 0, "l2": 0.0}  # fmt: skip


class _Run:
    """State of one trace: chunks, their sessions and the value types between them."""

    def __init__(
        self, info: GraphInfo, factory: SessionFactory, chunk_outputs: int | None, chunk_bytes: int | None, keep_sessions: bool
    ) -> None:
        self.info = info
        self.factory = factory
        self.chunk_outputs = chunk_outputs
        self.chunk_bytes = chunk_bytes
        self.keep_sessions = keep_sessions
        self.fed: set[str] | None = None
        self.chunks: list[Chunk] = []
        self.sessions: list[Any] = []
        self.types: dict[str, Any] = {vi.name: vi.type for vi in list(info.required_inputs) + list(info.optional_inputs)}
        #: Narrow-float tensors (bfloat16, float8, float4) -> element name; carried as float32.
        self.narrow: dict[str, str] = {}

    def plan(self, feed: dict[str, Any]) -> None:
        fed = set(feed)
        if fed != self.fed:
            self.fed = fed
            sizes = estimate_sizes(self.info, feed) if self.chunk_outputs is not None and self.chunk_bytes else None
            self.chunks = plan_chunks(self.info, self.chunk_outputs, fed, sizes=sizes, chunk_bytes=self.chunk_bytes)
            self.sessions = [None] * len(self.chunks)

    def wire(self, name: str) -> str:
        """The name a tensor has between sessions (narrow floats travel as float32 copies)."""
        return name + WIDE_SUFFIX if name in self.narrow else name

    def session(self, c: int) -> Any:
        if self.sessions[c] is None:
            chunk = self.chunks[c]
            # Types are converted only for tensors that cross into this chunk, so a type
            # no chunk boundary can carry fails only where chunking needs it.
            types = {n: self.types[n] if not isinstance(self.types[n], str) else type_proto(self.types[n]) for n in chunk.inputs}
            sess = self.factory.create(chunk_model(self.info, chunk, types, frozenset(self.narrow)))
            narrow = {arg.name: narrow_type(arg.type) for arg in sess.get_outputs()}
            narrow = {k: v for k, v in narrow.items() if v}
            if narrow:
                # Outputs NumPy cannot hold: rebuild the chunk returning float32 copies.
                self.narrow.update(narrow)
                sess = self.factory.create(chunk_model(self.info, chunk, types, frozenset(self.narrow)))
            for arg in sess.get_outputs():
                name = arg.name[: -len(WIDE_SUFFIX)] if arg.name.endswith(WIDE_SUFFIX) else arg.name
                if name not in self.types:
                    self.types[name] = f"tensor({self.narrow[name]})" if name in self.narrow else arg.type
            if not self.keep_sessions:
                return sess  # one step only: the session is freed once its chunk has run
            self.sessions[c] = sess
        return self.sessions[c]


def trace_onnx(
    model: Any,
    inputs: Any,
    path: str | Path,
    *,
    raw: bool = False,
    histogram: Binning | None = DEFAULT_BINNING,
    median: bool = False,
    channels: bool = True,
    providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",),
    optimization: str | Optimization = Optimization.DISABLED,
    chunk_outputs: int | None = DEFAULT_CHUNK_OUTPUTS,
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
    exclude_ops: Collection[str] = (),
    phase: str | Phase = Phase.INFER,
    start_step: int = 0,
    mode: str = "create",
    model_name: str | None = None,
    writer_options: WriterOptions | None = None,
) -> Path:
    """Run an ONNX model with ONNX Runtime and record every intermediate tensor as a trace.

    Every top-level node becomes a row of the ``nodes`` table (scope recovered from the
    exporter's naming, see :mod:`tracefmt.adapters.onnxruntime.scopes`). Each step (one
    feed dict) records, for every node output except those of Constant nodes and omitted
    optional outputs, an ``activation`` record with ``slot`` = output index and ``call``
    = 0, and for every graph input an ``input`` record at each node reading it (``slot`` =
    input index). Statistics are :func:`tracefmt.stats.tensor_stats` (and
    :func:`~tracefmt.stats.channel_stats` along axis 1 for floating tensors of rank >= 2).

    Args:
        model: Path of the ``.onnx`` file (preferred: external data stays on disk) or an
            ``onnx.ModelProto``.
        inputs: One feed (dict input name -> array, torch tensors accepted) or a list of
            feeds; each feed is one step.
        path: Trace directory to write.
        raw: Also store every tensor's values (``tensors`` table). Defaults to False.
        histogram: Histogram binning, None for none. Defaults to the symlog default.
        median: Record the lower median. Defaults to False.
        channels: Record per-channel vectors along axis 1. Defaults to True.
        providers: ONNX Runtime execution providers. Defaults to the CPU provider.
        optimization: Graph optimisation level: 'disabled' (every node runs as the graph
            states it), 'basic', 'extended' or 'all'. Defaults to 'disabled'.
        chunk_outputs: Captured outputs per session chunk, bounding peak memory; None runs
            the whole graph in one session with every output exposed (fastest, memory
            grows with the model). Defaults to 64.
        chunk_bytes: Also end a chunk before its captured outputs exceed this many bytes,
            as estimated by ONNX shape inference for the first feed's shapes (tensors of
            unknown shape count as 0). None: by count only. Defaults to 16 MiB.
        exclude_ops: Operator types whose outputs are not recorded (the nodes stay in
            the nodes table), e.g. ``('ConstantOfShape',)`` for models that generate their
            weights at run time. Defaults to none.
        phase: Phase of the records: 'infer', or 'eval' to sit beside a PyTorch eval
            trace. The diff compares eval with infer (and states it). Defaults to 'infer'.
        start_step: Step number of the first feed. Defaults to 0.
        mode: Writer mode: 'create', 'overwrite' or 'append'. Defaults to 'create'.
        model_name: Model name for the manifest. Defaults to the file's stem or graph name.
        writer_options: How the trace's segments are rolled and encoded
            (:class:`tracefmt.WriterOptions`). Defaults to ``WriterOptions()``.

    Returns:
        The trace directory.
    """
    import onnx

    info = load_graph(model)
    phase = coerce(Phase, phase, what="phase")
    factory = SessionFactory(info, providers=tuple(providers), optimization=optimization)
    ort = factory.ort
    name = model_name or (info.path.stem if info.path else (info.graph.name or "model"))
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in info.model.opset_import}
    writer = TraceWriter(
        path,
        mode=mode,
        options=writer_options,
        producer={
            "adapter": ADAPTER_NAME,
            "framework": "onnxruntime",
            "framework_version": ort.__version__,
            "onnx_version": onnx.__version__,
        },
        model=name,
        metadata={
            "onnx_model": str(info.path) if info.path else None,
            "providers": list(providers),
            "graph_optimization_level": factory.optimization.value,
            "chunk_outputs": chunk_outputs,
            "chunk_bytes": chunk_bytes if chunk_outputs is not None else None,
            "opset_import": opsets,
            "producer_name": info.model.producer_name,
            "producer_version": info.model.producer_version,
            "raw": bool(raw),
            "exclude_ops": sorted(exclude_ops),
        },
    )
    # Sessions are kept for the next step unless there is only one feed (a dict).
    run = _Run(info, factory, chunk_outputs, chunk_bytes, keep_sessions=not isinstance(inputs, Mapping))
    try:
        writer.write_nodes(info.node_rows())
        steps = 0
        for i, feed in enumerate(as_batches(inputs)):
            step = start_step + i
            _trace_step(run, writer, check_feed(info, feed, step=step), step=step, phase=phase, raw=raw,
                        binning=histogram, median=median, channels=channels, exclude=frozenset(exclude_ops))  # fmt: skip
            steps += 1
        writer.update_metadata(steps=steps)
    finally:
        run.sessions.clear()
        writer.close()
    return Path(path)


def _trace_step(run: _Run, writer: TraceWriter, feed: dict[str, Any], *, step: int, phase: Phase, raw: bool,
                binning: Binning | None, median: bool, channels: bool, exclude: frozenset[str]) -> None:  # fmt: skip
    info = run.info
    run.plan(feed)
    live: dict[str, Any] = dict(feed)
    rows: list[dict[str, Any]] = []
    seq = 0

    input_stats: dict[int, dict[str, Any] | None] = {}

    def emit(node_id: int, kind: Kind, slot: int, value: Any, dtype: str | None = None) -> None:
        nonlocal seq
        if kind is Kind.INPUT:
            # A graph input read by several nodes is summarised once per step.
            if id(value) not in input_stats:
                input_stats[id(value)] = _tensor_record(value, binning=binning, median=median, channels=channels)
            cached = input_stats[id(value)]
            rec = dict(cached) if cached is not None else None
        else:
            rec = _tensor_record(value, binning=binning, median=median, channels=channels)
        if rec is None:
            return
        if dtype is not None:
            rec["dtype"] = dtype  # a narrow float summarised from its exact float32 copy
        rec.update(step=step, phase=phase.value, node_id=node_id, kind=kind.value, slot=str(slot), call=0, seq=seq)
        seq += 1
        rows.append(rec)
        if raw and isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            writer.write_tensor(value, step=step, node_id=node_id, kind=kind.value, slot=str(slot), call=0, phase=phase.value, dtype=dtype)

    for c, chunk in enumerate(run.chunks):
        sess = run.session(c)
        try:
            wired = [run.wire(o) for o in chunk.outputs]
            values = dict(zip(chunk.outputs, sess.run(wired, {run.wire(n): live[n] for n in chunk.inputs})))
        except Exception as exc:  # ORT raises its own Fail/InvalidArgument/RuntimeException types
            first, last = info.names[chunk.start], info.names[chunk.stop - 1]
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"step {step}: ONNX Runtime failed running nodes {first} .. {last}: {message}") from None
        released = set(chunk.release)
        live.update((k, v) for k, v in values.items() if k not in released)
        for name in released:
            live.pop(name, None)
        for i in range(chunk.start, chunk.stop):
            if info.nodes[i].op_type not in exclude:
                for slot, name in enumerate(info.nodes[i].input):
                    if name in feed:
                        emit(i, Kind.INPUT, slot, feed[name])
                for slot, name in info.captured_outputs(i):
                    emit(i, Kind.ACTIVATION, slot, values[name], run.narrow.get(name))
            for name in info.nodes[i].output:
                # Summarised and not needed later: freed now rather than with the chunk,
                # so the statistics' temporaries never sit beside the whole chunk.
                values.pop(name, None)
        del values
        if len(rows) >= _FLUSH_ROWS:
            writer.write_records(rows)
            rows = []
    if rows:
        writer.write_records(rows)
