"""Checking a trace against the spec: :func:`validate_trace` (spec section 'Validation').

The validator collects every problem it finds instead of stopping at the first: each
:class:`Problem` names its severity, table, column, row and file. Errors make a trace
invalid; warnings (a truncated segment of a killed writer, ``complete: false``) and infos
(unknown extra columns or tables, which readers accept) do not. Records are streamed one
record batch at a time, so memory stays bounded whatever the trace's size; a defect that
repeats is reported once per file and column with its first row and the number of rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import safe_io
from ._batch_checks import Issue, check_batch, check_schema
from .enums import Severity
from .errors import TraceFormatError, TraceNotFoundError
from .manifest import MANIFEST, SUPPORTED_MAJOR, json_type_matches, parse_version
from .schema import FINDINGS, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FIELDS, NODES, TABLES
from .segments import (
    NODES_FILES,
    PARTITIONED,
    Segment,
    iter_batches,
    list_segments,
    nodes_file,
    open_segment,
    rank_of_dir,
    read_whole_file,
    table_files,
)

__all__ = ["Problem", "ValidationReport", "validate_trace"]

# "dynamics" holds the training-dynamics tables of spec/DYNAMICS.md (section 19).
_KNOWN_ENTRIES = {MANIFEST, *NODES_FILES, "findings", "dynamics", *PARTITIONED}


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about a trace.

    Attributes:
        severity: ``error`` (the trace does not conform), ``warning`` (conforms, but data
            may be missing, e.g. a truncated segment) or ``info``.
        code: Stable machine-readable code, e.g. ``missing-column``, ``bad-enum``.
        message: One sentence naming the defect.
        table: The table concerned (``manifest`` for manifest.json), if any.
        column: The column (or manifest field) concerned, if any.
        row: 0-based row within ``file`` of the first offending row, if any.
        file: Path of the file concerned, relative to the trace directory.
        rows: How many rows show this defect (1 when ``row`` is set and it is unique).
    """

    severity: Severity
    code: str
    message: str
    table: str | None = None
    column: str | None = None
    row: int | None = None
    file: str | None = None
    rows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready dict."""
        d = asdict(self)
        d["severity"] = self.severity.value
        return d

    def __str__(self) -> str:
        where = ":".join(str(x) for x in (self.file, self.table, self.column) if x is not None)
        row = f" row {self.row}" if self.row is not None else ""
        return f"{self.severity.value}: {where}{row}: {self.message}" if where or row else f"{self.severity.value}: {self.message}"


@dataclass
class ValidationReport:
    """The result of :func:`validate_trace`: every problem found, and the verdict."""

    path: Path
    problems: list[Problem] = field(default_factory=list)
    #: Rows checked per table.
    rows_checked: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        """Problems of severity error."""
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        """Problems of severity warning."""
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def valid(self) -> bool:
        """True when the trace conforms: no errors (warnings and infos allowed)."""
        return not self.errors

    @property
    def codes(self) -> set[str]:
        """The set of problem codes found."""
        return {p.code for p in self.problems}

    def raise_if_invalid(self) -> None:
        """Raise :class:`TraceFormatError` with the first error if the trace is invalid."""
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more errors)" if len(self.errors) > 1 else ""
            raise TraceFormatError(f"{self.path}: {str(first)[len('error: ') :]}{more}")

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (the CLI's ``--format json`` output)."""
        return {
            "path": str(self.path),
            "valid": self.valid,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "rows_checked": dict(self.rows_checked),
            "problems": [p.as_dict() for p in self.problems],
        }

    def __str__(self) -> str:
        verdict = "valid" if self.valid else "INVALID"
        lines = [f"{self.path}: {verdict} ({len(self.errors)} errors, {len(self.warnings)} warnings)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class _Collector:
    """Accumulates issues, merging repeats of one defect in one file into one problem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self._merged: dict[tuple, list] = {}

    def add(
        self,
        severity: Severity,
        code: str,
        message: str,
        *,
        table: str | None = None,
        column: str | None = None,
        row: int | None = None,
        file: Path | str | None = None,
        rows: int | None = None,
    ) -> None:
        rel = None
        if file is not None:
            p = Path(file)
            rel = str(p.relative_to(self.root)) if p.is_absolute() and p.is_relative_to(self.root) else str(p)
        self.problems.append(Problem(severity, code, message, table, column, row, rel, rows))

    def add_issue(self, issue: Issue, *, table: str, file: Path, row_offset: int) -> None:
        key = (str(file), table, issue.code, issue.column)
        entry = self._merged.get(key)
        if entry is None:
            self._merged[key] = [issue, row_offset + issue.row if issue.row is not None else None, issue.rows, table, file]
        else:
            entry[2] += issue.rows

    def finish(self) -> list[Problem]:
        for issue, row, rows, table, file in self._merged.values():
            more = f" ({rows} rows in all)" if rows > 1 else ""
            self.add(issue.severity, issue.code, issue.message + more, table=table, column=issue.column, row=row, file=file, rows=rows)
        self._merged.clear()
        # Errors first, then warnings and infos; within a severity, by file and row.
        self.problems.sort(key=lambda p: (-p.severity.rank, p.file or "", p.row if p.row is not None else -1))
        return self.problems


def validate_trace(path: str | Path, *, tables: Iterable[str] | None = None, filesystem: Any = None) -> ValidationReport:
    """Check the trace at ``path`` against the spec and report every problem.

    Args:
        path: The trace directory, or its URI (``s3://``, ``gs://``, ``file://``).
        tables: Check only these tables (the manifest is always checked). Defaults to all.
        filesystem: A pyarrow or fsspec filesystem holding ``path``. Defaults to the URI's.

    Returns:
        A :class:`ValidationReport`; ``report.valid`` is False when any error was found.

    Raises:
        TraceNotFoundError: ``path`` is not a directory or has no ``manifest.json``.
        TraceFormatError: ``manifest.json`` is not readable JSON (nothing can be checked).
    """
    from .storage import localize

    root = localize(path, filesystem=filesystem)
    if not root.is_dir():
        raise TraceNotFoundError(f"{path}: not a trace directory (no such directory)")
    if not (root / MANIFEST).is_file():
        raise TraceNotFoundError(f"{root}: not a trace directory (missing {MANIFEST})")
    manifest = safe_io.read_json(root / MANIFEST)
    root = root.resolve()
    report = ValidationReport(root)
    out = _Collector(report.path)
    selected = set(tables) if tables is not None else None
    if _check_manifest(manifest, out):
        ws = manifest.get("world_size", 1)
        # An invalid world_size is reported once (above), not again for every partition.
        world_size = ws if isinstance(ws, int) and not isinstance(ws, bool) and ws >= 1 else 1
        node_ids = _check_nodes(root, out, report, required=_has_rows_referencing_nodes(root))
        for name in PARTITIONED:
            if selected is None or name in selected:
                _check_partitioned(root, name, out, report, node_ids, world_size)
        if selected is None or "findings" in selected:
            _check_findings(root, out, report)
        for entry, kind in safe_io.special_entries(root):
            out.add(Severity.ERROR, "not-a-regular-file", f"'{entry.name}' is {kind}; a trace holds only regular files and directories", file=entry)
        for entry in safe_io.plain_entries(root):
            if entry.name not in _KNOWN_ENTRIES and not entry.name.startswith("."):
                out.add(
                    Severity.INFO, "unknown-entry", f"'{entry.name}' is not part of format {FORMAT_VERSION} (readers ignore it)", file=entry
                )
    report.problems = out.finish()
    return report


def _check_manifest(m: Any, out: _Collector) -> bool:
    """Check manifest.json; return False when the rest of the trace must not be read."""
    where = MANIFEST
    if not isinstance(m, dict):
        out.add(Severity.ERROR, "manifest-not-object", "manifest.json must be a JSON object", table="manifest", file=where)
        return False
    for name, (jtype, required, _doc) in MANIFEST_FIELDS.items():
        if name not in m:
            if required:
                out.add(Severity.ERROR, "missing-field", f"missing required field '{name}'", table="manifest", column=name, file=where)
            continue
        value = m[name]
        if not json_type_matches(value, jtype):
            out.add(
                Severity.ERROR,
                "wrong-type",
                f"field '{name}' must be a JSON {jtype}, got {value!r}",
                table="manifest",
                column=name,
                file=where,
            )
    if "format" in m and m["format"] != FORMAT_NAME:
        out.add(
            Severity.ERROR,
            "bad-format",
            f"field 'format' must be {FORMAT_NAME!r}, got {m['format']!r}",
            table="manifest",
            column="format",
            file=where,
        )
    version = m.get("format_version")
    if isinstance(version, str):
        try:
            major, minor = parse_version(version)
        except TraceFormatError:
            out.add(
                Severity.ERROR,
                "bad-version",
                f"format_version must be 'MAJOR.MINOR', got {version!r}",
                table="manifest",
                column="format_version",
                file=where,
            )
            return False
        if major != SUPPORTED_MAJOR:
            out.add(Severity.ERROR, "unsupported-version",
                    f"unsupported major format_version {version}; this validator knows {SUPPORTED_MAJOR}.x (nothing else was checked)",
                    table="manifest", column="format_version", file=where)  # fmt: skip
            return False
        if minor > int(FORMAT_VERSION.split(".")[1]):
            out.add(Severity.INFO, "newer-minor", f"format_version {version} is newer than {FORMAT_VERSION}; columns added since are not checked",
                    table="manifest", column="format_version", file=where)  # fmt: skip
    elif "format_version" in m:
        return False
    if isinstance(m.get("created"), str):
        try:
            datetime.fromisoformat(m["created"].replace("Z", "+00:00"))
        except ValueError:
            out.add(
                Severity.ERROR,
                "bad-value",
                f"field 'created' must be an ISO 8601 time, got {m['created']!r}",
                table="manifest",
                column="created",
                file=where,
            )
    if isinstance(m.get("run_id"), str) and not m["run_id"]:
        out.add(Severity.ERROR, "bad-value", "field 'run_id' must not be empty", table="manifest", column="run_id", file=where)
    producer = m.get("producer")
    if isinstance(producer, dict) and not isinstance(producer.get("adapter"), str):
        out.add(
            Severity.ERROR,
            "missing-field",
            "field 'producer' must have a string 'adapter'",
            table="manifest",
            column="producer",
            file=where,
        )
    ws = m.get("world_size")
    if isinstance(ws, int) and not isinstance(ws, bool) and ws < 1:
        out.add(
            Severity.ERROR, "bad-value", f"field 'world_size' must be >= 1, got {ws}", table="manifest", column="world_size", file=where
        )
    if m.get("complete") is False:
        out.add(Severity.WARNING, "incomplete", "complete is false: a writer is still open or was killed (data after its last flushed batch is missing)",
                table="manifest", column="complete", file=where)  # fmt: skip
    return True


def _has_rows_referencing_nodes(root: Path) -> bool:
    try:
        return any(list_segments(root, t) for t in ("records", "tensors"))
    except TraceFormatError:
        return True  # a linked table directory: reported by the table's own check


def _check_nodes(root: Path, out: _Collector, report: ValidationReport, *, required: bool) -> set[int] | None:
    """Check the nodes table; return the set of node ids (None when there is no usable nodes table)."""
    path = nodes_file(root)
    if path is None:
        if required:
            out.add(Severity.ERROR, "missing-table", f"a nodes table ({' or '.join(NODES_FILES)}) is required when records or tensors exist", table="nodes", file=NODES.location)
        return None
    try:
        table = read_whole_file(path)
    except TraceFormatError as exc:
        out.add(Severity.ERROR, "unreadable", str(exc).removeprefix(f"{path}: "), table="nodes", file=path)
        return None
    except (pa.ArrowException, OSError) as exc:
        out.add(Severity.ERROR, "unreadable", f"not a Parquet file, Arrow IPC file or stream ({exc})", table="nodes", file=path)
        return None
    report.rows_checked["nodes"] = table.num_rows
    _check_whole_table(NODES, table, out, path)
    if not ("node_id" in table.schema.names and table.schema.field("node_id").type == NODES.column("node_id").type):
        return None
    # Nulls in node_id are reported by the batch checks; duplicates are judged on the rest.
    id_col = table.column("node_id")
    rows_of = np.flatnonzero(np.asarray(id_col.is_valid().to_numpy(zero_copy_only=False), dtype=bool))
    ids = id_col.drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    for nid, cnt in zip(uniq[counts > 1], counts[counts > 1]):
        dup_rows = rows_of[ids == nid]
        out.add(Severity.ERROR, "duplicate-node-id", f"node_id {int(nid)} appears {int(cnt)} times (rows {', '.join(map(str, dup_rows[:5]))})",
                table="nodes", column="node_id", row=int(dup_rows[1]), file=path, rows=int(cnt))  # fmt: skip
    id_set = set(int(i) for i in uniq)
    if "parent" in table.schema.names and table.schema.field("parent").type == pa.int32():
        parents = table.column("parent").to_pylist()
        parent_of = {}
        for row, (nid, parent) in enumerate(zip(ids.tolist(), parents)):
            if parent is None:
                continue
            if parent not in id_set:
                out.add(Severity.ERROR, "dangling-reference", f"node {nid}: parent {parent} does not exist in nodes.node_id",
                        table="nodes", column="parent", row=row, file=path)  # fmt: skip
            elif parent == nid:
                out.add(Severity.ERROR, "parent-cycle", f"node {nid} is its own parent", table="nodes", column="parent", row=row, file=path)
            else:
                parent_of[nid] = parent
        _check_parent_cycles(parent_of, out, path)
    return id_set


def _check_parent_cycles(parent_of: dict[int, int], out: _Collector, path: Path) -> None:
    state: dict[int, int] = {}  # 1 = on the current chain, 2 = known to reach a root
    for start in parent_of:
        chain = []
        node = start
        while node in parent_of and state.get(node) is None:
            state[node] = 1
            chain.append(node)
            node = parent_of[node]
        if state.get(node) == 1:
            out.add(
                Severity.ERROR, "parent-cycle", f"the parent chain of node {node} is a cycle", table="nodes", column="parent", file=path
            )
        for n in chain:
            state[n] = 2


def _check_partitioned(
    root: Path, name: str, out: _Collector, report: ValidationReport, node_ids: set[int] | None, world_size: int
) -> None:
    tdef = TABLES[name]
    table_dir = root / name
    if table_dir.exists() and not table_dir.is_dir():
        out.add(Severity.ERROR, "bad-layout", f"'{name}' must be a directory of rank-<R> partitions", table=name, file=table_dir)
        return
    if table_dir.is_dir():
        for entry in sorted(table_dir.iterdir()):
            if not entry.name.startswith(".") and not (entry.is_dir() and rank_of_dir(entry.name) is not None):
                out.add(Severity.WARNING, "bad-layout", f"'{entry.name}' is not a rank-<R> partition directory (ignored by readers)", table=name, file=entry)
    rows = 0
    try:
        segments = list_segments(root, name)
    except TraceFormatError as exc:
        out.add(Severity.ERROR, "unreadable", str(exc), table=name, file=table_dir)
        return
    for seg in segments:
        open_segment(seg, full=True)
        if seg.rank >= world_size:
            out.add(
                Severity.ERROR,
                "bad-rank",
                f"partition rank={seg.rank} but the manifest's world_size is {world_size}",
                table=name,
                file=seg.path,
            )
        if not _check_segment_readable(seg, out):
            continue
        for issue in check_schema(tdef, seg.schema):
            out.add_issue(issue, table=name, file=seg.path, row_offset=0)
        context = {"node_ids": node_ids, "rank": seg.rank}
        offset = 0
        keys: list[pa.RecordBatch] = []
        key_cols = list(tdef.key) if tdef.key and all(c in seg.schema.names for c in tdef.key) else []
        for batch in iter_batches(seg):
            for issue in check_batch(tdef, batch, context=context):
                out.add_issue(issue, table=name, file=seg.path, row_offset=offset)
            if key_cols:
                keys.append(batch.select(key_cols))
            offset += batch.num_rows
        rows += offset
        if keys:
            _check_duplicate_keys(pa.Table.from_batches(keys), key_cols, out, name, seg.path)
    if rows or table_dir.is_dir():
        report.rows_checked[name] = rows


def _check_duplicate_keys(keys: pa.Table, key_cols: list[str], out: _Collector, table: str, path: Path) -> None:
    """Rows of one segment that share their key (spec 3.2: a key identifies a row).

    Only the key columns of one segment are held, so memory stays bounded by the segment size.
    """
    if keys.num_rows < 2:
        return
    # Grouping on dictionary indices instead of strings is about three times faster.
    encoded = pa.table(
        [pc.dictionary_encode(c.combine_chunks()).indices if pa.types.is_string(c.type) else c for c in keys.columns], names=key_cols
    )
    try:
        counts = encoded.group_by(key_cols).aggregate([([], "count_all")])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return  # key columns of the wrong type are reported by the schema check
    dup = counts.filter(pc.greater(counts.column("count_all"), 1))
    if dup.num_rows:
        # Decode the first repeated key by finding one of its rows.
        match = None
        for name in key_cols:
            value = dup.column(name)[0]
            # Null keys group together: match them with is_null (null == null is null, not true).
            eq = pc.is_null(encoded.column(name)) if not value.is_valid else pc.fill_null(pc.equal(encoded.column(name), value), False)
            match = eq if match is None else pc.and_(match, eq)
        example = keys.filter(match).slice(0, 1).to_pylist()
        first = example[0] if example else "?"
        extra = int(pc.sum(dup.column("count_all")).as_py()) - dup.num_rows
        out.add(Severity.ERROR, "duplicate-key", f"{extra} rows repeat the key of another row, e.g. {first}",
                table=table, column=",".join(key_cols), file=path, rows=extra)  # fmt: skip


def _check_segment_readable(seg: Segment, out: _Collector) -> bool:
    """Report an incomplete or unreadable segment; return True if it has a schema."""
    if seg.complete:
        return True
    if seg.schema is not None:
        out.add(Severity.WARNING, "truncated-segment", f"truncated segment: {seg.problem}", table=seg.table, file=seg.path)
        return True
    if seg.recoverable:
        out.add(Severity.WARNING, "truncated-segment", f"truncated segment: {seg.problem}", table=seg.table, file=seg.path)
    else:
        out.add(Severity.ERROR, "unreadable", f"unreadable segment: {seg.problem}", table=seg.table, file=seg.path)
    return False


def _check_whole_table(tdef: Any, table: pa.Table, out: _Collector, path: Path) -> int:
    """Schema and per-batch checks of a table read whole (nodes, findings); returns its rows."""
    for issue in check_schema(tdef, table.schema):
        out.add_issue(issue, table=tdef.name, file=path, row_offset=0)
    offset = 0
    for batch in table.to_batches():
        for issue in check_batch(tdef, batch, context={}):
            out.add_issue(issue, table=tdef.name, file=path, row_offset=offset)
        offset += batch.num_rows
    return offset


def _check_findings(root: Path, out: _Collector, report: ValidationReport) -> None:
    fdir = root / "findings"
    if not safe_io.is_plain_dir(fdir):
        return
    rows = 0
    for path in table_files(fdir):
        try:
            table = read_whole_file(path)
        except (pa.ArrowException, OSError, TraceFormatError) as exc:
            out.add(Severity.ERROR, "unreadable", str(exc).removeprefix(f"{path}: "), table="findings", file=path)
            continue
        rows += _check_whole_table(FINDINGS, table, out, path)
    report.rows_checked["findings"] = rows
