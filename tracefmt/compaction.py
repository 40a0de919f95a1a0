"""Compaction: rewrite a rank's IPC segments as one sorted Parquet file (spec 'Compaction').

For each partition ``<table>/rank=<R>/`` of records, scalars and predictions,
:func:`compact_trace` writes every row of every segment (complete, or readable up to the
last complete batch of a killed writer) to one Parquet file sorted by the table's sort
key (records: node_id, kind, step), checks that it holds exactly as many rows as the
segments it replaces, and only then removes them. The order of operations keeps the trace
readable, with every row exactly once, if the process dies at any point:

1. write ``.part-NNNNN.parquet.tmp`` (hidden: readers ignore it) and fsync it;
2. verify its row count against the inputs (on mismatch: delete it, raise, change nothing);
3. write the journal ``.compact.json`` naming the output and the segments it replaces;
4. rename the temporary file to ``part-NNNNN.parquet`` (atomic): from now on readers
   ignore the replaced segments because the journal's output exists;
5. delete the replaced segments, then the journal.

An interrupted compaction is finished (after step 4) or undone (before it) by the next
:func:`compact_trace` call; readers are correct at every step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ._conform import conform_table
from .errors import TraceFormatError, UsageError
from .manifest import read_manifest
from .schema import TABLES
from .segments import JOURNAL, Segment, iter_batches, list_segments, open_segment

__all__ = ["compact_trace", "CompactionResult", "PartitionResult", "SORT_KEYS"]

#: Sort order of the compacted file of each table.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "records": ("node_id", "kind", "step", "phase", "slot", "call"),
    "scalars": ("name", "phase", "step"),
    "predictions": ("step", "phase"),
}


@dataclass
class PartitionResult:
    """What compaction did to one ``<table>/rank=<R>`` partition."""

    table: str
    rank: int
    rows: int
    segments_replaced: list[str]
    output: str
    bytes_before: int
    bytes_after: int


@dataclass
class CompactionResult:
    """The outcome of :func:`compact_trace`."""

    path: Path
    partitions: list[PartitionResult] = field(default_factory=list)
    #: Partitions left alone because they already were one Parquet file.
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's ``--format json`` output)."""
        return {"path": str(self.path), "partitions": [asdict(p) for p in self.partitions], "skipped": list(self.skipped)}


def compact_trace(
    path: str | Path,
    *,
    tables: tuple[str, ...] = ("records", "scalars", "predictions"),
    force: bool = False,
    compression: str = "zstd",
    chunk_rows: int = 2_000_000,
    row_group_rows: int = 262_144,
) -> CompactionResult:
    """Rewrite each rank's segments of ``tables`` to one sorted Parquet file, losslessly.

    Args:
        path: The trace directory.
        tables: Partitioned tables to compact. Defaults to records, scalars and predictions.
        force: Compact even if the manifest says a writer is still open (``complete`` is
            false). Only do this for a writer known to be dead. Defaults to False.
        compression: Parquet compression codec. Defaults to ``'zstd'``.
        chunk_rows: Rows sorted in memory at once; records are sorted in node_id ranges of
            about this many rows, which bounds memory. Defaults to 2,000,000.
        row_group_rows: Parquet row-group size. Defaults to 262,144.

    Returns:
        A :class:`CompactionResult` listing each partition rewritten.

    Raises:
        UsageError: an unknown table, or an open writer without ``force``.
        TraceFormatError: a segment is unreadable, or the rewritten row count differs.
    """
    root = Path(path)
    manifest = read_manifest(root)
    for t in tables:
        if t not in SORT_KEYS:
            raise UsageError(f"cannot compact table {t!r}; compactable tables: {', '.join(SORT_KEYS)}")
    if not manifest.get("complete", False) and not force:
        raise UsageError(f"{root}: the trace is not complete (a writer may still be open); compact it after the writer closes, or force it")
    result = CompactionResult(root)
    for table in tables:
        by_rank: dict[int, list[Segment]] = {}
        for rank_dir in sorted((root / table).glob("rank=*")):
            _recover(rank_dir)
        for seg in list_segments(root, table):
            by_rank.setdefault(seg.rank, []).append(seg)
        for rank, segs in by_rank.items():
            if len(segs) == 1 and segs[0].format == "parquet":
                result.skipped.append(f"{table}/rank={rank}")
                continue
            result.partitions.append(_compact_partition(root, table, rank, segs, compression=compression,
                                                        chunk_rows=chunk_rows, row_group_rows=row_group_rows))  # fmt: skip
    return result


def _recover(rank_dir: Path) -> None:
    """Finish or undo a compaction interrupted in ``rank_dir`` (see the module docstring)."""
    # A temporary output was never published (step 4 renames it): it is always garbage.
    for tmp in rank_dir.glob(".part-*.parquet.tmp"):
        tmp.unlink()
    journal = rank_dir / JOURNAL
    if not journal.is_file():
        return
    data = json.loads(journal.read_text())
    if (rank_dir / data["output"]).is_file():
        for name in data["replaces"]:
            (rank_dir / name).unlink(missing_ok=True)
    journal.unlink()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compact_partition(root: Path, table: str, rank: int, segs: list[Segment], *, compression: str,
                       chunk_rows: int, row_group_rows: int) -> PartitionResult:  # fmt: skip
    tdef = TABLES[table]
    rank_dir = segs[0].path.parent
    schema = tdef.schema
    opened = [open_segment(s) for s in segs]
    for s in opened:
        if not s.readable and not s.recoverable:
            raise TraceFormatError(f"{s.path}: {s.problem}; not compacted (move the file away to compact the rest)")
        if s.readable:
            schema = pa.schema(list(schema) + [f for f in s.schema if f.name not in schema.names], metadata=schema.metadata)
    parts = [_segment_table(s, schema) for s in opened if s.readable]
    rows_in = sum(p.num_rows for p in parts)
    source = ds.dataset(parts) if parts else ds.dataset(schema.empty_table())
    existing = [int(p.name[5:10]) for p in rank_dir.glob("part-*.*") if p.name[5:10].isdigit()]
    name = f"part-{max(existing, default=-1) + 1:05d}.parquet"
    tmp = rank_dir / f".{name}.tmp"
    key = [(k, "ascending") for k in SORT_KEYS[table]]
    with pq.ParquetWriter(tmp, schema, compression=compression) as writer:
        for expr in _chunks(source, table, chunk_rows):
            chunk = source.to_table(filter=expr)
            if chunk.num_rows:
                writer.write_table(chunk.sort_by(key), row_group_size=row_group_rows)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    rows_out = pq.ParquetFile(tmp).metadata.num_rows
    if rows_out != rows_in:
        tmp.unlink()
        raise TraceFormatError(f"{rank_dir}: compaction wrote {rows_out} rows but the segments hold {rows_in}; nothing was changed")
    replaced = [s.path.name for s in opened]
    bytes_before = sum(s.path.stat().st_size for s in opened)
    journal = rank_dir / JOURNAL
    journal_tmp = rank_dir / f"{JOURNAL}.tmp"
    journal_tmp.write_text(json.dumps({"output": name, "replaces": replaced}))
    os.replace(journal_tmp, journal)
    os.replace(tmp, rank_dir / name)
    _fsync_dir(rank_dir)
    for s in opened:
        s.path.unlink()
    journal.unlink()
    _fsync_dir(rank_dir)
    return PartitionResult(
        table, rank, rows_out, replaced, str((rank_dir / name).relative_to(root)), bytes_before, (rank_dir / name).stat().st_size
    )


def _segment_table(seg: Segment, schema: pa.Schema) -> pa.Table:
    """A segment's rows as a table of ``schema`` (zero-copy for memory-mapped IPC)."""
    batches = list(iter_batches(seg))
    t = pa.Table.from_batches(batches, schema=seg.schema) if batches else seg.schema.empty_table()
    return conform_table(t, schema, where=str(seg.path))


def _chunks(source: ds.Dataset, table: str, chunk_rows: int) -> list[ds.Expression | None]:
    """Filters that split ``source`` into node_id ranges of about ``chunk_rows`` rows, ascending.

    Sorting each range and writing the ranges in order yields a file sorted by node_id
    first, while only one range is in memory at a time.
    """
    if table != "records" or source.count_rows() <= chunk_rows:
        return [None]
    totals: dict[int, int] = {}
    for b in source.to_batches(columns=["node_id"]):
        vc = pc.value_counts(b.column(0))
        for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            totals[v] = totals.get(v, 0) + c
    ids = sorted(totals)
    counts = [totals[i] for i in ids]
    out: list[ds.Expression | None] = []
    start, acc = 0, 0
    for i, c in enumerate(counts):
        acc += int(c)
        if acc >= chunk_rows or i == len(counts) - 1:
            lo, hi = int(ids[start]), int(ids[i])
            out.append((pc.field("node_id") >= lo) & (pc.field("node_id") <= hi))
            start, acc = i + 1, 0
    return out
