"""Reading a trace: :func:`open` and :class:`Trace` (spec 'Reading')."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ._conform import conform_table
from .errors import TraceFormatError, TraceNotFoundError
from .manifest import read_manifest
from .schema import FINDINGS, NODES, TABLES
from .segments import Segment, list_segments, nodes_file, open_segment, read_whole_file, table_files, validate_columns

if TYPE_CHECKING:
    import pyarrow.dataset as ds


def _ds() -> Any:
    """pyarrow.dataset, imported on first use: it adds ~60 MiB to a process that only writes."""
    import pyarrow.dataset

    return pyarrow.dataset


__all__ = ["Trace", "open", "StepRange"]

StepRange = tuple[int | None, int | None]


def _as_set(values: Any) -> list | None:
    if values is None:
        return None
    if isinstance(values, (str, int)):
        return [values]
    return list(values)


class Trace:
    """A trace directory opened for reading; tables come back as Arrow.

    Small tables (``nodes``, ``scalars``, ``predictions``) are read whole; ``records`` is a
    lazy :class:`pyarrow.dataset.Dataset` over every segment (IPC files, IPC streams,
    Parquet, and footer-less segments of a writer that is still running or was killed).
    Use :meth:`scan` to stream record batches with filters pushed down.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self._segments: dict[str, list[Segment]] = {}

    def __repr__(self) -> str:
        return f"Trace({str(self.path)!r}, run_id={self.run_id!r})"

    def _repr_html_(self) -> str:
        """Notebook view: the summary ``tracefmt info`` prints, as a table."""
        import html

        from .summary import trace_summary

        s = trace_summary(self)
        rec, nodes = s.get("records", {}), s.get("nodes", {})
        steps = rec.get("steps", {})
        rows = [
            ("model", s.get("model")), ("run", s.get("run_id")), ("format", s.get("format_version")),
            ("producer", s["producer"].get("adapter") if isinstance(s.get("producer"), dict) else None), ("complete", s.get("complete")),
            ("nodes", f"{nodes.get('count')} ({nodes.get('edges')} edges, {nodes.get('param_count')} parameters)"),
            ("records", f"{rec.get('rows')} rows; kinds {rec.get('kinds')}; phases {rec.get('phases')}"),
            ("steps", f"{steps.get('count')} ({steps.get('first')}..{steps.get('last')})"),
            ("scalars", ", ".join(s.get("scalars", {}).get("names", [])) or "none"),
        ]  # fmt: skip
        body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<div><b>tracefmt trace</b> {html.escape(str(self.path))}<table>{body}</table></div>"

    @property
    def run_id(self) -> str:
        """The run identifier from the manifest."""
        return str(self.manifest.get("run_id", ""))

    @property
    def format_version(self) -> str:
        """The trace's ``format_version``."""
        return str(self.manifest["format_version"])

    @property
    def complete(self) -> bool:
        """False if a writer has not closed (still running, or killed)."""
        return bool(self.manifest.get("complete", False))

    # -- nodes -------------------------------------------------------------------------
    @cached_property
    def nodes(self) -> pa.Table:
        """The nodes table (sorted by node_id); empty for a trace of scalars or predictions only."""
        path = nodes_file(self.path)
        if path is None:
            if not self.has("records") and not self.has("tensors"):
                return NODES.schema.empty_table()  # the spec requires nodes only where rows refer to them
            raise TraceNotFoundError(f"{self.path}: missing {NODES.location}")
        try:
            table = read_whole_file(path)
        except (pa.ArrowException, OSError) as exc:
            raise TraceFormatError(f"{path}: not a Parquet file, Arrow IPC file or stream ({exc})") from None
        _check_required(table.schema, {n for n, c in zip(table.schema.names, table.columns) if c.null_count}, NODES, str(path))
        table = conform_table(table, _extended(NODES.schema, table.schema), where=str(path))
        return table.sort_by("node_id")

    @cached_property
    def node_names(self) -> dict[int, str]:
        """node_id -> name."""
        n = self.nodes
        return dict(zip(n.column("node_id").to_pylist(), n.column("name").to_pylist()))

    def edges(self) -> list[tuple[int, int, str]]:
        """Data-flow edges ``(src node_id, dst node_id, tensor name)`` implied by inputs/outputs."""
        n = self.nodes
        producers: dict[str, list[int]] = {}
        for nid, outs, cont in zip(n.column("node_id").to_pylist(), n.column("outputs").to_pylist(), n.column("container").to_pylist()):
            if not cont:
                for t in outs or []:
                    producers.setdefault(t, []).append(nid)
        out = []
        for nid, ins, cont in zip(n.column("node_id").to_pylist(), n.column("inputs").to_pylist(), n.column("container").to_pylist()):
            if cont:
                continue
            for t in ins or []:
                for src in producers.get(t, ()):
                    if src != nid:
                        out.append((src, nid, t))
        return out

    # -- partitioned tables ------------------------------------------------------------
    def segments(self, table: str) -> list[Segment]:
        """The opened segments of a partitioned table (cached)."""
        if table not in self._segments:
            # An open segment is read at once: a live writer may publish (rename) it at any
            # moment, so a lazy scan of its path later could find nothing there.
            self._segments[table] = [open_segment(s, load=s.open) for s in list_segments(self.path, table)]
        return self._segments[table]

    def dataset(self, table: str = "records", *, ranks: Iterable[int] | None = None, columns: Iterable[str] | None = None) -> ds.Dataset:
        """A lazy dataset over every segment of ``table`` (optionally only some ranks).

        Schemas are unified: columns missing from older segments read as null, extra
        columns of newer producers are kept.

        Args:
            table: A partitioned table. Defaults to ``'records'``.
            ranks: Ranks to include. Defaults to all.
            columns: The only columns the caller will read (or filter on): only these are
                validated first. Defaults to every column.

        Raises:
            TraceFormatError: a segment is unreadable or the data of a column is damaged.
        """
        tdef = TABLES[table]
        rank_set = set(ranks) if ranks is not None else None
        segs = [s for s in self.segments(table) if rank_set is None or s.rank in rank_set]
        for s in segs:
            if not s.readable and not s.recoverable:
                raise TraceFormatError(f"{s.path}: {s.problem}")
        # A segment cut before its schema (writer killed at once) holds no rows.
        segs = [s for s in segs if s.readable]
        schema = tdef.schema
        for s in segs:
            schema = _extended(schema, s.schema)
        children: list[ds.Dataset] = []
        files = [str(s.path) for s in segs if s.format == "file" and s.complete and not s.open]
        parquet = [str(s.path) for s in segs if s.format == "parquet"]
        loaded = [s for s in segs if not (s.format == "parquet" or (s.format == "file" and s.complete and not s.open))]
        wanted = None if columns is None else list(columns)
        for s in segs:
            if s.schema is not None:
                _check_types(s, tdef)
            validate_columns(s, wanted)
            _check_required(s.schema, s.null_columns, tdef, str(s.path))
        if files:
            children.append(_ds().dataset(files, format="arrow", schema=schema))
        if parquet:
            children.append(_ds().dataset(parquet, format="parquet", schema=schema))
        for s in loaded:
            t = pa.Table.from_batches(s.batches, schema=s.schema) if s.batches else s.schema.empty_table()
            children.append(_ds().dataset(conform_table(t, schema, where=str(s.path))))
        if not children:
            return _ds().dataset(schema.empty_table())
        if len(children) == 1:
            return children[0]
        return _ds().dataset(children)

    @property
    def records(self) -> ds.Dataset:
        """All observation records as a lazy :class:`pyarrow.dataset.Dataset`."""
        return self.dataset("records")

    @cached_property
    def scalars(self) -> pa.Table:
        """The scalars table, read whole (sorted by name, phase, step)."""
        return _whole(self, "scalars").sort_by([("name", "ascending"), ("phase", "ascending"), ("step", "ascending")])

    @cached_property
    def predictions(self) -> pa.Table:
        """The predictions table (empty when the trace has none)."""
        return _whole(self, "predictions")

    @property
    def findings(self) -> pa.Table | None:
        """Findings written into the trace by ``tracefmt analyze --out``, or None."""
        files = table_files(self.path / "findings")
        if not files:
            return None
        return pa.concat_tables([conform_table(read_whole_file(f), FINDINGS.schema, where=str(f)) for f in files])

    def has(self, table: str) -> bool:
        """True if ``table`` is present with at least one segment (or file)."""
        if table == "nodes":
            return nodes_file(self.path) is not None
        if table == "findings":
            return self.findings is not None
        return bool(self.segments(table))

    # -- scanning ----------------------------------------------------------------------
    def filter_expression(
        self,
        *,
        nodes: Any = None,
        kinds: Any = None,
        steps: StepRange | None = None,
        phases: Any = None,
        slots: Any = None,
    ) -> ds.Expression | None:
        """Build the dataset filter for the given selections (None when nothing is selected)."""
        expr: ds.Expression | None = None

        def add(e: ds.Expression) -> None:
            nonlocal expr
            expr = e if expr is None else expr & e

        node_list = _as_set(nodes)
        if node_list is not None:
            add(_member("node_id", [self._node_id(n) for n in node_list], pa.int32()))
        kind_list = _as_set(kinds)
        if kind_list is not None:
            add(_member("kind", [str(k) for k in kind_list], pa.string()))
        phase_list = _as_set(phases)
        if phase_list is not None:
            add(_member("phase", [str(p) for p in phase_list], pa.string()))
        slot_list = _as_set(slots)
        if slot_list is not None:
            add(_member("slot", [str(s) for s in slot_list], pa.string()))
        if steps is not None:
            lo, hi = steps
            if lo is not None:
                add(pc.field("step") >= lo)
            if hi is not None:
                add(pc.field("step") <= hi)
        return expr

    def _node_id(self, node: int | str) -> int:
        if isinstance(node, int):
            return node
        for nid, name in self.node_names.items():
            if name == node:
                return nid
        from .errors import UsageError

        names = list(self.node_names.values())
        raise UsageError(f"unknown node {node!r}; available: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")

    def scan(
        self,
        table: str = "records",
        *,
        columns: list[str] | None = None,
        nodes: Any = None,
        kinds: Any = None,
        steps: StepRange | None = None,
        ranks: Iterable[int] | None = None,
        phases: Any = None,
        slots: Any = None,
        where: ds.Expression | None = None,
        batch_size: int = 65536,
    ) -> Iterator[pa.RecordBatch]:
        """Stream record batches of ``table`` with filters pushed down (bounded memory).

        An unfiltered scan of closed IPC segments reads each segment directly, only the
        wanted columns' buffers, one batch at a time: several times faster than the dataset
        scanner and bounded by one batch of memory (bench/bench_analyze.py). Every other
        scan goes through :meth:`dataset` with Arrow's read-ahead kept small.

        Args:
            table: A partitioned table. Defaults to ``'records'``.
            columns: Columns to read. Defaults to all.
            nodes: node_ids or names to keep.
            kinds: Kinds to keep.
            steps: Inclusive ``(first, last)`` step range; either end may be None.
            ranks: Ranks to read (whole partitions are skipped).
            phases: Phases to keep.
            slots: Slots to keep.
            where: An extra :mod:`pyarrow.dataset` filter expression.
            batch_size: Maximum rows per batch. Defaults to 65536.
        """
        if table == "records":
            expr = self.filter_expression(nodes=nodes, kinds=kinds, steps=steps, phases=phases, slots=slots)
        else:
            expr = self.filter_expression(steps=steps, phases=phases)
        if where is not None:
            expr = where if expr is None else expr & where
        rank_set = set(ranks) if ranks is not None else None
        # Validated before use: the columns read and those the filters compare.
        filtered = {"node_id": nodes, "kind": kinds, "step": steps, "phase": phases, "slot": slots}
        needed = None if columns is None or where is not None else [*columns, *(c for c, v in filtered.items() if v is not None)]
        if expr is None:
            segs = [s for s in self.segments(table) if rank_set is None or s.rank in rank_set]
            if segs and all(s.format == "file" and s.complete and not s.open and s.schema is not None for s in segs):
                schema = self.dataset(table, ranks=rank_set, columns=needed).schema
                out_schema = pa.schema([schema.field(c) for c in (columns or schema.names)])
                yield from _read_ipc_segments(segs, out_schema, batch_size)
                return
        dataset = self.dataset(table, ranks=rank_set, columns=needed)
        # Arrow reads ahead 16 batches by default; two keep memory bounded at no cost in speed.
        batches = dataset.to_batches(columns=columns, filter=expr, batch_size=batch_size, batch_readahead=2, fragment_readahead=1)
        try:
            yield from batches
        except _SCAN_ERRORS as exc:
            raise _unreadable(self, table, exc) from None

    def read(self, table: str = "records", **filters: Any) -> pa.Table:
        """Like :meth:`scan` but returns one table."""
        batches = list(self.scan(table, **filters))
        if batches:
            return pa.Table.from_batches(batches)
        cols = filters.get("columns")
        schema = self.dataset(table, columns=cols or None).schema
        return (pa.schema([schema.field(c) for c in cols]) if cols else schema).empty_table()

    def tensors(self, **filters: Any) -> Iterator[tuple[dict[str, Any], Any]]:
        """Iterate raw tensors: ``(key dict, numpy array)`` per stored row.

        Filters: ``nodes``, ``kinds``, ``steps``, ``phases``, ``slots`` as in :meth:`scan`.
        """
        expr = self.filter_expression(**filters)
        for seg in self.segments("tensors"):
            if not seg.readable:
                if seg.recoverable:
                    continue
                raise TraceFormatError(f"{seg.path}: {seg.problem}")
            validate_columns(seg, None)
            _check_required(seg.schema, seg.null_columns, TABLES["tensors"], str(seg.path))
            table = _load(seg)
            if expr is not None:
                table = _ds().dataset(table).to_table(filter=expr)
            if not table.num_rows:
                continue
            try:
                column = table.column("values").combine_chunks()
                if column.storage.values.null_count:  # null elements would read back as zeros
                    raise TypeError("a tensor holds null elements")
                values = column.to_numpy_ndarray()
            except (KeyError, pa.ArrowException, AttributeError, TypeError) as exc:
                raise TraceFormatError(f"{seg.path}: table 'tensors' column 'values' is not a non-null fixed-shape tensor column ({exc})") from None
            yield from zip(table.drop_columns(["values"]).to_pylist(), values)

    # -- pandas helpers ----------------------------------------------------------------
    def to_pandas(self, table: str = "records", **filters: Any) -> Any:
        """The (filtered) table as a pandas DataFrame; needs pandas."""
        if table == "nodes":
            return self.nodes.to_pandas()
        if table in ("scalars", "predictions") and not filters:
            return getattr(self, table).to_pandas()
        return self.read(table, **filters).to_pandas()


def _member(column: str, values: list, type_: pa.DataType) -> ds.Expression:
    """``column`` in ``values``; a single value compares with == (faster than isin)."""
    if len(values) == 1:
        return pc.field(column) == pa.scalar(values[0], type_)
    return pc.field(column).isin(pa.array(values, type_))


def _read_ipc_segments(segs: list[Segment], out_schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Read closed IPC segments column-selectively; small batches are merged up to ``batch_size``."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for seg in segs:
        present = [c for c in out_schema.names if c in seg.schema.names]
        fields = sorted(seg.schema.get_field_index(c) for c in present)
        with pa.OSFile(str(seg.path)) as src:
            reader = ipc.open_file(src, options=ipc.IpcReadOptions(included_fields=fields, use_threads=False))
            for i in range(reader.num_record_batches):
                b = reader.get_batch(i)
                arrays = [b.column(c) if c in present else pa.nulls(b.num_rows, out_schema.field(c).type) for c in out_schema.names]
                b = pa.RecordBatch.from_arrays(arrays, schema=out_schema)
                for start in range(0, b.num_rows, batch_size):
                    part = b.slice(start, batch_size)
                    if not pending and part.num_rows == batch_size:
                        yield part
                        continue
                    pending.append(part)
                    rows += part.num_rows
                    if rows >= batch_size:
                        # Writers flush small batches; merging amortises per-batch work downstream.
                        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                        pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _load(seg: Segment) -> pa.Table:
    if seg.batches or not seg.complete:
        return pa.Table.from_batches(seg.batches, schema=seg.schema)
    return _ds().dataset(str(seg.path), format="parquet" if seg.format == "parquet" else "arrow").to_table()


#: What a dataset scan raises on data its validation could not foresee: a value another
#: engine's segment cannot hold in the table's type (a widened column), or a damaged
#: Parquet file whose column chunks disagree in length once assembled into batches.
_SCAN_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError)


def _unreadable(trace: Trace, table: str, exc: BaseException) -> TraceFormatError:
    return TraceFormatError(f"{trace.path}: table '{table}' cannot be read ({' '.join(str(exc).split())[:300]})")


def _whole(trace: Trace, table: str) -> pa.Table:
    """Every row of a small partitioned table (scalars, predictions)."""
    try:
        return trace.dataset(table).to_table()
    except _SCAN_ERRORS as exc:
        raise _unreadable(trace, table, exc) from None


def _extended(base: pa.Schema, other: pa.Schema | None) -> pa.Schema:
    """``base`` plus the fields of ``other`` it lacks (forward compatibility)."""
    if other is None:
        return base
    extra = [f for f in other if f.name not in base.names]
    return pa.schema(list(base) + extra, metadata=base.metadata) if extra else base


def _check_required(schema: pa.Schema | None, null_columns: set[str], tdef: Any, where: str) -> None:
    """Refuse a table lacking a required column or holding nulls in one (readers compute on them).

    ``null_columns`` holds the validated columns with nulls: a column nobody reads is not checked.
    """
    if schema is None:
        return
    for col in tdef.columns:
        if not col.nullable:
            if col.name not in schema.names:
                raise TraceFormatError(f"{where}: table '{tdef.name}' lacks required column '{col.name}'")
            if col.name in null_columns:
                raise TraceFormatError(f"{where}: table '{tdef.name}' column '{col.name}' holds nulls but is required")


def _check_types(seg: Segment, tdef: Any) -> None:
    """Refuse a column of another type than the table's, before a scan would cast it.

    A Parquet segment written by another engine may widen a type in the same family
    (int32 as int64, a dictionary-encoded or large string): the dataset casts those.
    """
    for f in seg.schema:
        if f.name in tdef.names and tdef.name != "tensors":
            want = tdef.column(f.name).type
            if f.type != want and not (seg.format == "parquet" and _same_family(f.type, want)):
                raise TraceFormatError(f"{seg.path}: table '{tdef.name}' column '{f.name}' has type {f.type}, expected {want}")


def _same_family(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether ``got`` is ``want`` up to width, string layout or dictionary encoding."""
    if pa.types.is_dictionary(got):
        got = got.value_type
    for family in (pa.types.is_integer, pa.types.is_floating):
        if family(got) and family(want):
            return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return got == want or (any(t(got) for t in strings) and any(t(want) for t in strings))


def open(path: str | Path, *, run: str | None = None, filesystem: Any = None) -> Trace:  # noqa: A001 - mirrors pyarrow.dataset.dataset / builtins style
    """Open a trace directory for reading, or one run of a lake (a directory of traces).

    Args:
        path: A trace directory or a lake (spec 'Lakes'): a local path, or a URI
            (``s3://``, ``gs://``, ``file://``; see :mod:`tracefmt.storage`).
        run: In a lake, the run_id (or directory name) of the run to open; a lake of one
            run needs none.
        filesystem: A :class:`pyarrow.fs.FileSystem` or fsspec filesystem holding
            ``path``. Defaults to the one the URI names (local for a plain path).

    Raises:
        TraceNotFoundError: ``path`` is neither a trace directory nor a lake.
        TraceFormatError: the manifest is invalid.
        UnsupportedVersionError: the trace's major version is unknown to this reader.
        UsageError: ``run`` is unknown in the lake, or needed and missing.
    """
    from .lake import is_lake, select_run
    from .storage import localize

    local = localize(path, filesystem=filesystem, run=run)
    if is_lake(local):
        return Trace(select_run(local, run))
    return Trace(local)
