"""Streaming reads for analyzers: projected record scans, the trace profile and progress.

Analyzers never load the records table whole: they stream record batches with only the
columns they use (:func:`scan_records`), so memory stays bounded by the batch size and
the analyzers' own per-layer summaries. The :class:`TraceProfile` (kinds, phases, step
ranges, row count) is computed once per trace by one scan of three columns and shared by
the pipeline's needs check and every analyzer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tracefmt import Trace

__all__ = ["TraceProfile", "profile", "scan_records", "training_phases", "progress_to", "column_has_values", "node_table"]

_PROGRESS: ContextVar[Callable[[int], None] | None] = ContextVar("tracefmt_analyzer_progress", default=None)


@contextmanager
def progress_to(callback: Callable[[int], None] | None) -> Iterator[None]:
    """Report the number of rows of every batch scanned inside the block to ``callback``."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass(frozen=True)
class TraceProfile:
    """What a trace's records contain, from one cheap scan.

    Attributes:
        num_records: Rows of the records table.
        kind_counts: Record count per kind.
        phase_steps: Per phase, the (first, last) step of its records.
        scalar_names: Names of the scalar series.
        num_predictions: Rows of the predictions table.
    """

    num_records: int
    kind_counts: dict[str, int]
    phase_steps: dict[str, tuple[int, int]]
    scalar_names: frozenset[str]
    num_predictions: int

    @property
    def kinds(self) -> frozenset[str]:
        """Kinds present in the records."""
        return frozenset(k for k, n in self.kind_counts.items() if n)

    def steps(self, phases: Sequence[str] | None = None) -> tuple[int, int] | None:
        """The (first, last) step over ``phases`` (all phases when None), None if no records."""
        spans = [v for k, v in self.phase_steps.items() if phases is None or k in phases]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans)


_PROFILES: weakref.WeakKeyDictionary[Trace, TraceProfile] = weakref.WeakKeyDictionary()


def profile(trace: Trace) -> TraceProfile:
    """The :class:`TraceProfile` of ``trace`` (computed once, then cached)."""
    cached = _PROFILES.get(trace)
    if cached is not None:
        return cached
    kinds: dict[str, int] = {}
    spans: dict[str, list[int]] = {}
    total = 0
    if trace.has("records"):
        for batch in scan_records(trace, columns=["step", "phase", "kind"]):
            total += batch.num_rows
            t = pa.Table.from_batches([batch])
            for row in t.group_by(["phase", "kind"]).aggregate([("step", "min"), ("step", "max"), ("step", "count")]).to_pylist():
                kinds[row["kind"]] = kinds.get(row["kind"], 0) + row["step_count"]
                lo_hi = spans.setdefault(row["phase"], [row["step_min"], row["step_max"]])
                lo_hi[0] = min(lo_hi[0], row["step_min"])
                lo_hi[1] = max(lo_hi[1], row["step_max"])
    scalar_names: frozenset[str] = frozenset()
    if trace.has("scalars"):
        scalar_names = frozenset(pc.unique(trace.scalars.column("name")).to_pylist())
    npred = trace.predictions.num_rows if trace.has("predictions") else 0
    prof = TraceProfile(total, kinds, {k: (int(v[0]), int(v[1])) for k, v in spans.items()}, scalar_names, npred)
    _PROFILES[trace] = prof
    return prof


def training_phases(prof: TraceProfile) -> list[str]:
    """Phases whose records describe learning: ``['train']`` if present, else every phase."""
    if "train" in prof.phase_steps:
        return ["train"]
    return sorted(prof.phase_steps)


def scan_records(
    trace: Trace,
    *,
    columns: list[str],
    batch_size: int = 131072,
    where: ds.Expression | None = None,
    **filters: Any,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches with only ``columns`` (filters as in :meth:`Trace.scan`).

    Args:
        trace: The trace.
        columns: Columns to read.
        batch_size: Maximum rows per batch. Defaults to 131072.
        where: An extra dataset filter expression, evaluated by Arrow before any Python sees a row.
        **filters: ``kinds``, ``phases``, ``nodes``, ``steps``, ``slots``, ``ranks``.

    Progress (rows per batch) goes to the callback installed with :func:`progress_to`.
    """
    callback = _PROGRESS.get()
    if where is None:
        batches = trace.scan("records", columns=columns, batch_size=batch_size, **filters)
    else:
        ranks = filters.pop("ranks", None)
        expr = trace.filter_expression(**filters)
        expr = where if expr is None else expr & where
        batches = trace.dataset("records", ranks=ranks).to_batches(columns=columns, filter=expr, batch_size=batch_size)
    for batch in batches:
        if batch.num_rows:
            if callback is not None:
                callback(batch.num_rows)
            yield batch


def column_has_values(trace: Trace, column: str, **filters: Any) -> bool:
    """True if ``column`` is non-null in at least one record (stops at the first one)."""
    if column not in trace.records.schema.names:
        return False
    for batch in trace.scan("records", columns=[column], **filters):
        if batch.num_rows and batch.column(0).null_count < batch.num_rows:
            return True
    return False


def node_table(trace: Trace) -> dict[str, np.ndarray]:
    """The nodes table as numpy arrays indexed by node_id (dense lookup tables).

    Returns:
        ``name``, ``op_type`` (object arrays), ``order`` (int64, -1 when null),
        ``param_count`` (int64), ``container`` (bool), each of length max(node_id) + 1.
    """
    n = trace.nodes
    ids = n.column("node_id").to_numpy()
    size = int(ids.max()) + 1 if len(ids) else 0
    out = {
        "name": np.full(size, None, dtype=object),
        "op_type": np.full(size, "", dtype=object),
        "order": np.full(size, -1, dtype=np.int64),
        "param_count": np.zeros(size, dtype=np.int64),
        "container": np.zeros(size, dtype=bool),
        "known": np.zeros(size, dtype=bool),
    }
    out["name"][ids] = n.column("name").to_pylist()
    out["op_type"][ids] = n.column("op_type").to_pylist()
    out["order"][ids] = n.column("order").fill_null(-1).to_numpy()
    out["param_count"][ids] = n.column("param_count").to_numpy()
    out["container"][ids] = n.column("container").to_numpy(zero_copy_only=False)
    out["known"][ids] = True
    return out
