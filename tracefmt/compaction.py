"""Compaction: rewrite a rank's segments as one sorted Parquet file (spec 'Compaction').

For each partition ``<table>/rank-<R>/`` of records, scalars and predictions,
:func:`compact_trace` writes every row of every segment (closed, open, or readable up to
the last complete batch of a killed writer) to one Parquet file sorted by the table's
sort key (records: node_id, kind, step), in a new hidden directory beside the partition,
checks that it holds exactly as many rows as the segments it replaces, and then switches
the two directories in one atomic step. Every reader, tracefmt or an outside engine that
knows nothing of tracefmt, sees either all the old segments or the one new file, never
both and never neither:

1. write ``<table>/.rank-<R>.new-<random>/part-NNNNN.parquet`` and flush it to disk;
2. verify its row count against the inputs (on mismatch: delete it, raise, change nothing);
3. exchange the two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``): the
   partition now holds the new file and the hidden directory the old segments;
4. delete the hidden directory.

Where the exchange is not available (another OS, a file system without it) step 3 is two
renames (old partition away, new one in), with a window of a few microseconds in which an
outside engine that lists the table finds the partition missing; this is said in the
spec. A hidden ``.rank-<R>.*`` directory left by an interrupted compaction is removed by
the next one (before the exchange it is an unpublished copy; after it, the replaced
segments); if the partition itself is missing (killed between the two renames), the new
copy is moved in. Traces compacted before format 1.1 may hold a journal ``.compact.json``,
which readers still honour.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import safe_io
from ._conform import conform_table
from .errors import TraceFormatError, UsageError
from .manifest import read_manifest
from .rolling import repeated_string
from .schema import TABLES
from .segments import JOURNAL, Segment, iter_batches, list_segments, open_segment, rank_of_dir, read_journal, segment_index

__all__ = ["compact_trace", "CompactionResult", "PartitionResult", "SORT_KEYS"]

#: Sort order of the compacted file of each table.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "records": ("node_id", "kind", "step", "phase", "slot", "call"),
    "scalars": ("name", "phase", "step"),
    "predictions": ("step", "phase"),
}


@dataclass
class PartitionResult:
    """What compaction did to one ``<table>/rank-<R>`` partition."""

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
    filesystem: Any = None,
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
        filesystem: A pyarrow or fsspec filesystem holding ``path`` (or give a URI). On
            object storage the new files are uploaded before the replaced ones are
            deleted: not atomic for outside engines (see :func:`tracefmt.storage.publish_compaction`).

    Returns:
        A :class:`CompactionResult` listing each partition rewritten.

    Raises:
        UsageError: an unknown table, or an open writer without ``force``.
        TraceFormatError: a segment is unreadable, or the rewritten row count differs.
    """
    from .storage import is_remote, localize, publish_compaction

    root = localize(path, filesystem=filesystem)
    manifest = read_manifest(root)
    for t in tables:
        if t not in SORT_KEYS:
            raise UsageError(f"cannot compact table {t!r}; compactable tables: {', '.join(SORT_KEYS)}")
    if not manifest.get("complete", False) and not force:
        raise UsageError(f"{root}: the trace is not complete (a writer may still be open); compact it after the writer closes, or force it")
    result = CompactionResult(root)
    run_id = str(manifest.get("run_id") or "") or None
    for table in tables:
        by_rank: dict[int, list[Segment]] = {}
        for rank_dir in _partition_dirs(root / table):
            _recover(rank_dir)
        _recover_switches(root / table)
        for seg in list_segments(root, table):
            by_rank.setdefault(seg.rank, []).append(seg)
        for rank, segs in by_rank.items():
            if len(segs) == 1 and segs[0].format == "parquet" and not segs[0].open:
                result.skipped.append(f"{table}/{segs[0].path.parent.name}")
                continue
            damaged = [s for s in (open_segment(s, full=True) for s in segs) if not s.complete and not s.open]
            if damaged and manifest.get("complete", False) and not force:
                raise TraceFormatError(f"{damaged[0].path}: {damaged[0].problem}, although the trace is marked complete (damaged?); "
                                       "not compacted: --force keeps only its readable rows")  # fmt: skip
            try:
                result.partitions.append(_compact_partition(root, table, rank, segs, compression=compression, run_id=run_id,
                                                            chunk_rows=chunk_rows, row_group_rows=row_group_rows))  # fmt: skip
            except (pa.ArrowException, UnicodeDecodeError) as exc:
                # Segments that open but do not fit the table's schema: nothing was changed.
                raise TraceFormatError(f"{root / table}: rank {rank} not compacted, the segments do not fit table '{table}' "
                                       f"({' '.join(str(exc).split())[:300]})") from None  # fmt: skip
    if is_remote(path, filesystem) and result.partitions:
        publish_compaction(root, path, filesystem=filesystem)
    return result


def _partition_dirs(table_dir: Path) -> list[Path]:
    if not table_dir.is_dir():
        return []
    return [d for d in sorted(table_dir.iterdir()) if rank_of_dir(d.name) is not None and d.is_dir() and not d.is_symlink()]


def _recover_switches(table_dir: Path) -> None:
    """Finish or clean up a directory switch interrupted in ``table_dir`` (see the module docstring)."""
    if not table_dir.is_dir():
        return
    hidden = [d for d in sorted(table_dir.iterdir()) if d.name.startswith(".rank") and d.is_dir() and not d.is_symlink()]
    for d in hidden:
        partition, _, tail = d.name[1:].partition(".")
        if rank_of_dir(partition) is None or not tail.startswith(("new-", "old-")):
            continue
        target = table_dir / partition
        if not target.exists() and tail.startswith("new-"):
            os.replace(d, target)  # killed between the two renames of the fallback switch
        else:
            shutil.rmtree(d)


def _recover(rank_dir: Path) -> None:
    """Finish or undo a compaction interrupted in ``rank_dir`` (see the module docstring).

    Only regular files directly in ``rank_dir`` are ever removed: journal entries are
    checked to be plain names (a journal is data from the trace, never a path).
    """
    # A temporary output was never published (step 4 renames it): it is always garbage.
    for tmp in safe_io.plain_entries(rank_dir):
        if tmp.name.startswith(".part-") and tmp.name.endswith(".tmp") and safe_io.is_regular_file(tmp):
            tmp.unlink()
    journal = rank_dir / JOURNAL
    if not os.path.lexists(journal):
        return
    output, replaces = read_journal(journal)
    if safe_io.is_regular_file(rank_dir / output):
        for name in replaces:
            if safe_io.is_regular_file(rank_dir / name) and name != output:
                (rank_dir / name).unlink()
    journal.unlink()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compact_partition(root: Path, table: str, rank: int, segs: list[Segment], *, compression: str, run_id: str | None,
                       chunk_rows: int, row_group_rows: int) -> PartitionResult:  # fmt: skip
    tdef = TABLES[table]
    rank_dir = segs[0].path.parent
    schema = tdef.schema
    opened = segs  # opened (and validated) by compact_trace
    for s in opened:
        if not s.readable and not s.recoverable:
            raise TraceFormatError(f"{s.path}: {s.problem}; not compacted (move the file away to compact the rest)")
        if s.readable:
            schema = pa.schema(list(schema) + [f for f in s.schema if f.name not in schema.names], metadata=schema.metadata)
    parts = [_with_run_id(_segment_table(s, schema), run_id) for s in opened if s.readable]
    rows_in = sum(p.num_rows for p in parts)
    source = ds.dataset(parts) if parts else ds.dataset(schema.empty_table())
    existing = [segment_index(p.name) for p in rank_dir.iterdir()]
    name = f"part-{max((i for i in existing if i is not None), default=-1) + 1:05d}.parquet"
    new_dir = rank_dir.parent / f".{rank_dir.name}.new-{secrets.token_hex(6)}"
    new_dir.mkdir(mode=0o777)  # exclusive: fails if it exists; the umask applies
    try:
        out = new_dir / name
        try:
            pq.ParquetWriter(pa.BufferOutputStream(), schema, compression=compression).close()
        except (pa.ArrowException, ValueError) as exc:
            raise UsageError(f"cannot write Parquet with compression {compression!r} ({exc})") from None
        key = [(k, "ascending") for k in SORT_KEYS[table]]
        with pq.ParquetWriter(out, schema, compression=compression) as writer:
            for expr in _chunks(source, table, chunk_rows):
                chunk = source.to_table(filter=expr)
                if chunk.num_rows:
                    writer.write_table(chunk.sort_by(key), row_group_size=row_group_rows)
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
        _fsync_dir(new_dir)
        rows_out = pq.ParquetFile(out).metadata.num_rows
        if rows_out != rows_in:
            raise TraceFormatError(f"{rank_dir}: compaction wrote {rows_out} rows but the segments hold {rows_in}; nothing was changed")
        bytes_after = out.stat().st_size
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    replaced = [s.path.name for s in opened]
    bytes_before = sum(s.path.stat().st_size for s in opened if s.path.exists())
    _switch(rank_dir, new_dir)
    shutil.rmtree(new_dir)  # now the replaced segments
    _fsync_dir(rank_dir.parent)
    return PartitionResult(table, rank, rows_out, replaced, str((rank_dir / name).relative_to(root)), bytes_before, bytes_after)


def _switch(current: Path, new: Path) -> None:
    """Put ``new`` in place of ``current``, leaving the old content at ``new``: atomic where possible."""
    if exchange_dirs(current, new):
        return
    old = current.parent / f".{current.name}.old-{secrets.token_hex(6)}"
    os.replace(current, old)
    os.replace(new, current)
    os.replace(old, new)


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns:
        False where the operating system or the file system cannot (nothing was changed).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return rc == 0


def _with_run_id(table: pa.Table, run_id: str | None) -> pa.Table:
    """Fill a missing run_id (segments written before format 1.1) from the manifest."""
    if run_id is None or "run_id" not in table.schema.names or table.column("run_id").null_count != table.num_rows or not table.num_rows:
        return table
    i = table.schema.get_field_index("run_id")
    return table.set_column(i, table.schema.field(i), repeated_string(run_id, table.num_rows))


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
