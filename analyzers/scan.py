"""Streaming reads for analyzers: the shared record pass, the trace profile and progress.

Analyzers never load the records table whole. Each built-in analyzer is a
:class:`~tracefmt.analyzers.base.RecordConsumer` fed by :func:`shared_pass`: one scan of
the records, with only the columns the consumers declared, hands every batch to every
consumer as a :class:`RecordView` (series numbers, row selections and decoded columns
computed once per batch and shared). Memory stays bounded by the batch size, Arrow's
read-ahead and the analyzers' own per-layer summaries. The :class:`TraceProfile` (kinds,
phases, step ranges, row count) comes from one cheap scan of three columns, once per trace.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tracefmt import Trace
from tracefmt.op_classes import OpClass, node_op_classes

from .series import KINDS, HistBlock, SeriesIndex, StepGrid, column_f64, histogram_blocks, string_codes

__all__ = [
    "TraceProfile",
    "RecordView",
    "profile",
    "scan_records",
    "shared_pass",
    "training_phases",
    "training_grid",
    "progress_to",
    "column_has_values",
    "node_table",
    "BATCH_ROWS",
]

#: Rows per scanned batch: large enough to amortise per-batch work, small enough to bound memory.
BATCH_ROWS = 131072
_PROGRESS: ContextVar[Callable[[int], None] | None] = ContextVar("tracefmt_analyzer_progress", default=None)


@contextmanager
def progress_to(callback: Callable[[int], None] | None) -> Iterator[None]:
    """Report the number of rows of every batch scanned inside the block to ``callback``."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class TraceProfile:
    """What a trace's records contain: row count and step span per phase from one scan of
    two columns; the record count per kind from the analyzers' shared pass (or, if none
    ran, from a scan of the ``kind`` column on first use).

    Attributes:
        num_records: Rows of the records table.
        phase_steps: Per phase, the (first, last) step of its records.
        scalar_names: Names of the scalar series.
        num_predictions: Rows of the predictions table.
    """

    def __init__(
        self, trace: Trace, num_records: int, phase_steps: dict[str, tuple[int, int]], scalar_names: frozenset[str], num_predictions: int
    ) -> None:
        self._trace = weakref.ref(trace)
        self.num_records = num_records
        self.phase_steps = phase_steps
        self.scalar_names = scalar_names
        self.num_predictions = num_predictions
        self._kind_counts: dict[str, int] | None = None if num_records else {}

    @property
    def kind_counts(self) -> dict[str, int]:
        """Record count per kind."""
        if self._kind_counts is None:
            counts: dict[str, int] = {}
            trace = self._trace()
            for batch in scan_records(trace, columns=["kind"]):
                code, names = string_codes(batch.column("kind"), KINDS)
                for k, n in zip(names, np.bincount(code, minlength=len(names)).tolist()):
                    counts[k] = counts.get(k, 0) + n
            self._kind_counts = counts
        return self._kind_counts

    def observe_kinds(self, counts: dict[str, int]) -> None:
        """Record the per-kind counts a complete pass over the records found."""
        if self._kind_counts is None:
            self._kind_counts = dict(counts)

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
    spans: dict[str, list[int]] = {}
    total = 0
    if trace.has("records"):
        for batch in scan_records(trace, columns=["step", "phase"]):
            total += batch.num_rows
            steps = batch.column("step").to_numpy()
            pcode, pdict = string_codes(batch.column("phase"))
            for i, p in enumerate(pdict):
                s = steps[pcode == i] if len(pdict) > 1 else steps
                if len(s):
                    lo_hi = spans.setdefault(p, [int(s.min()), int(s.max())])
                    lo_hi[0], lo_hi[1] = min(lo_hi[0], int(s.min())), max(lo_hi[1], int(s.max()))
    scalar_names: frozenset[str] = frozenset()
    if trace.has("scalars"):
        scalar_names = frozenset(pc.unique(trace.scalars.column("name")).to_pylist())
    npred = sum(b.num_rows for b in trace.scan("predictions", columns=["step"])) if trace.has("predictions") else 0
    prof = TraceProfile(trace, total, {k: (int(v[0]), int(v[1])) for k, v in spans.items()}, scalar_names, npred)
    _PROFILES[trace] = prof
    return prof


def training_phases(prof: TraceProfile) -> list[str]:
    """Phases whose records describe learning: ``['train']`` if present, else every phase."""
    if "train" in prof.phase_steps:
        return ["train"]
    return sorted(prof.phase_steps)


def training_grid(trace: Trace, max_buckets: int) -> tuple[list[str], StepGrid | None]:
    """The training phases of ``trace`` and the step grid over their span (None without records)."""
    prof = profile(trace)
    phases = training_phases(prof)
    span = prof.steps(phases)
    return phases, (StepGrid(*span, max_buckets=int(max_buckets)) if span else None)


def scan_records(
    trace: Trace,
    *,
    columns: list[str],
    batch_size: int = BATCH_ROWS,
    where: ds.Expression | None = None,
    **filters: Any,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches with only ``columns``, filters pushed down to Arrow.

    Args:
        trace: The trace.
        columns: Columns to read.
        batch_size: Maximum rows per batch. Defaults to :data:`BATCH_ROWS`.
        where: An extra dataset filter expression, evaluated by Arrow before any Python sees a row.
        **filters: ``kinds``, ``phases``, ``nodes``, ``steps``, ``slots`` (as in
            :meth:`tracefmt.Trace.scan`) and ``ranks``.

    Progress (rows per batch) goes to the callback installed with :func:`progress_to`.
    """
    callback = _PROGRESS.get()
    # Records naming a node outside the nodes table's id range (a damaged or hostile trace;
    # validate reports them as dangling) are dropped here, once for every consumer, so no
    # analyzer indexes its per-node arrays with them.
    id_range = _node_id_range(trace) if "node_id" in columns else None
    for batch in trace.scan("records", columns=columns, where=where, batch_size=batch_size, **filters):
        if id_range is not None and batch.num_rows:
            ids = batch.column("node_id")
            lo, hi = pc.min_max(ids).values()
            if ids.null_count or lo.as_py() < id_range[0] or hi.as_py() > id_range[1]:
                keep = pc.and_(pc.greater_equal(ids, id_range[0]), pc.less_equal(ids, id_range[1]))
                batch = batch.filter(pc.fill_null(keep, False))
        if batch.num_rows:
            if callback is not None:
                callback(batch.num_rows)
            yield batch


def _node_id_range(trace: Trace) -> tuple[int, int]:
    """Smallest and largest node_id of the nodes table ((0, -1) when it has none)."""
    if not trace.has("nodes") or not trace.nodes.num_rows:
        return (0, -1)
    lo, hi = pc.min_max(trace.nodes.column("node_id")).values()
    return (0 if lo.as_py() is None else max(0, lo.as_py()), -1 if hi.as_py() is None else hi.as_py())


class RecordView:
    """One scanned batch as every consumer sees it: columns decoded once and shared.

    Attributes:
        batch: The record batch.
        sid: Per row, the number of its (node_id, kind, slot) series in :attr:`index`.
        index: The series numbering shared by every consumer of the pass.
        steps: The ``step`` column as int64.
    """

    def __init__(self, batch: pa.RecordBatch, index: SeriesIndex) -> None:
        self.batch = batch
        self.index = index
        self.sid = index.ids(batch)
        self.steps = batch.column("step").to_numpy()
        self._f64: dict[str, np.ndarray] = {}
        self._rows: dict[tuple, np.ndarray | None] = {}
        self._phase: tuple[np.ndarray, list] | None = None
        self._hist: list[HistBlock] | None = None

    @property
    def num_rows(self) -> int:
        """Rows in the batch."""
        return self.batch.num_rows

    def f64(self, name: str) -> np.ndarray:
        """A numeric column as float64 (NaN for nulls), decoded once per batch; do not modify."""
        if name not in self._f64:
            self._f64[name] = column_f64(self.batch, name)
        return self._f64[name]

    def rows(self, *, kinds: Sequence[str] | None = None, phases: Sequence[str] | None = None) -> np.ndarray | None:
        """Row numbers of the given kinds and phases (None: every row)."""
        key = (tuple(kinds) if kinds is not None else None, tuple(phases) if phases is not None else None)
        if key in self._rows:
            return self._rows[key]
        mask: np.ndarray | None = None
        if kinds is not None:
            mask = self.index.kind_lut(kinds)[self.sid]
        if phases is not None:
            if self._phase is None:
                self._phase = string_codes(self.batch.column("phase"))
            codes, names = self._phase
            wanted = [i for i, p in enumerate(names) if p in phases]
            if len(wanted) != len(names):
                pm = np.isin(codes, wanted)
                mask = pm if mask is None else mask & pm
        out = None if mask is None or mask.all() else np.flatnonzero(mask)
        self._rows[key] = out
        return out

    def hist_blocks(self) -> list[HistBlock]:
        """The batch's histograms split by binning (computed once per batch)."""
        if self._hist is None:
            self._hist = histogram_blocks(self.batch) if "hist_counts" in self.batch.schema.names else []
        return self._hist


def shared_pass(trace: Trace, consumers: Sequence[Any]) -> None:
    """Feed every record batch to every consumer, in one scan of the union of their columns.

    Args:
        trace: The trace.
        consumers: Objects with ``columns`` (record columns they read) and ``consume(view)``.
    """
    if not consumers:
        return
    names = trace.records.schema.names
    cols = ["step", "phase", "node_id", "kind", "slot"]
    for c in consumers:
        cols.extend(x for x in c.columns if x in names)
    index = SeriesIndex()
    per_series = np.zeros(0, dtype=np.int64)
    for batch in scan_records(trace, columns=list(dict.fromkeys(cols))):
        view = RecordView(batch, index)
        counts = np.bincount(view.sid)
        if len(counts) > len(per_series):
            per_series = np.concatenate([per_series, np.zeros(len(counts) - len(per_series), dtype=np.int64)])
        per_series[: len(counts)] += counts
        for c in consumers:
            c.consume(view)
    kinds: dict[str, int] = {}
    for (_node, kind, _slot), n in zip(index.keys, per_series.tolist()):
        kinds[kind] = kinds.get(kind, 0) + n
    profile(trace).observe_kinds(kinds)


def column_has_values(trace: Trace, column: str, **filters: Any) -> bool:
    """True if ``column`` is non-null in at least one record (stops at the first one)."""
    if column not in trace.records.schema.names:
        return False
    for batch in scan_records(trace, columns=[column], **filters):
        if batch.column(0).null_count < batch.num_rows:
            return True
    return False


class SparseColumn:
    """A node_id-indexed column holding values only for the ids present (``default`` elsewhere).

    Indexing (by an int or an integer array) and ``len`` behave like the dense arrays of
    :func:`node_table`, whose callers test ``nid < len(column)``.
    """

    def __init__(self, ids: np.ndarray, values: np.ndarray, default: Any, size: int) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids, self.values, self.default, self.size = ids[order], values[order], default, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: Any) -> Any:
        k = np.asarray(key, dtype=np.int64)
        if not len(self.ids):
            return np.full(k.shape, self.default, dtype=self.values.dtype)[()]
        pos = np.clip(np.searchsorted(self.ids, k), 0, len(self.ids) - 1)
        hit = self.ids[pos] == k
        return np.where(hit, self.values[pos], np.asarray(self.default, dtype=self.values.dtype))[()]


def _sparse_node_table(n: pa.Table, ids: np.ndarray, size: int, op_type: list, classes: list) -> dict[str, Any]:
    def col(values: Any, default: Any, dtype: Any) -> SparseColumn:
        return SparseColumn(ids.astype(np.int64), np.asarray(values, dtype=dtype), default, size)

    return {
        "name": col(n.column("name").to_pylist(), None, object),
        "op_type": col(op_type, "", object),
        "op_class": col(classes, OpClass.OTHER, object),
        "order": col(n.column("order").fill_null(-1).to_numpy(), -1, np.int64),
        "param_count": col(n.column("param_count").fill_null(0).to_numpy(), 0, np.int64),
        "container": col(n.column("container").fill_null(False).to_numpy(zero_copy_only=False), False, bool),
        "known": col(np.ones(len(ids), dtype=bool), False, bool),
    }


def node_table(trace: Trace) -> dict[str, np.ndarray]:
    """The nodes table as numpy arrays indexed by node_id (dense lookup tables).

    Returns:
        ``name``, ``op_type``, ``op_class`` (object arrays; ``op_class`` holds
        :class:`~tracefmt.op_classes.OpClass` members, from the column or inferred from
        ``op_type`` where the trace does not state them), ``order`` (int64, -1 when null),
        ``param_count`` (int64), ``container`` (bool), each of length max(node_id) + 1;
        ``op_class_inferred`` (int): how many classes were inferred.
    """
    n = trace.nodes
    ids = n.column("node_id").to_numpy()
    size = int(ids.max()) + 1 if len(ids) else 0
    op_type = n.column("op_type").to_pylist()
    stated = n.column("op_class").to_pylist() if "op_class" in n.schema.names else [None] * len(ids)
    classes, inferred = node_op_classes(stated, op_type, n.column("container").to_pylist())
    if len(ids) and (int(ids.min()) < 0 or size > 4 * len(ids) + 4096):
        # Ids far larger than the table (a trace may declare node_id 2**31-1): a lookup over
        # the ids present, so memory follows the rows, never the largest id.
        return {**_sparse_node_table(n, ids, size, op_type, classes), "op_class_inferred": inferred}
    out = {
        "name": np.full(size, None, dtype=object),
        "op_type": np.full(size, "", dtype=object),
        "op_class": np.full(size, OpClass.OTHER, dtype=object),
        "order": np.full(size, -1, dtype=np.int64),
        "param_count": np.zeros(size, dtype=np.int64),
        "container": np.zeros(size, dtype=bool),
        "known": np.zeros(size, dtype=bool),
    }
    out["name"][ids] = n.column("name").to_pylist()
    out["op_type"][ids] = op_type
    out["op_class_inferred"] = inferred
    out["op_class"][ids] = np.array(classes, dtype=object)
    out["order"][ids] = n.column("order").fill_null(-1).to_numpy()
    out["param_count"][ids] = n.column("param_count").to_numpy()
    out["container"][ids] = n.column("container").to_numpy(zero_copy_only=False)
    out["known"][ids] = True
    return out
