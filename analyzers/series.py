"""Bounded-memory per-layer step series, accumulated batch by batch with numpy.

A trace may hold millions of steps; analyzers keep, per series (a node, kind and slot),
at most ``max_buckets`` step buckets of equal width (:class:`StepGrid`), each holding the
count, sum, minimum and maximum of the metrics it tracks (:class:`BucketStats`), or the
sum of its histograms (:class:`BucketHistograms`). Memory is then set by the model's
size and the bucket count, never by the trace's length; for runs shorter than
``max_buckets`` steps a bucket is exactly one step.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    "column_f64",
    "finite_count",
    "rms",
    "nanmedian_rows",
    "string_codes",
    "KINDS",
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
    """Dense numbering of the distinct (node_id, kind, slot) series met in record batches."""

    columns = ("node_id", "kind", "slot")

    def __init__(self) -> None:
        self.keys: list[tuple[int, str, str]] = []
        self._ids: dict[tuple, int] = {}
        self._kind_luts: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def ids(self, batch: pa.RecordBatch) -> np.ndarray:
        """The series number of every row of ``batch`` (new keys are numbered as met)."""
        node = batch.column("node_id").to_numpy(zero_copy_only=False).astype(np.int64)
        kc, kd = string_codes(batch.column("kind"), KINDS)
        sc, sd = string_codes(batch.column("slot"))
        nk, ns = max(1, len(kd)), max(1, len(sd))
        top = int(node.max()) + 1 if len(node) else 1
        combined = (node * nk + kc) * ns + sc
        if len(node) and node.min() >= 0 and top * nk * ns <= 1 << 22:
            # Dense lookup: no sort, one pass (node ids are small, kinds and slots few).
            present = np.flatnonzero(np.bincount(combined, minlength=top * nk * ns))
            lut = np.empty(top * nk * ns, dtype=np.int64)
            lut[present] = [self._id(int(c), nk, ns, kd, sd) for c in present.tolist()]
            return lut[combined]
        present, inverse = np.unique(combined, return_inverse=True)
        lut = np.array([self._id(int(c), nk, ns, kd, sd) for c in present.tolist()], dtype=np.int64)
        return lut[inverse]

    def _id(self, code: int, nk: int, ns: int, kd: list, sd: list) -> int:
        key = (code // (nk * ns), kd[(code // ns) % nk], sd[code % ns])
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = len(self.keys)
            self.keys.append(key)
        return sid

    def kind_lut(self, kinds: Sequence[str]) -> np.ndarray:
        """Boolean per series number: is its kind one of ``kinds``."""
        key = tuple(kinds)
        lut = self._kind_luts.get(key)
        if lut is None or len(lut) != len(self.keys):
            wanted = set(kinds)
            lut = np.array([k[1] in wanted for k in self.keys], dtype=bool)
            self._kind_luts[key] = lut
        return lut


def string_codes(col: pa.Array | pa.ChunkedArray, vocabulary: Sequence[str] = ()) -> tuple[np.ndarray, list]:
    """Integer codes (int64) and their values for a string column.

    Two exact shortcuts before Arrow's hash-based dictionary encoding: a column holding one
    value (the phase of a training batch), and a ``vocabulary`` whose words have distinct
    lengths (the record kinds), where the length gives the code and one vectorised
    comparison with the expected words confirms it.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if n and col.null_count == 0 and pa.types.is_string(col.type):
        first = col[0].as_py()
        if pc.all(pc.equal(col, first)).as_py():
            return np.zeros(n, dtype=np.int64), [first]
        lengths = {len(w.encode()) for w in vocabulary}
        if vocabulary and len(lengths) == len(vocabulary):
            by_len = np.full(max(lengths) + 2, len(vocabulary), dtype=np.int64)
            for i, w in enumerate(vocabulary):
                by_len[len(w.encode())] = i
            code = by_len[np.minimum(pc.binary_length(col).to_numpy(zero_copy_only=False), len(by_len) - 1)]
            if (code < len(vocabulary)).all():
                expected = pa.array(list(vocabulary), pa.string()).take(pa.array(code))
                if pc.all(pc.equal(col, expected)).as_py():
                    return code, list(vocabulary)
    enc = pc.dictionary_encode(col)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


#: The record kinds (spec enumeration), whose lengths happen to differ: see :func:`string_codes`.
KINDS = ("activation", "gradient", "input", "weight", "weight_grad", "weight_update")


class BucketStats:
    """Per (series, bucket): count, sum, min and max of each metric, NaN values ignored.

    Args:
        grid: The step buckets.
        metrics: Metric names.
        extremes: Metrics whose minimum and maximum are kept too. Defaults to every metric.
    """

    def __init__(self, grid: StepGrid, metrics: Sequence[str], *, extremes: Sequence[str] | None = None) -> None:
        self.grid = grid
        self.metrics = tuple(metrics)
        self.extremes = tuple(self.metrics if extremes is None else extremes)
        self._cap = 0
        self.count: dict[str, np.ndarray] = {}
        self.sum: dict[str, np.ndarray] = {}
        self.min: dict[str, np.ndarray] = {}
        self.max: dict[str, np.ndarray] = {}
        self._grow(16)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap)
        nb = self.grid.size
        for store, fill, names in ((self.count, 0.0, self.metrics), (self.sum, 0.0, self.metrics), (self.min, np.inf, self.extremes), (self.max, -np.inf, self.extremes)):
            for m in names:
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
        every: np.ndarray | None = None
        for m in self.metrics:
            v = values[m]
            ok = ~np.isnan(v)
            if ok.all():
                if every is None:
                    every = np.bincount(flat, minlength=size)
                idx, vv, counts = flat, v, every
            elif ok.any():
                idx, vv = flat[ok], v[ok]
                counts = np.bincount(idx, minlength=size)
            else:
                continue
            self.count[m].reshape(-1)[:] += counts
            self.sum[m].reshape(-1)[:] += np.bincount(idx, weights=vv, minlength=size)
            if m in self.min:
                np.minimum.at(self.min[m].reshape(-1), idx, vv)
                np.maximum.at(self.max[m].reshape(-1), idx, vv)

    def mean(self, metric: str) -> np.ndarray:
        """(series, bucket) means of ``metric``; NaN where a bucket has no value."""
        c = self.count[metric]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, self.sum[metric] / np.where(c > 0, c, 1), np.nan)

    def extreme(self, metric: str, *, which: str) -> np.ndarray:
        """(series, bucket) minimum (``which='min'``) or maximum; NaN where empty."""
        store = self.min if which == "min" else self.max
        return np.where(self.count[metric] > 0, store[metric], np.nan)

    def filled(self) -> np.ndarray:
        """Series numbers with at least one value of any metric."""
        if not self.metrics:
            return np.zeros(0, dtype=np.int64)
        any_count = sum(self.count[m].sum(axis=1) for m in self.metrics)
        return np.flatnonzero(any_count > 0)


@dataclass(frozen=True)
class HistBlock:
    """Rows of a batch that share one histogram binning.

    Attributes:
        rows: Row numbers within the batch.
        counts: (rows, bins) int64 counts.
        key: (scheme, lo, hi, bins, explicit edges or None) of the binning.
    """

    rows: np.ndarray
    counts: np.ndarray
    key: tuple[str, float, float, int, tuple[float, ...] | None]

    def edges(self) -> np.ndarray:
        """The binning's bin edges."""
        return hist_edges(*self.key)


def histogram_blocks(batch: pa.RecordBatch) -> list[HistBlock]:
    """Split a batch's histograms (``hist_scheme``, ``hist_lo``, ``hist_hi``, ``hist_counts``) by binning."""
    counts = batch.column("hist_counts")
    if counts.null_count == batch.num_rows:
        return []
    valid = np.flatnonzero(counts.is_valid().to_numpy(zero_copy_only=False)) if counts.null_count else np.arange(batch.num_rows)
    scheme_col = batch.column("hist_scheme")
    if scheme_col.null_count:
        scheme_col = scheme_col.fill_null("")
    scode, sdict = string_codes(scheme_col)
    scode = scode[valid]
    lo = column_f64(batch, "hist_lo")[valid]
    hi = column_f64(batch, "hist_hi")[valid]
    offsets = counts.offsets.to_numpy()
    lengths = (offsets[1:] - offsets[:-1])[valid]
    # Null lists have no values: the flattened values are exactly the valid rows' counts.
    flat = pc.list_flatten(counts).to_numpy(zero_copy_only=False)
    uniform = len(valid) and (lengths == lengths[0]).all() and (scode == scode[0]).all() and (lo == lo[0]).all() and (hi == hi[0]).all()
    if uniform:
        n = int(lengths[0])
        blocks = [HistBlock(valid, flat.reshape(len(valid), n), (str(sdict[scode[0]]), float(lo[0]), float(hi[0]), n, None))]
    else:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        keys, group = np.unique(np.stack([scode.astype(np.float64), lo, hi, lengths.astype(np.float64)], axis=1), axis=0, return_inverse=True)
        blocks = []
        for g, (code, glo, ghi, glen) in enumerate(keys.tolist()):
            n = int(glen)
            rows = np.flatnonzero(group.reshape(-1) == g)
            take = (starts[rows][:, None] + np.arange(n)[None, :]).reshape(-1)
            blocks.append(HistBlock(valid[rows], flat[take].reshape(len(rows), n), (str(sdict[int(code)]), float(glo), float(ghi), n, None)))
    if "edges" not in sdict:
        return blocks
    return [part for b in blocks for part in (_split_by_edges(batch, b) if b.key[0] == "edges" else [b])]


def _split_by_edges(batch: pa.RecordBatch, block: HistBlock) -> list[HistBlock]:
    """Split a block of scheme ``edges`` by its rows' explicit ``hist_edges`` (format 1.1)."""
    if "hist_edges" not in batch.schema.names:
        return []
    col = batch.column("hist_edges").take(pa.array(block.rows))
    groups: dict[tuple[float, ...], list[int]] = {}
    for i, e in enumerate(col.to_pylist()):
        if e is not None and len(e) == block.key[3] + 1:
            groups.setdefault(tuple(e), []).append(i)
    out = []
    for e, idx in groups.items():
        sel = np.asarray(idx, dtype=np.int64)
        out.append(HistBlock(block.rows[sel], block.counts[sel], (*block.key[:4], e)))
    return out


class BucketHistograms:
    """Per (series, bucket) sum of histograms; each series keeps the first binning it meets.

    Storage is one dense float64 array (series, bucket, bin) per binning width, so
    accumulation is vectorised: rows are grouped by (series, bucket) with one sort.

    Args:
        grid: The step buckets.
    """

    def __init__(self, grid: StepGrid) -> None:
        self.grid = grid
        self.binning: dict[int, tuple[str, float, float, int]] = {}
        self._acc: dict[int, np.ndarray] = {}
        self._key_ids: dict[tuple, int] = {}
        self._series_key = np.full(0, -1, dtype=np.int64)
        self.mismatched = 0

    @property
    def sums(self) -> dict[int, np.ndarray]:
        """Series number -> (bucket, bin) summed counts, for every series with a histogram."""
        return {s: self._acc[k[3]][s] for s, k in sorted(self.binning.items())}

    def add(self, series: np.ndarray, steps: np.ndarray, block: HistBlock) -> None:
        """Accumulate ``block``'s histograms (``series``/``steps`` indexed by batch row)."""
        sid = series[block.rows]
        n = block.key[3]
        if not len(sid) or n <= 0:  # a histogram without bins (a nonconforming trace) adds nothing
            return
        kid = self._key_ids.setdefault(block.key, len(self._key_ids))
        top = int(sid.max()) + 1
        if len(self._series_key) < top:
            self._series_key = np.concatenate([self._series_key, np.full(top - len(self._series_key), -1, dtype=np.int64)])
        new = np.unique(sid[self._series_key[sid] < 0])
        self._series_key[new] = kid
        for s in new.tolist():
            self.binning[s] = block.key
        same = self._series_key[sid] == kid
        counts, rows = block.counts, block.rows
        if not same.all():
            self.mismatched += int((~same).sum())
            sid, counts, rows = sid[same], counts[same], rows[same]
            if not len(sid):
                return
        nb = self.grid.size
        need = int(sid.max()) + 1
        acc = self._acc.get(n)
        if acc is None or len(acc) < need:
            grown = np.zeros((max(need, 2 * (0 if acc is None else len(acc))), nb, n))
            if acc is not None:
                grown[: len(acc)] = acc
            acc = self._acc[n] = grown
        flat = sid * nb + self.grid.index(steps[rows])
        order = np.argsort(flat, kind="stable")
        flat = flat[order]
        starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
        acc.reshape(-1, n)[flat[starts]] += np.add.reduceat(counts[order], starts, axis=0)


class LayerSeries:
    """The bucketed statistics of a chosen set of series (e.g. the activation series).

    Args:
        index: The shared series numbering.
        stats: The bucketed metrics (indexed by series number).
        ids: Series numbers to expose, in order. Defaults to every series with data.
    """

    def __init__(self, index: SeriesIndex, stats: BucketStats, ids: Sequence[int] | np.ndarray | None = None) -> None:
        self.index = index
        self.stats = stats
        self.grid = stats.grid
        if ids is None:
            ids = stats.filled()
        self.ids = np.asarray(ids, dtype=np.int64)

    @property
    def keys(self) -> list[tuple]:
        """(node_id, kind, slot) of each exposed series, in order."""
        return [self.index.keys[i] for i in self.ids.tolist()]

    def mean(self, metric: str) -> np.ndarray:
        """(series, bucket) means of ``metric`` (NaN where empty)."""
        return self.stats.mean(metric)[self.ids]

    def extreme(self, metric: str, which: str) -> np.ndarray:
        """(series, bucket) minimum or maximum of ``metric`` (NaN where empty)."""
        return self.stats.extreme(metric, which=which)[self.ids]

    def count(self, metric: str) -> np.ndarray:
        """(series, bucket) number of values of ``metric``."""
        return self.stats.count[metric][self.ids]


def finite_count(view: Any) -> np.ndarray:
    """Per row of a record view: elements that are neither NaN nor Inf."""
    return view.f64("numel") - view.f64("nan_count") - view.f64("inf_count")


def rms(view: Any) -> np.ndarray:
    """Per row of a record view: root mean square of the finite elements, ``l2 / sqrt(finite count)`` (NaN if none)."""
    n = finite_count(view)
    l2 = view.f64("l2")
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
