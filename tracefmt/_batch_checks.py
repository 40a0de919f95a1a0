"""Vectorised conformance checks of one schema or one record batch (used by validation).

Each check looks at a whole batch at once with numpy/pyarrow compute and returns at most
one :class:`Issue` per defect and column, with the first offending row and the count.
Columns that are missing or have the wrong type are reported by :func:`check_schema` and
skipped by :func:`check_batch`, so one defect is reported once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._conform import ENUM_COLUMNS
from .enums import HistScheme, Severity
from .schema import FORMAT_VERSION, TableDef

_ENUMS = {**ENUM_COLUMNS, "severity": tuple(s.value for s in Severity), "hist_scheme": tuple(h.value for h in HistScheme)}
_STAT_COLUMNS = ("mean", "std", "min", "max", "abs_mean", "median")


@dataclass(frozen=True)
class Issue:
    """One defect found in a batch (row is batch-relative) or a schema (row is None)."""

    severity: Severity
    code: str
    column: str | None
    message: str
    row: int | None = None
    rows: int = 1


def _is_tensor_type(t: pa.DataType) -> bool:
    return isinstance(t, pa.FixedShapeTensorType)


def check_schema(tdef: TableDef, schema: pa.Schema) -> list[Issue]:
    """Missing required columns, wrong types, and (as infos) unknown extra columns."""
    out = []
    for col in tdef.columns:
        if col.name not in schema.names:
            if not col.nullable:
                out.append(Issue(Severity.ERROR, "missing-column", col.name, f"missing required column '{col.name}'"))
            continue
        got = schema.field(col.name).type
        if col.type == pa.null():
            if not _is_tensor_type(got):
                out.append(
                    Issue(Severity.ERROR, "wrong-type", col.name, f"column '{col.name}' has type {got}, expected arrow.fixed_shape_tensor")
                )
        elif got != col.type:
            out.append(Issue(Severity.ERROR, "wrong-type", col.name, f"column '{col.name}' has type {got}, expected {col.type}"))
    for name in schema.names:
        if name not in tdef.names:
            out.append(
                Issue(Severity.INFO, "unknown-column", name, f"column '{name}' is not part of format {FORMAT_VERSION} (readers ignore it)")
            )
    return out


class _Batch:
    """A batch plus helpers that see only the columns of the right type."""

    def __init__(self, tdef: TableDef, batch: pa.RecordBatch) -> None:
        self.tdef = tdef
        self.b = batch
        self.n = batch.num_rows
        self.issues: list[Issue] = []
        # The same column is looked at by several checks: convert it once.
        self._valid: dict[str, np.ndarray] = {}
        self._num: dict[tuple[str, float], np.ndarray] = {}

    def ok(self, name: str) -> bool:
        if name not in self.b.schema.names:
            return False
        want = self.tdef.column(name).type if name in self.tdef.names else None
        return want is None or self.b.schema.field(name).type == want

    def col(self, name: str) -> pa.Array:
        return self.b.column(name)

    def valid(self, name: str) -> np.ndarray:
        """Mask of non-null values (all False if the column is absent or mistyped)."""
        if name not in self._valid:
            arr = self.col(name) if self.ok(name) else None
            if arr is None:
                self._valid[name] = np.zeros(self.n, dtype=bool)
            elif arr.null_count == 0:
                self._valid[name] = np.ones(self.n, dtype=bool)
            else:
                self._valid[name] = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        return self._valid[name]

    def num(self, name: str, fill: float = 0) -> np.ndarray:
        """Column as numpy with nulls replaced by ``fill``."""
        key = (name, fill)
        if key not in self._num:
            arr = self.col(name)
            if arr.null_count:
                arr = pc.fill_null(arr, pa.scalar(fill, arr.type))
            self._num[key] = np.asarray(arr.to_numpy(zero_copy_only=False))
        return self._num[key]

    def flag(self, mask: np.ndarray, code: str, column: str | None, message: str, severity: Severity = Severity.ERROR) -> None:
        idx = np.flatnonzero(mask)
        if idx.size:
            self.issues.append(Issue(severity, code, column, message, int(idx[0]), int(idx.size)))


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths per row (0 for null), flat values, row index of each flat value)."""
    lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(arr)
    parents = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), dtype=np.int64)
    values = np.asarray(pc.fill_null(flat, 0).to_numpy(zero_copy_only=False))
    return lengths, values, parents


def _check_tensor_column(c: _Batch, name: str) -> None:
    """A raw-tensor column (checked by type in :func:`check_schema`) holds no null row or element."""
    if name not in c.b.schema.names or not _is_tensor_type(c.b.schema.field(name).type):
        return
    arr = c.col(name)
    if arr.null_count:
        c.flag(np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool), "null-value", name, f"column '{name}' must not contain nulls")
    storage = arr.storage
    if storage.values.null_count:
        # Null elements would read back as zeros: a tensor is stored whole or not at all.
        width = storage.type.list_size
        elems = storage.values.slice(storage.offset * width, c.n * width)
        elem_null = np.asarray(elems.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        rows = elem_null.reshape(c.n, width).any(axis=1) if width and elem_null.size == c.n * width else np.ones(c.n, dtype=bool)
        c.flag(rows, "null-element", name, f"column '{name}' holds a tensor with null elements")


def check_batch(tdef: TableDef, batch: pa.RecordBatch, *, context: dict[str, Any]) -> list[Issue]:
    """All row-level checks of ``batch`` of table ``tdef``.

    Args:
        tdef: The table definition.
        batch: The batch to check.
        context: ``node_ids`` (set of known node ids or None) and ``rank`` (the partition's rank).
    """
    c = _Batch(tdef, batch)
    for col in tdef.columns:
        if col.type == pa.null():
            _check_tensor_column(c, col.name)
            continue
        if not c.ok(col.name):
            continue
        if not col.nullable and c.col(col.name).null_count:
            c.flag(~c.valid(col.name), "null-value", col.name, f"column '{col.name}' must not contain nulls")
        allowed = _ENUMS.get(col.name)
        if allowed is not None:
            arr = c.col(col.name)
            bad = np.asarray(pc.invert(pc.is_in(arr, value_set=pa.array(allowed))).to_numpy(zero_copy_only=False), dtype=bool) & c.valid(
                col.name
            )
            if bad.any():
                value = arr[int(np.flatnonzero(bad)[0])].as_py()
                c.flag(bad, "bad-enum", col.name, f"column '{col.name}' has unknown value {value!r}; allowed: {', '.join(allowed)}")
    for name in ("step", "call", "seq", "param_count", "order", "node_id", "y_true", "y_pred"):
        if c.ok(name):
            c.flag(c.valid(name) & (c.num(name) < 0), "negative-value", name, f"column '{name}' must be >= 0")
    if "rank" in context and c.ok("rank"):
        c.flag(
            c.valid("rank") & (c.num("rank") != context["rank"]),
            "bad-rank",
            "rank",
            f"column 'rank' must equal the partition's rank {context['rank']}",
        )
    node_ids = context.get("node_ids")
    if node_ids is not None and c.ok("node_id"):
        known = pa.array(sorted(node_ids), pa.int32())
        dangling = np.asarray(pc.invert(pc.is_in(c.col("node_id"), value_set=known)).to_numpy(zero_copy_only=False), dtype=bool) & c.valid(
            "node_id"
        )
        if dangling.any():
            nid = c.col("node_id")[int(np.flatnonzero(dangling)[0])].as_py()
            c.flag(dangling, "dangling-reference", "node_id", f"node_id {nid} does not exist in nodes.node_id")
    if tdef.name == "records":
        _check_records(c)
    elif tdef.name == "nodes" and c.ok("attributes"):
        _check_attributes(c)
    elif tdef.name == "findings" and c.ok("step_first") and c.ok("step_last"):
        both = c.valid("step_first") & c.valid("step_last")
        c.flag(both & (c.num("step_first") > c.num("step_last")), "bad-value", "step_last", "step_last must be >= step_first")
    return c.issues


def _check_attributes(c: _Batch) -> None:
    bad = np.zeros(c.n, dtype=bool)
    for i, text in enumerate(c.col("attributes").to_pylist()):
        if text is None:
            continue
        try:
            bad[i] = not isinstance(json.loads(text), dict)
        except ValueError:
            bad[i] = True
    c.flag(bad, "bad-value", "attributes", "column 'attributes' must hold a JSON object")


def _check_records(c: _Batch) -> None:
    counts = ("numel", "nan_count", "inf_count", "zero_count", "pos_count")
    have_counts = all(c.ok(k) for k in counts)
    ndim = numel_ok = None
    if c.ok("shape"):
        ndim, dims, parents = _list_parts(c.col("shape"))
        neg = np.zeros(c.n, dtype=bool)
        neg[parents[dims < 0]] = True
        c.flag(neg, "bad-shape", "shape", "shape dimensions must be >= 0")
        if c.ok("numel"):
            prod = np.ones(c.n, dtype=np.int64)
            np.multiply.at(prod, parents, dims.astype(np.int64))
            numel_ok = prod == c.num("numel")
            c.flag(c.valid("numel") & ~numel_ok, "numel-mismatch", "numel", "numel must equal the product of shape")
    if have_counts:
        numel, nan, inf, zero, pos = (c.num(k) for k in counts)
        c.flag((nan < 0) | (inf < 0) | (zero < 0) | (pos < 0), "bad-counts", "nan_count", "element counts must be >= 0")
        numel_known = numel_ok if numel_ok is not None else np.ones(c.n, dtype=bool)
        c.flag(numel_known & ((nan + inf > numel) | (zero + pos + nan > numel)), "bad-counts", "numel",
               "element counts are inconsistent: need nan_count + inf_count <= numel and zero_count + pos_count + nan_count <= numel")  # fmt: skip
        # Rows whose counts are already wrong are left out of the checks derived from them,
        # so that one defect is reported once.
        consistent = (nan >= 0) & (inf >= 0) & (zero >= 0) & (pos >= 0) & (nan + inf <= numel) & (zero + pos + nan <= numel)
        if numel_ok is not None:
            consistent &= numel_ok
        finite = np.where(consistent, numel - nan - inf, -1)
        for name in _STAT_COLUMNS:
            if c.ok(name):
                c.flag(
                    c.valid(name) & (finite == 0),
                    "stat-without-elements",
                    name,
                    f"'{name}' must be null when the tensor has no finite elements",
                )
    else:
        finite = None
    for name in (*_STAT_COLUMNS, "l2"):
        if c.ok(name):
            c.flag(c.valid(name) & ~np.isfinite(c.num(name, 0.0)), "bad-stat", name, f"'{name}' must be a finite number or null")
    for name in ("std", "abs_mean", "l2", "mat_spectral", "mat_sv_mean", "mat_sv_var"):
        if c.ok(name):
            c.flag(c.valid(name) & (c.num(name, 0.0) < 0), "bad-stat", name, f"'{name}' must be >= 0")
    if c.ok("min") and c.ok("max"):
        c.flag(c.valid("min") & c.valid("max") & (c.num("min", 0.0) > c.num("max", 0.0)), "bad-stat", "min", "'min' must be <= 'max'")
    _check_histograms(c, finite)
    if ndim is not None:
        _check_channels(c, ndim)
        for name in ("mat_trace", "mat_spectral", "mat_sv_mean", "mat_sv_var"):
            if c.ok(name):
                c.flag(c.valid(name) & (ndim != 2), "bad-matrix-stat", name, f"'{name}' is defined for 2-D tensors only")


def _check_histograms(c: _Batch, finite: np.ndarray | None) -> None:
    names = ("hist_scheme", "hist_lo", "hist_hi", "hist_counts")
    if not all(c.ok(k) for k in names):
        return
    scheme = c.col("hist_scheme")
    has = c.valid("hist_scheme")
    c.flag(~has & (c.valid("hist_lo") | c.valid("hist_hi") | c.valid("hist_counts")), "bad-histogram", "hist_scheme",
           "hist_lo/hist_hi/hist_counts given without hist_scheme")  # fmt: skip
    if not has.any():
        return
    complete = c.valid("hist_lo") & c.valid("hist_hi") & c.valid("hist_counts")
    c.flag(has & ~complete, "bad-histogram", "hist_counts", "a histogram needs hist_lo, hist_hi and hist_counts")
    is_sym = np.asarray(pc.fill_null(pc.equal(scheme, "symlog"), False).to_numpy(zero_copy_only=False), dtype=bool)
    is_lin = np.asarray(pc.fill_null(pc.is_in(scheme, value_set=pa.array(["linear", "abs_linear", "edges"])), False).to_numpy(zero_copy_only=False), dtype=bool)
    lo, hi = c.num("hist_lo", 0.0), c.num("hist_hi", 0.0)
    nbins, values, parents = _list_parts(c.col("hist_counts"))
    rows = has & complete
    with np.errstate(invalid="ignore"):
        bad_range = rows & ~(np.isfinite(lo) & np.isfinite(hi) & (lo < hi))
    c.flag(bad_range, "bad-histogram", "hist_lo", "histogram range must satisfy lo < hi, both finite")
    c.flag(rows & is_sym & (lo <= 0), "bad-histogram", "hist_lo", "a symlog histogram needs hist_lo > 0")
    c.flag(rows & is_sym & ((nbins < 5) | ((nbins - 3) % 2 != 0)), "bad-histogram", "hist_counts",
           "a symlog histogram needs an odd number of bins >= 5")  # fmt: skip
    c.flag(rows & is_lin & (nbins < 1), "bad-histogram", "hist_counts", "a linear histogram needs at least one bin")
    _check_explicit_edges(c, scheme, rows, nbins, lo, hi)
    negative = np.zeros(c.n, dtype=bool)
    negative[parents[values < 0]] = True
    c.flag(rows & negative, "bad-histogram", "hist_counts", "histogram counts must be >= 0")
    if finite is None:
        return
    sums = np.zeros(c.n, dtype=np.int64)
    np.add.at(sums, parents, values.astype(np.int64))
    known = finite >= 0
    c.flag(rows & known & is_sym & (sums != finite), "bad-histogram", "hist_counts",
           "symlog histogram counts must sum to the number of finite elements (numel - nan_count - inf_count)")  # fmt: skip
    c.flag(
        rows & known & is_lin & (sums > finite),
        "bad-histogram",
        "hist_counts",
        "linear histogram counts must not exceed the number of finite elements",
    )


def _check_explicit_edges(c: _Batch, scheme: Any, rows: np.ndarray, nbins: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Scheme ``edges`` (format 1.1): ``hist_edges`` holds n + 1 ascending finite edges from lo to hi."""
    is_edges = np.asarray(pc.fill_null(pc.equal(scheme, "edges"), False).to_numpy(zero_copy_only=False), dtype=bool)
    if not c.ok("hist_edges"):
        c.flag(rows & is_edges, "bad-histogram", "hist_edges", "a histogram of scheme 'edges' needs the hist_edges column")
        return
    has = c.valid("hist_edges")
    c.flag(has & ~is_edges, "bad-histogram", "hist_edges", "hist_edges is given only with hist_scheme 'edges'")
    c.flag(rows & is_edges & ~has, "bad-histogram", "hist_edges", "a histogram of scheme 'edges' needs hist_edges")
    lengths, values, parents = _list_parts(c.col("hist_edges"))
    check = rows & is_edges & has
    c.flag(check & (lengths != nbins + 1), "bad-histogram", "hist_edges", "hist_edges must have len(hist_counts) + 1 entries")
    bad = np.zeros(c.n, dtype=bool)
    bad[parents[~np.isfinite(values)]] = True
    same_row = parents[1:] == parents[:-1]
    bad[parents[1:][same_row & ~(values[1:] > values[:-1])]] = True
    c.flag(check & bad, "bad-histogram", "hist_edges", "hist_edges must be finite and strictly ascending")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ok = check & (lengths >= 2)
    first = np.full(c.n, np.nan)
    last = np.full(c.n, np.nan)
    first[ok] = values[starts[ok]]
    last[ok] = values[starts[ok] + lengths[ok] - 1]
    c.flag(ok & ((first != lo) | (last != hi)), "bad-histogram", "hist_lo", "hist_lo and hist_hi must equal the first and last of hist_edges")


def _check_channels(c: _Batch, ndim: np.ndarray) -> None:
    if not c.ok("channel_axis"):
        return
    has_axis = c.valid("channel_axis")
    axis = c.num("channel_axis").astype(np.int64)
    vectors = [k for k in ("channel_pos_frac", "channel_mean") if c.ok(k)]
    for k in vectors:
        c.flag(c.valid(k) & ~has_axis, "bad-channel", k, f"'{k}' needs channel_axis")
    bad_axis = has_axis & ((axis < 0) | (axis >= ndim))
    c.flag(bad_axis, "bad-channel", "channel_axis", "channel_axis must satisfy 0 <= channel_axis < len(shape)")
    _, dims, _ = _list_parts(c.col("shape"))
    starts = np.concatenate([[0], np.cumsum(ndim)[:-1]]).astype(np.int64)
    good = has_axis & ~bad_axis
    channels = np.full(c.n, -1, dtype=np.int64)
    channels[good] = dims[starts[good] + axis[good]]
    for k in vectors:
        lengths, values, parents = _list_parts(c.col(k))
        c.flag(good & c.valid(k) & (lengths != channels), "bad-channel", k, f"'{k}' must have shape[channel_axis] entries")
        if k == "channel_pos_frac":
            out = np.zeros(c.n, dtype=bool)
            with np.errstate(invalid="ignore"):
                out[parents[~((values >= 0) & (values <= 1))]] = True
            c.flag(out, "bad-channel", k, "'channel_pos_frac' values must lie in [0, 1]")
