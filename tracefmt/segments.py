"""Segment files of the partitioned tables (spec 'Layout', 'Segments and crash semantics').

A partitioned table (records, scalars, predictions, tensors) is a set of segment files
under ``<table>/rank-<R>/`` (``rank=<R>`` in traces written before format 1.1). A
segment is Parquet (``.parquet``), an Arrow IPC *file* (``.arrow``: the IPC stream format
framed by a magic string and closed by a footer) or an Arrow IPC *stream* (``.arrows``).
A running writer appends to a hidden *open* segment ``.part-NNNNN.open.arrow`` that
outside engines skip and tracefmt reads; a writer killed mid-segment leaves it without
its footer; its body is still a valid IPC stream, so it is read as one up to the last
complete record batch. This module names segments and finds and opens each one,
complete or not, in one place for the reader, the validator and ``compact``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from . import safe_io
from .errors import TraceFormatError

__all__ = [
    "Segment",
    "list_segments",
    "open_segment",
    "iter_batches",
    "validate_columns",
    "replaced_by_journal",
    "rank_dir_name",
    "rank_of_dir",
    "open_name",
    "closed_name",
    "segment_index",
    "nodes_file",
    "read_whole_file",
    "table_files",
    "PARTITIONED",
    "IPC_MAGIC",
    "JOURNAL",
    "OPEN_RE",
    "NODES_FILES",
]

#: Tables stored as partitioned segment directories.
PARTITIONED = ("records", "scalars", "predictions", "tensors")
IPC_MAGIC = b"ARROW1"
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_RANK_DIR = re.compile(r"^rank[-=](0|[1-9]\d*)$")
_SUFFIX_FORMAT = {".arrow": "file", ".arrows": "stream", ".parquet": "parquet"}
#: An open segment of a running (or killed) writer: ``.part-NNNNN.open.arrow``.
OPEN_RE = re.compile(r"^\.part-(\d{5,})\.open\.arrow$")
_CLOSED_RE = re.compile(r"^part-(\d{5,})\.(?:arrow|arrows|parquet)$")
#: The nodes table's file, in order of preference (``nodes.arrow`` before format 1.1).
NODES_FILES = ("nodes.parquet", "nodes.arrow")


def rank_dir_name(rank: int) -> str:
    """The partition directory of ``rank``: ``rank-<R>`` (no ``=``: no engine takes it for a hive key)."""
    return f"rank-{int(rank)}"


def rank_of_dir(name: str) -> int | None:
    """The rank of a partition directory name (``rank-R``, or ``rank=R`` of format 1.0), else None."""
    m = _RANK_DIR.match(name)
    return int(m.group(1)) if m else None


def open_name(index: int) -> str:
    """File name of the open segment number ``index``."""
    return f".part-{index:05d}.open.arrow"


def closed_name(index: int, segment_format: str) -> str:
    """File name of the closed segment number ``index`` (``'parquet'`` or ``'arrow'``)."""
    return f"part-{index:05d}.{'parquet' if segment_format == 'parquet' else 'arrow'}"


def segment_index(name: str) -> int | None:
    """The counter of a segment file name, open or closed, else None."""
    m = OPEN_RE.match(name) or _CLOSED_RE.match(name)
    return int(m.group(1)) if m else None


def read_whole_file(path: Path) -> pa.Table:
    """Read a whole small table file: Parquet, IPC file or IPC stream (by content).

    Raises:
        pa.ArrowInvalid, OSError: the file is none of them.
        TraceFormatError: a link or special file, or damaged Arrow data.
    """
    safe_io.check_regular_file(path)  # never a link, FIFO or device (a trace is data)
    if _head(path, 4) == b"PAR1":
        try:
            table = pq.read_table(path)
        except UnicodeDecodeError:  # a damaged footer: column names that are not UTF-8
            raise TraceFormatError(f"{path}: unreadable Parquet (a column name is not UTF-8)") from None
    else:
        with pa.memory_map(str(path)) as source:
            try:
                table = ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = ipc.open_stream(source).read_all()
    return safe_io.check_batch(table, where=str(path))


def table_files(directory: Path) -> list[Path]:
    """The visible ``.parquet``/``.arrow`` files of a whole-file table directory (findings), by name."""
    if not safe_io.is_plain_dir(directory):
        return []
    # Links and special files are listed too, so that reading them is refused with one line.
    candidates = safe_io.plain_entries(directory) + [p for p, _ in safe_io.special_entries(directory)]
    return sorted(
        p for p in candidates if p.suffix in (".parquet", ".arrow") and not p.name.startswith((".", "_")) and not safe_io.is_plain_dir(p)
    )


def nodes_file(trace_dir: Path) -> Path | None:
    """The trace's nodes file (``nodes.parquet``, or ``nodes.arrow`` of older traces), None if absent."""
    for name in NODES_FILES:
        p = Path(trace_dir) / name
        if p.is_file():
            return p
    return None


#: Compaction journal in a rank directory (spec 'Compaction'): while it exists and its
#: output file exists, the segments it lists are superseded and MUST be ignored.
JOURNAL = ".compact.json"


def replaced_by_journal(rank_dir: Path) -> set[str]:
    """Names of segments in ``rank_dir`` superseded by a finished compaction output."""
    journal = Path(rank_dir) / JOURNAL
    if not safe_io.is_regular_file(journal):
        return set()
    output, replaces = read_journal(journal)
    if not safe_io.is_regular_file(Path(rank_dir) / output):
        return set()  # compaction did not publish its output: the old segments are the data
    return set(replaces)


def read_journal(journal: Path) -> tuple[str, list[str]]:
    """The output and replaced segment names of a compaction journal, each a plain name.

    Raises:
        TraceFormatError: the journal is not JSON of that shape, or a name leaves its directory.
    """
    data = safe_io.read_json(journal)
    if not isinstance(data, dict) or not isinstance(data.get("replaces"), list):
        raise TraceFormatError(f"{journal}: a compaction journal must be an object with 'output' and a list 'replaces'")
    output = safe_io.plain_name(data.get("output"), where=str(journal))
    return output, [safe_io.plain_name(n, where=str(journal)) for n in data["replaces"]]


@dataclass
class Segment:
    """One segment file and what opening it revealed."""

    path: Path
    table: str
    rank: int
    format: str  #: 'file', 'stream' or 'parquet' (from the suffix)
    #: True when the segment is closed: IPC footer present, stream ended by its EOS marker.
    complete: bool = True
    #: Why the segment is incomplete or unreadable ('' if it is fine).
    problem: str = ""
    schema: pa.Schema | None = None
    batches: list[pa.RecordBatch] = field(default_factory=list, repr=False)
    #: False when the file is not a (possibly cut) segment at all: bad magic, not Parquet.
    #: A segment cut before its schema (a writer killed at once) is recoverable: no rows.
    recoverable: bool = True
    #: Columns holding nulls in any batch (found by the validation pass of :func:`open_segment`).
    null_columns: set[str] = field(default_factory=set)
    #: True for a writer's open segment (hidden from outside engines, read by tracefmt).
    open: bool = False
    #: Columns fully validated so far (:func:`validate_columns`); their nulls are in ``null_columns``.
    validated: set[str] = field(default_factory=set)

    @property
    def readable(self) -> bool:
        """False if not even a schema could be read."""
        return self.schema is not None


def list_segments(trace_dir: Path, table: str, ranks: set[int] | None = None) -> list[Segment]:
    """Find the segment files of ``table`` (optionally only some ranks), in rank, name order."""
    root = Path(trace_dir) / table
    out: list[Segment] = []
    _refuse_links(root)
    if not safe_io.is_plain_dir(root):
        return out
    for rank_dir in safe_io.plain_entries(root):
        rank = rank_of_dir(rank_dir.name)
        if rank is None or not safe_io.is_plain_dir(rank_dir):
            continue
        if ranks is not None and rank not in ranks:
            continue
        superseded = replaced_by_journal(rank_dir)
        # In segment order (an open segment is the newest of its rank), other names after.
        entries = sorted(safe_io.plain_entries(rank_dir), key=lambda p: (segment_index(p.name) is None, segment_index(p.name) or 0, p.name))
        closed = {segment_index(p.name) for p in entries if not p.name.startswith(".")}
        for p in entries:
            fmt = _SUFFIX_FORMAT.get(p.suffix)
            m = OPEN_RE.match(p.name)
            if m and int(m.group(1)) not in closed and not safe_io.is_regular_file(p):
                # Published (and removed) since the directory was listed: read what it became.
                published = _published_as(Segment(path=p, table=table, rank=rank, format="file"))
                if published is not None:
                    out.append(Segment(path=published, table=table, rank=rank, format=_SUFFIX_FORMAT[published.suffix]))
                continue
            if not fmt or not safe_io.is_regular_file(p):
                continue
            if m:
                # Published already (renamed, not yet removed): its rows are in the closed file.
                if int(m.group(1)) not in closed:
                    out.append(Segment(path=p, table=table, rank=rank, format="file", open=True))
            elif not p.name.startswith(".") and p.name not in superseded:
                out.append(Segment(path=p, table=table, rank=rank, format=fmt))
        for p, kind in safe_io.special_entries(rank_dir):
            if p.suffix in _SUFFIX_FORMAT and not p.name.startswith("."):
                out.append(Segment(path=p, table=table, rank=rank, format=_SUFFIX_FORMAT[p.suffix], complete=False,
                                   problem=f"is {kind}; a segment must be a regular file inside the trace", recoverable=False))  # fmt: skip
    return out


def _refuse_links(root: Path) -> None:
    """Refuse a table directory, or a rank directory in it, that is a link or special file."""
    parent_special = dict(safe_io.special_entries(root.parent))
    if root in parent_special:
        raise TraceFormatError(f"{root}: is {parent_special[root]}; a table directory must be a real directory inside the trace")
    for p, kind in safe_io.special_entries(root):
        if _RANK_DIR.match(p.name):
            raise TraceFormatError(f"{p}: is {kind}; a rank directory must be a real directory inside the trace")


def _read_stream(seg: Segment, source: pa.NativeFile) -> None:
    """Read an IPC stream batch by batch, stopping cleanly at a truncated message."""
    try:
        reader = ipc.open_stream(source)
    except (pa.ArrowException, OSError) as exc:
        seg.problem = f"no readable schema ({exc})"
        return
    seg.schema = reader.schema
    while True:
        try:
            seg.batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as exc:
            seg.complete = False
            seg.problem = f"truncated after {len(seg.batches)} complete record batches ({exc})"
            return


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _published_as(seg: Segment) -> Path | None:
    """The closed segment an open segment was published as, if it exists now."""
    index = segment_index(seg.path.name)
    if index is None:
        return None
    for fmt in ("parquet", "arrow"):
        candidate = seg.path.parent / closed_name(index, fmt)
        if safe_io.is_regular_file(candidate):
            return candidate
    return None


def open_segment(seg: Segment, *, load: bool = False, full: bool = False) -> Segment:
    """Open ``seg``: read its schema, decide whether it is complete, read batches if needed.

    Complete IPC files and Parquet files are left for :mod:`pyarrow.dataset` to scan lazily
    unless ``load`` is true; streams and footer-less IPC files are read (memory-mapped, so
    the batches are zero-copy views of the file) because no lazy reader exists for them.

    Batches read into memory are validated at once. A closed segment's columns are
    validated here only with ``full``; otherwise readers validate the columns they read
    with :func:`validate_columns` before computing on them.
    """
    if seg.problem and not seg.recoverable and seg.schema is None:
        return seg  # refused when listed (a link or special file): never opened
    seg.batches = []
    seg.problem = ""
    seg.complete = True
    seg.recoverable = True
    try:
        safe_io.check_regular_file(seg.path)
        _open(seg, load=load)
        _validate(seg, full=full)
    except FileNotFoundError:
        if not seg.open:
            seg.schema, seg.batches, seg.complete, seg.recoverable, seg.problem = None, [], False, False, "cannot open (no such file)"
            return seg
        # A live writer published its open segment after it was listed: the closed file
        # of the same number holds these rows; read it instead.
        published = _published_as(seg)
        if published is not None:
            seg.path, seg.format, seg.open = published, _SUFFIX_FORMAT[published.suffix], False
            return open_segment(seg, load=load, full=full)
        seg.schema, seg.batches, seg.complete, seg.problem = None, [], False, "open segment published while reading"
    except (TraceFormatError, OSError) as exc:
        seg.schema, seg.batches, seg.complete, seg.recoverable = None, [], False, False
        seg.problem = str(exc).removeprefix(f"{seg.path}: ")
    return seg


def _validate(seg: Segment, *, full: bool) -> None:
    """Validate what :func:`open_segment` holds or needs before anything computes on it."""
    where = str(seg.path)
    if seg.schema is None:
        return
    safe_io.check_schema_names(seg.schema, where=where)
    if seg.batches or not seg.complete:
        safe_io.check_batches(seg.batches, where=where)
        seg.null_columns = {n for b in seg.batches for n, c in zip(b.schema.names, b.columns) if c.null_count}
        seg.validated = set(seg.schema.names)
        return
    if full:
        validate_columns(seg, None)


def validate_columns(seg: Segment, columns: Iterable[str] | None) -> None:
    """Fully validate ``columns`` (None: every column) of ``seg`` once, in bounded memory.

    pyarrow's full validation (offsets, lengths, UTF-8, dictionary indices) of every batch,
    before any kernel reads them: a damaged file is a one-line error, never a crash. Only
    the columns asked for are decoded, so a scan of a few columns of a wide table costs a
    few columns (bench/RESULTS.md).

    Raises:
        TraceFormatError: the data of one of the columns is damaged.
    """
    if seg.schema is None:
        return
    names = seg.schema.names
    wanted = [c for c in dict.fromkeys(names if columns is None else columns) if c in names and c not in seg.validated]
    if not wanted:
        return
    where = str(seg.path)
    try:
        for b in _iter_closed(seg, wanted, 65536):
            safe_io.check_batch(b, where=where)
            seg.null_columns.update(n for n, c in zip(b.schema.names, b.columns) if c.null_count)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TraceFormatError(f"{where}: unreadable ({' '.join(str(exc).split())[:300]})") from None
    seg.validated.update(wanted)


def _open(seg: Segment, *, load: bool) -> Segment:
    if seg.format == "parquet":
        try:
            pf = pq.ParquetFile(seg.path)
            seg.schema = pf.schema_arrow
            if load:
                seg.batches = pf.read().to_batches()
        except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: a damaged footer's non-UTF-8 names
            seg.schema, seg.complete, seg.problem, seg.recoverable = None, False, f"unreadable Parquet ({exc})", False
        return seg
    try:
        source = pa.memory_map(str(seg.path))
    except FileNotFoundError:
        if seg.open:  # published and removed since it was listed: the closed file has the rows
            seg.schema, seg.complete, seg.problem = None, False, "open segment published while reading"
            return seg
        seg.schema, seg.complete, seg.problem, seg.recoverable = None, False, "cannot open (no such file)", False
        return seg
    except OSError as exc:
        seg.schema, seg.complete, seg.problem, seg.recoverable = None, False, f"cannot open ({exc})", False
        return seg
    if source.size() == 0:
        seg.schema, seg.complete, seg.problem = None, False, "empty file (writer died before the schema)"
        return seg
    head = source.read(len(IPC_MAGIC))
    if len(head) < len(IPC_MAGIC) and IPC_MAGIC.startswith(head) and seg.format == "file":
        seg.schema, seg.complete, seg.problem = None, False, "cut inside the magic bytes (writer died before the schema)"
        return seg
    if seg.format == "file" or head == IPC_MAGIC:
        try:
            reader = ipc.open_file(source)
            seg.schema = reader.schema
            if load:
                seg.batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            return seg
        except (pa.ArrowException, OSError):
            pass
        if head != IPC_MAGIC:
            seg.schema, seg.complete, seg.problem, seg.recoverable = None, False, "not an Arrow IPC file (bad magic)", False
            return seg
        # No footer: the writer did not close. The body after the 8-byte magic is a stream.
        source.seek(8)
        _read_stream(seg, source)
        if seg.schema is None:
            seg.complete = False
            seg.problem = "cut before its schema was complete (writer died at once); no rows"
        elif seg.complete:
            seg.complete = False
            seg.problem = f"no IPC footer (writer did not close); {len(seg.batches)} complete record batches readable"
        return seg
    source.seek(0)
    _read_stream(seg, source)
    if seg.schema is None:
        # A stream cut inside its schema message still starts with the continuation marker.
        seg.complete = False
        seg.recoverable = source.size() < 8 or _EOS[:4] == _head(seg.path, 4)
    elif seg.complete:
        source.seek(max(0, source.size() - len(_EOS)))
        if source.read(len(_EOS)) != _EOS:
            seg.complete = False
            seg.problem = f"stream has no end-of-stream marker (writer did not close); {len(seg.batches)} record batches readable"
    return seg


def iter_batches(seg: Segment, *, columns: list[str] | None = None, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """Yield the record batches of an opened segment one at a time (bounded memory).

    Complete IPC files are memory-mapped and read batch by batch, Parquet row group by
    row group; incomplete segments yield the batches :func:`open_segment` recovered.

    Args:
        seg: A segment returned by :func:`open_segment` (readable).
        columns: Only these columns (those present in the segment). Defaults to all.
        batch_rows: Parquet batch size. Defaults to 65536.
    """
    if seg.schema is None:
        return
    cols = None if columns is None else [c for c in columns if c in seg.schema.names]
    validate_columns(seg, cols)

    def select(b: pa.RecordBatch) -> pa.RecordBatch:
        return b if cols is None else b.select(cols)

    if seg.batches or not seg.complete:
        for b in seg.batches:
            yield select(b)
        return
    try:
        yield from _iter_closed(seg, cols, batch_rows)
    except (pa.ArrowException, OSError, ValueError) as exc:  # a damaged footer block no column check reached
        raise TraceFormatError(f"{seg.path}: unreadable ({' '.join(str(exc).split())[:300]})") from None


def _iter_closed(seg: Segment, cols: list[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of a closed segment straight from its file."""
    if seg.format == "parquet":
        yield from pq.ParquetFile(seg.path).iter_batches(batch_size=batch_rows, columns=cols)
        return
    with pa.memory_map(str(seg.path)) as source:
        if seg.format == "file":
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                b = reader.get_batch(i)
                yield b if cols is None else b.select(cols)
        else:
            for b in ipc.open_stream(source):
                yield b if cols is None else b.select(cols)
