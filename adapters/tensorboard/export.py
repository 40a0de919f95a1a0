"""A trace as TensorBoard event files: scalars, per-layer histograms, statistic series.

Written with TensorBoard's own ``EventFileWriter`` and protocol buffers. Scalars are
double-precision tensors of TensorBoard's ``scalars`` plugin (the classic ``simple_value``
is float32 and would round them); histograms are ``HistogramProto`` with the record's bin
edges as ``bucket_limit`` (an infinite last edge is written as DBL_MAX, TensorBoard's
convention for the open last bucket). Tag names: :mod:`.tags`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tracefmt.errors import MissingDependencyError, UsageError
from tracefmt.histogram import edges as hist_edges

from .tags import METRICS, TRACE_TAG, SeriesKey, histogram_tag, metric_tag, scalar_tag

__all__ = ["TensorBoardMirror", "export_tensorboard"]

DBL_MAX = sys.float_info.max


def _tb() -> Any:
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:  # pragma: no cover - the extra is part of 'all'
        raise MissingDependencyError("TensorBoard export needs the 'tensorboard' package (pip install 'tracefmt[tensorboard]')") from exc
    return event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2, EventFileWriter


class TensorBoardMirror:
    """Write trace rows to TensorBoard event files as they come (thread-safe).

    Args:
        logdir: The TensorBoard log directory (one run); created if missing.
        nodes: The trace's nodes table (node names for tags). :meth:`set_nodes` replaces it.
        metrics: Record statistics written as scalar series. Defaults to every one of
            :data:`~.tags.METRICS` that a record has.
        histograms: Write per-layer histograms. Defaults to True.
        flush_secs: Seconds between background flushes of the event file. Defaults to 2.
    """

    def __init__(self, logdir: str | Path, *, nodes: pa.Table | None = None, metrics: tuple[str, ...] = METRICS,
                 histograms: bool = True, flush_secs: float = 2.0) -> None:  # fmt: skip
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise UsageError(f"unknown statistic(s) {', '.join(unknown)}; available: {', '.join(METRICS)}")
        (self._event, self._summary, self._tensor, self._shape, self._types, writer_cls) = _tb()
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = writer_cls(str(self.logdir), flush_secs=flush_secs)
        self.metrics = tuple(metrics)
        self.histograms = bool(histograms)
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        self._nodes: list[dict[str, Any]] = []
        self._series: dict[str, list[Any]] = {}
        self._last_step = 0
        self._closed = False
        if nodes is not None:
            self.set_nodes(nodes)

    def set_nodes(self, nodes: Any) -> None:
        """Use ``nodes`` (a nodes table or its rows) for node names and the stored graph."""
        rows = nodes.to_pylist() if isinstance(nodes, (pa.Table, pa.RecordBatch)) else list(nodes)
        with self._lock:
            self._nodes = rows
            self._names = {int(r["node_id"]): str(r["name"]) for r in rows}

    # -- protocol buffers ----------------------------------------------------------------
    def _scalar_value(self, tag: str, value: float) -> Any:
        t = self._tensor.TensorProto(dtype=self._types.DT_DOUBLE, double_val=[float(value)], tensor_shape=self._shape.TensorShapeProto())
        meta = self._summary.SummaryMetadata(plugin_data=self._summary.SummaryMetadata.PluginData(plugin_name="scalars"))
        return self._summary.Summary.Value(tag=tag, tensor=t, metadata=meta)

    def _text_value(self, tag: str, text: str) -> Any:
        shape = self._shape.TensorShapeProto(dim=[self._shape.TensorShapeProto.Dim(size=1)])
        t = self._tensor.TensorProto(dtype=self._types.DT_STRING, string_val=[text.encode()], tensor_shape=shape)
        meta = self._summary.SummaryMetadata(plugin_data=self._summary.SummaryMetadata.PluginData(plugin_name="text"))
        return self._summary.Summary.Value(tag=tag, tensor=t, metadata=meta)

    def _histogram_value(self, tag: str, row: dict[str, Any]) -> Any | None:
        counts = np.asarray(row["hist_counts"], dtype=np.float64)
        e = hist_edges(row["hist_scheme"], row["hist_lo"], row["hist_hi"], len(counts), row.get("hist_edges"))
        limits = np.where(np.isposinf(e[1:]), DBL_MAX, e[1:])
        lo = float(e[0]) if np.isfinite(e[0]) else (row["min"] if row.get("min") is not None else float(limits[0]))
        hi = row["max"] if row.get("max") is not None else float(limits[-1])
        finite = int(row["numel"]) - int(row["nan_count"]) - int(row["inf_count"])
        mean = row.get("mean")
        l2 = float(row.get("l2") or 0.0)  # a product, not ``** 2``: inf past 1.3e154, never OverflowError
        histo = self._summary.HistogramProto(
            min=min(lo, float(limits[0])), max=float(hi), num=float(counts.sum()),
            sum=float(mean * finite) if mean is not None else 0.0, sum_squares=l2 * l2,
            bucket_limit=limits.tolist(), bucket=counts.tolist(),
        )  # fmt: skip
        return self._summary.Summary.Value(tag=tag, histo=histo)

    def _emit(self, step: int, values: list[Any], wall_time: float | None = None) -> None:
        if values:
            summary = self._summary.Summary(value=values)
            self._writer.add_event(self._event.Event(wall_time=wall_time or time.time(), step=int(step), summary=summary))

    # -- rows ----------------------------------------------------------------------------
    def add_records(self, records: Any) -> None:
        """Write the histograms and statistic series of ``records`` rows (a table, or columns as the writer takes them)."""
        records = _as_table("records", records)
        cols = [c for c in records.schema.names if c in ("step", "phase", "node_id", "kind", "slot", "call", "dtype", "shape", "numel", "nan_count", "inf_count",
                                                          "hist_scheme", "hist_lo", "hist_hi", "hist_counts", "hist_edges", *METRICS)]  # fmt: skip
        rows = records.select(cols).to_pylist()
        by_step: dict[int, list[Any]] = {}
        with self._lock:
            for r in rows:
                key = SeriesKey(str(r["phase"]), int(r["node_id"]), str(r["kind"]), str(r["slot"]), int(r["call"]))
                node = self._names.get(key.node_id, f"node{key.node_id}")
                out = by_step.setdefault(int(r["step"]), [])
                if self.histograms and r.get("hist_counts") is not None and r.get("hist_scheme"):
                    tag = histogram_tag(node, key)
                    self._series.setdefault(
                        tag, [key.phase, key.node_id, key.kind, key.slot, key.call, None, r.get("dtype"), r.get("shape")]
                    )
                    value = self._histogram_value(tag, r)
                    if value is not None:
                        out.append(value)
                for m in self.metrics:
                    v = r.get(m)
                    if v is None:
                        continue
                    tag = metric_tag(node, key, m)
                    self._series.setdefault(tag, [key.phase, key.node_id, key.kind, key.slot, key.call, m, r.get("dtype"), r.get("shape")])
                    out.append(self._scalar_value(tag, v))
            for step, values in sorted(by_step.items()):
                self._last_step = max(self._last_step, step)
                self._emit(step, values)

    def add_scalars(self, scalars: Any) -> None:
        """Write named scalar rows (``step``, ``phase``, ``name``, ``value``, ``wall_time``)."""
        scalars = _as_table("scalars", scalars)
        with self._lock:
            for r in scalars.to_pylist():
                self._last_step = max(self._last_step, int(r["step"]))
                self._emit(
                    int(r["step"]), [self._scalar_value(scalar_tag(str(r["name"]), str(r["phase"])), r["value"])], r.get("wall_time")
                )

    def flush(self) -> None:
        """Write buffered events to disk now."""
        self._writer.flush()

    def close(self, manifest: dict[str, Any] | None = None) -> None:
        """Write the ``tracefmt/trace`` summary (nodes and tag identities) and close the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            doc = {"manifest": manifest or {}, "nodes": self._nodes, "series": self._series}
            self._emit(self._last_step, [self._text_value(TRACE_TAG, json.dumps(doc, default=str))])
        self._writer.close()

    def __enter__(self) -> TensorBoardMirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_table(table: str, data: Any) -> pa.Table | pa.RecordBatch:
    """Rows as an Arrow table of ``table``'s schema (the writer's accepted inputs)."""
    from tracefmt._conform import to_batch
    from tracefmt.schema import TABLES

    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return data
    if isinstance(data, dict) and "rank" not in data:
        n = len(next(iter(data.values()))) if data else 0
        data = {**data, "rank": np.zeros(n, dtype=np.int32)}
    return to_batch(TABLES[table], data)


def export_tensorboard(
    trace: Any, logdir: str | Path, *, metrics: tuple[str, ...] = METRICS, histograms: bool = True, rank: int = 0
) -> Path:
    """Write a trace's scalars, per-layer histograms and statistic series for TensorBoard.

    Args:
        trace: A path or :class:`tracefmt.Trace`.
        logdir: Directory for the event file (one TensorBoard run); created if missing.
        metrics: Record statistics exported as scalar series. Defaults to all of them.
        histograms: Export the records' histograms. Defaults to True.
        rank: The rank exported (a TensorBoard run holds one). Defaults to 0.

    Returns:
        The log directory.
    """
    import tracefmt

    t = trace if isinstance(trace, tracefmt.Trace) else tracefmt.open(trace)
    mirror = TensorBoardMirror(logdir, nodes=t.nodes, metrics=metrics, histograms=histograms, flush_secs=120)
    try:
        if t.has("records"):
            for batch in t.scan("records", ranks=[rank]):
                mirror.add_records(batch)
        if t.has("scalars"):
            s = t.scalars
            mirror.add_scalars(s.filter(pa.compute.equal(s.column("rank"), rank)))
    finally:
        mirror.close(manifest=t.manifest)
    return Path(logdir)
