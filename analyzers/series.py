"""Bounded-memory per-layer step series, accumulated batch by batch with numpy.

A trace may hold millions of steps; analyzers keep, per series (a node, kind and slot),
at most ``max_buckets`` step buckets of equal width (:class:`StepGrid`), each holding the
count, sum, minimum and maximum of the metrics it tracks (:class:`BucketStats`), or the
sum of its histograms (:class:`BucketHistograms`). Memory is then set by the model's
size and the bucket count, never by the trace's length; for runs shorter than
``max_buckets`` steps a bucket is exactly one step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracefmt.histogram import edges as hist_edges

__all__ = [
    "StepGrid",
    "SeriesIndex",
    "BucketStats",
    "BucketHistograms",
    "HistBlock",
    "LayerSeries",
    "histogram_blocks",
    "collect_series",
    "column_f64",
    "finite_count",
    "rms",
    "nanmedian_rows",
]


class StepGrid:
    """Equal-width step buckets covering ``[first, last]``, at most ``max_buckets`` of them.

    Args:
        first: First step.
        last: Last step.
        max_buckets: Upper bound on the number of buckets.
    """

    def __init__(self, first: int, last: int, max_buckets: int = 512) -> None:
        span = max(1, int(last) - int(first) + 1)
        self.first = int(first)
        self.last = int(last)
        self.width = max(1, -(-span // max(1, int(max_buckets))))
        self.size = -(-span // self.width)

    def index(self, steps: np.ndarray) -> np.ndarray:
        """Bucket number of each step (clipped into the grid)."""
        return np.clip((np.asarray(steps, dtype=np.int64) - self.first) // self.width, 0, self.size - 1)

    def start(self, bucket: int | np.ndarray) -> int | np.ndarray:
        """First step of a bucket."""
        return self.first + np.asarray(bucket) * self.width if not isinstance(bucket, int) else self.first + bucket * self.width

    def end(self, bucket: int) -> int:
        """Last step of a bucket."""
        return min(self.last, self.first + (bucket + 1) * self.width - 1)

    @property
    def starts(self) -> np.ndarray:
        """First step of every bucket."""
        return self.first + np.arange(self.size, dtype=np.int64) * self.width


def column_f64(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    col = batch.column(name)
    if col.null_count == 0 and pa.types.is_floating(col.type):
        return col.to_numpy()
    return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


class SeriesIndex:
    """Dense numbering of the distinct (node_id, kind, slot)-style keys met in batches.

    Args:
        columns: The key columns: ``node_id`` (integer) and any string columns.
    """

    def __init__(self, columns: Sequence[str] = ("node_id", "kind", "slot")) -> None:
        self.columns = tuple(columns)
        self.keys: list[tuple] = []
        self._ids: dict[tuple, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def ids(self, batch: pa.RecordBatch) -> np.ndarray:
        """The series number of every row of ``batch`` (new keys are numbered as met)."""
        codes: list[np.ndarray] = []
        values: list[list] = []
        for name in self.columns:
            col = batch.column(name)
            if pa.types.is_integer(col.type):
                arr = col.to_numpy(zero_copy_only=False)
                uniq, inv = np.unique(arr, return_inverse=True)
                codes.append(inv.astype(np.int64))
                values.append(uniq.tolist())
            else:
                enc = pc.dictionary_encode(col)
                if isinstance(enc, pa.ChunkedArray):
                    enc = enc.combine_chunks()
                codes.append(enc.indices.to_numpy(zero_copy_only=False).astype(np.int64))
                values.append(enc.dictionary.to_pylist())
        combined = np.zeros(batch.num_rows, dtype=np.int64)
        radix = 1
        for c, v in zip(reversed(codes), reversed(values)):
            combined += c * radix
            radix *= max(1, len(v))
        present, inverse = np.unique(combined, return_inverse=True)
        lut = np.empty(len(present), dtype=np.int64)
        for i, code in enumerate(present.tolist()):
            key = []
            rest = code
            for v in reversed(values):
                key.append(v[rest % max(1, len(v))])
                rest //= max(1, len(v))
            key_t = tuple(reversed(key))
            sid = self._ids.get(key_t)
            if sid is None:
                sid = self._ids[key_t] = len(self.keys)
                self.keys.append(key_t)
            lut[i] = sid
        return lut[inverse]


class BucketStats:
    """Per (series, bucket): count, sum, min and max of each metric, NaN values ignored.

    Args:
        grid: The step buckets.
        metrics: Metric names.
    """

    def __init__(self, grid: StepGrid, metrics: Sequence[str]) -> None:
        self.grid = grid
        self.metrics = tuple(metrics)
        self._cap = 0
        self.count: dict[str, np.ndarray] = {}
        self.sum: dict[str, np.ndarray] = {}
        self.min: dict[str, np.ndarray] = {}
        self.max: dict[str, np.ndarray] = {}
        self._grow(16)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap)
        nb = self.grid.size
        for store, fill in ((self.count, 0.0), (self.sum, 0.0), (self.min, np.inf), (self.max, -np.inf)):
            for m in self.metrics:
                new = np.full((cap, nb), fill)
                if m in store:
                    new[: self._cap] = store[m]
                store[m] = new
        self._cap = cap

    def add(self, series: np.ndarray, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Accumulate rows: their series numbers, steps and metric values."""
        if not len(series):
            return
        top = int(series.max()) + 1
        if top > self._cap:
            self._grow(top)
        nb = self.grid.size
        flat = series * nb + self.grid.index(steps)
        size = self._cap * nb
        for m in self.metrics:
            v = values[m]
            ok = ~np.isnan(v)
            if not ok.any():
                continue
            idx, vv = (flat, v) if ok.all() else (flat[ok], v[ok])
            self.count[m].reshape(-1)[:] += np.bincount(idx, minlength=size)
            self.sum[m].reshape(-1)[:] += np.bincount(idx, weights=vv, minlength=size)
            np.minimum.at(self.min[m].reshape(-1), idx, vv)
            np.maximum.at(self.max[m].reshape(-1), idx, vv)

    def mean(self, metric: str, n_series: int) -> np.ndarray:
        """(series, bucket) means of ``metric``; NaN where a bucket has no value."""
        c = self.count[metric][:n_series]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, self.sum[metric][:n_series] / np.where(c > 0, c, 1), np.nan)

    def extreme(self, metric: str, n_series: int, *, which: str) -> np.ndarray:
        """(series, bucket) minimum (``which='min'``) or maximum; NaN where empty."""
        store = self.min if which == "min" else self.max
        c = self.count[metric][:n_series]
        return np.where(c > 0, store[metric][:n_series], np.nan)


@dataclass(frozen=True)
class HistBlock:
    """Rows of a batch that share one histogram binning.

    Attributes:
        rows: Row numbers within the batch.
        counts: (rows, bins) int64 counts.
        key: (scheme, lo, hi, bins) of the binning.
    """

    rows: np.ndarray
    counts: np.ndarray
    key: tuple[str, float, float, int]

    def edges(self) -> np.ndarray:
        """The binning's bin edges."""
        return hist_edges(*self.key)


def histogram_blocks(batch: pa.RecordBatch) -> list[HistBlock]:
    """Split a batch's histograms (``hist_scheme``, ``hist_lo``, ``hist_hi``, ``hist_counts``) by binning."""
    counts = batch.column("hist_counts")
    if counts.null_count == batch.num_rows:
        return []
    valid = np.flatnonzero(counts.is_valid().to_numpy(zero_copy_only=False))
    scheme = batch.column("hist_scheme").to_numpy(zero_copy_only=False)[valid]
    lo = column_f64(batch, "hist_lo")[valid]
    hi = column_f64(batch, "hist_hi")[valid]
    lengths = pc.list_value_length(counts).to_numpy(zero_copy_only=False)[valid]
    sub = counts.take(pa.array(valid)) if len(valid) < batch.num_rows else counts
    flat = pc.list_flatten(sub).to_numpy(zero_copy_only=False)
    uniform = len(valid) and (lengths == lengths[0]).all() and (scheme == scheme[0]).all() and (lo == lo[0]).all() and (hi == hi[0]).all()
    if uniform:
        n = int(lengths[0])
        return [HistBlock(valid, flat.reshape(len(valid), n), (str(scheme[0]), float(lo[0]), float(hi[0]), n))]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    blocks: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(scheme.tolist(), lo.tolist(), hi.tolist(), lengths.tolist())):
        blocks.setdefault(key, []).append(i)
    out = []
    for key, idx in blocks.items():
        n = int(key[3])
        rows = np.asarray(idx)
        take = (offsets[rows][:, None] + np.arange(n)[None, :]).reshape(-1)
        out.append(HistBlock(valid[rows], flat[take].reshape(len(rows), n), (str(key[0]), float(key[1]), float(key[2]), n)))
    return out


class BucketHistograms:
    """Per (series, bucket) sum of histograms; each series keeps the first binning it meets.

    Args:
        grid: The step buckets.
    """

    def __init__(self, grid: StepGrid) -> None:
        self.grid = grid
        self.sums: dict[int, np.ndarray] = {}
        self.binning: dict[int, tuple[str, float, float, int]] = {}
        self.mismatched = 0

    def add(self, series: np.ndarray, steps: np.ndarray, block: HistBlock) -> None:
        """Accumulate the histograms of ``block`` (``series``/``steps`` indexed by batch row)."""
        sid = series[block.rows]
        bucket = self.grid.index(steps[block.rows])
        n = block.key[3]
        order = np.lexsort((bucket, sid))
        sid, bucket, counts = sid[order], bucket[order], block.counts[order]
        change = np.flatnonzero((np.diff(sid) != 0) | (np.diff(bucket) != 0)) + 1
        starts = np.concatenate([[0], change])
        sums = np.add.reduceat(counts, starts, axis=0)
        for s in np.unique(sid[starts]).tolist():
            if s not in self.sums:
                self.sums[s] = np.zeros((self.grid.size, n), dtype=np.float64)
                self.binning[s] = block.key
        for j, start in enumerate(starts.tolist()):
            s = int(sid[start])
            if self.binning[s] != block.key:
                self.mismatched += 1
                continue
            self.sums[s][bucket[start]] += sums[j]


@dataclass
class LayerSeries:
    """Bucketed statistics of every (node_id, kind, slot) series met in a scan.

    Attributes:
        index: The series keys.
        stats: The bucketed metrics.
        grid: The step buckets.
    """

    index: SeriesIndex
    stats: BucketStats
    grid: StepGrid

    @property
    def keys(self) -> list[tuple]:
        """(node_id, kind, slot) of each series, by series number."""
        return self.index.keys

    def mean(self, metric: str) -> np.ndarray:
        """(series, bucket) means of ``metric`` (NaN where empty)."""
        return self.stats.mean(metric, len(self.index))

    def extreme(self, metric: str, which: str) -> np.ndarray:
        """(series, bucket) minimum or maximum of ``metric`` (NaN where empty)."""
        return self.stats.extreme(metric, len(self.index), which=which)


def collect_series(
    trace: Any,
    *,
    grid: StepGrid,
    columns: Sequence[str],
    metrics: Callable[[pa.RecordBatch], dict[str, np.ndarray]],
    on_batch: Callable[[pa.RecordBatch, np.ndarray], None] | None = None,
    key_columns: Sequence[str] = ("node_id", "kind", "slot"),
    **filters: Any,
) -> LayerSeries:
    """Scan records once and bucket per-series metrics.

    Args:
        trace: The trace.
        grid: Step buckets.
        columns: Record columns the metric function reads (keys and ``step`` are added).
        metrics: Batch -> {metric name: float64 array, one value per row, NaN to skip}.
        on_batch: Also called with each batch and its rows' series numbers.
        key_columns: Columns that identify a series. Defaults to (node_id, kind, slot).
        **filters: Passed to :func:`tracefmt.analyzers.scan.scan_records` (kinds, phases, ...).
    """
    from .scan import scan_records

    cols = list(dict.fromkeys([*key_columns, "step", *columns]))
    index = SeriesIndex(key_columns)
    stats: BucketStats | None = None
    for batch in scan_records(trace, columns=cols, **filters):
        sid = index.ids(batch)
        values = metrics(batch)
        if stats is None:
            stats = BucketStats(grid, list(values))
        stats.add(sid, batch.column("step").to_numpy(), values)
        if on_batch is not None:
            on_batch(batch, sid)
    return LayerSeries(index, stats or BucketStats(grid, []), grid)


def finite_count(batch: pa.RecordBatch) -> np.ndarray:
    """Per row: elements that are neither NaN nor Inf."""
    return (batch.column("numel").to_numpy() - batch.column("nan_count").to_numpy() - batch.column("inf_count").to_numpy()).astype(np.float64)


def rms(batch: pa.RecordBatch) -> np.ndarray:
    """Per row: root mean square of the finite elements, ``l2 / sqrt(finite count)`` (NaN if none)."""
    n = finite_count(batch)
    l2 = column_f64(batch, "l2")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, l2 / np.sqrt(np.where(n > 0, n, 1)), np.nan)


def nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise median ignoring NaN (NaN for all-NaN rows), without warnings."""
    out = np.full(a.shape[0], np.nan)
    for i, row in enumerate(a):
        r = row[~np.isnan(row)]
        if len(r):
            out[i] = float(np.median(r))
    return out
