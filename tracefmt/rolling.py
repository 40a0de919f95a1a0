"""Rolling segments: how the writer makes rows visible to every engine (spec 'Segments').

Rows of one table of one rank are appended to an *open* segment, a hidden Arrow IPC file
``.part-NNNNN.open.arrow`` written batch by batch (unbuffered, so a killed writer leaves
every completed batch readable by tracefmt). The open segment is *rolled* when it is
old enough (``roll_seconds``), spans enough steps (``roll_steps``) or is big enough
(``roll_bytes``): its footer is written and it becomes a closed segment
``part-NNNNN.parquet`` (or ``part-NNNNN.arrow``), written under a hidden temporary name
and renamed into place, so an outside engine (Spark, DuckDB, polars, pandas, Dask, Ray)
only ever sees complete, self-describing files. The open file is removed after the
rename; a reader that finds both ignores the open one. The Parquet encoding runs on a
:class:`Publisher` thread, so the thread appending rows pays only for the IPC append.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from .errors import UsageError
from .schema import TableDef
from .segments import closed_name, open_name, rank_dir_name, segment_index

__all__ = ["WriterOptions", "RollingSink", "Publisher", "SEGMENT_FORMATS", "write_closed", "exclusive_temp", "publish", "repeated_string"]

#: Closed-segment formats: Parquet (every engine reads it) or Arrow IPC files (faster to
#: write; pyarrow, polars and tracefmt read them, DuckDB, Spark, Dask and Ray do not).
SEGMENT_FORMATS = ("parquet", "arrow")
# Dictionary-encode only the low-cardinality string columns and keep statistics only on
# the columns filters use: both cost write time for no read benefit elsewhere.
_DICT_COLUMNS = ("phase", "kind", "slot", "dtype", "hist_scheme", "name", "run_id")
_STAT_COLUMNS = ("step", "rank", "node_id", "kind", "phase", "slot", "call", "name", "epoch")
#: A closed segment being written (``exclusive_temp``): left behind only by a killed writer.
_PUBLISH_TEMP_RE = re.compile(r"^\.part-\d{5,}\.(?:parquet|arrow)\.[0-9a-f]{16}\.tmp$")


@dataclass(frozen=True)
class WriterOptions:
    """How the writer batches, rolls and encodes segments (spec 'Segments').

    A live run is visible to outside engines once its open segment rolls, so
    ``roll_seconds`` bounds the delay; a killed writer leaves at most one roll interval
    outside the closed segments (tracefmt still reads it from the open segment).

    Args:
        roll_seconds: Roll the open segment once it is this old (None: never by age).
            Defaults to 5.0.
        roll_steps: Roll once the open segment holds this many distinct steps (None: never
            by steps). Defaults to None.
        roll_bytes: Roll once the open segment reaches this many bytes. Defaults to 32 MiB.
        batch_rows: Write a table's buffered rows at this many rows. Defaults to 16384.
        flush_interval: Seconds between background flushes (and age checks); 0 disables
            the background thread (rolls then happen only on writes and close).
            Defaults to 1.0.
        segment_format: ``'parquet'`` or ``'arrow'`` (IPC file). Defaults to ``'parquet'``.
        compression: Codec of closed segments: Parquet ``'snappy'``, ``'zstd'``, ``'lz4'``
            or ``'none'``; for ``'arrow'`` segments ``None``, ``'lz4'`` or ``'zstd'``.
            Defaults to ``'snappy'`` (read by every engine).
        publish_threads: Threads that encode rolled segments as Parquet, so the thread
            that writes rows only ever pays for the Arrow IPC append; 0 encodes in the
            writing thread. At most ``2 * publish_threads`` rolled segments wait for them;
            a roll beyond that waits (the backlog, and what a reader holds, stays bounded).
            Defaults to 1.
    """

    roll_seconds: float | None = 5.0
    roll_steps: int | None = None
    roll_bytes: int = 32 << 20
    batch_rows: int = 16384
    flush_interval: float = 1.0
    segment_format: str = "parquet"
    compression: str | None = "snappy"
    publish_threads: int = 1

    def __post_init__(self) -> None:
        if self.segment_format not in SEGMENT_FORMATS:
            raise UsageError(f"unknown segment_format {self.segment_format!r}; available: {', '.join(SEGMENT_FORMATS)}")
        for name in ("roll_seconds", "roll_steps"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UsageError(f"writer option {name} must be > 0 or None, got {v!r}")
        if self.roll_bytes <= 0 or self.batch_rows <= 0 or self.flush_interval < 0 or self.publish_threads < 0:
            raise UsageError("writer options roll_bytes and batch_rows must be > 0, flush_interval and publish_threads >= 0")

    def with_overrides(self, **values: Any) -> WriterOptions:
        """A copy with the given non-None values replaced."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def ipc_compression(self) -> str | None:
        """The IPC buffer codec of the open segment (none: rolled data is re-encoded anyway)."""
        if self.segment_format == "arrow" and self.compression in ("lz4", "zstd"):
            return self.compression
        return None


def exclusive_temp(directory: Path, stem: str) -> Path:
    """Create an empty hidden file ``.<stem>.<random>.tmp`` exclusively (mode from the umask)."""
    for _ in range(100):
        path = directory / f".{stem}.{secrets.token_hex(8)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise OSError(f"{directory}: cannot create a temporary file")


def publish(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to stable storage and rename it to ``final`` (atomic on POSIX)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_closed(table: pa.Table, directory: Path, name: str, options: WriterOptions) -> Path:
    """Write ``table`` as the closed segment ``directory/name``: hidden temporary, then rename."""
    tmp = exclusive_temp(directory, name)
    try:
        if name.endswith(".parquet"):
            codec = options.compression if options.compression not in (None, "none") else "none"
            present = set(table.schema.names)
            pq.write_table(
                table,
                tmp,
                compression=codec,
                use_dictionary=[c for c in _DICT_COLUMNS if c in present],
                write_statistics=[c for c in _STAT_COLUMNS if c in present],
                row_group_size=131072,
            )
        else:
            with (
                pa.OSFile(str(tmp), "wb") as f,
                ipc.new_file(f, table.schema, options=ipc.IpcWriteOptions(compression=options.ipc_compression)) as w,
            ):
                w.write_table(table)
        publish(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return directory / name


class Publisher:
    """Publishes rolled open segments as closed Parquet segments, on background threads.

    A rolled open segment already has its footer: it is a complete IPC file that tracefmt
    reads while it waits, and that a killed process leaves for recovery like any open
    segment. Encoding Parquet costs several times the IPC append (bench/RESULTS.md), so
    it runs here, beside the thread that writes rows. ``threads=0`` publishes at once, in
    the caller's thread.
    """

    def __init__(self, threads: int) -> None:
        self._queue: queue.Queue[tuple[Path, str, WriterOptions] | None] = queue.Queue(maxsize=max(1, 2 * threads))
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._run, name=f"tracefmt-publish-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, open_path: Path, final_name: str, options: WriterOptions) -> None:
        """Publish ``open_path`` as ``final_name``; waits while the backlog is full."""
        self._raise_error()
        if not self._threads:
            close_open_segment(open_path, final_name, options)
            return
        self._queue.put((open_path, final_name, options))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                close_open_segment(*item)
            except BaseException as exc:  # noqa: BLE001 - reported to the writer; the open file stays, recoverable
                if self._error is None:
                    self._error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def drain(self) -> None:
        """Wait until every submitted segment is published; re-raise a publishing error."""
        if self._threads:
            self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Drain, then stop the threads."""
        try:
            self.drain()
        finally:
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join()
            self._threads = []


class RollingSink:
    """Buffered appends to one table of one rank: an open IPC segment, rolled into closed ones."""

    def __init__(
        self, root: Path, table: TableDef, rank: int, *, run_id: str | None, options: WriterOptions, publisher: Publisher | None = None
    ) -> None:
        self.dir = root / table.name / rank_dir_name(rank)
        self.table = table
        self.options = options
        self.publisher = publisher
        self.run_id = run_id
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows_written = 0
        self._file: pa.NativeFile | None = None
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._open_path: Path | None = None
        self._opened_at = 0.0
        self._open_steps: set[int] = set()
        self._pending_steps: set[int] = set()
        existing = [segment_index(p.name) for p in self.dir.iterdir()] if self.dir.is_dir() else []
        self._next_index = max((i for i in existing if i is not None), default=-1) + 1

    def add(self, batch: pa.Table) -> bool:
        """Buffer ``batch``; return True when it should be flushed now (buffer full, or a step roll due)."""
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.options.roll_steps is not None and "step" in batch.schema.names and batch.num_rows:
            self._pending_steps.update(pc.unique(batch.column("step")).to_pylist())
            if len(self._open_steps | self._pending_steps) > self.options.roll_steps:
                return True
        return self.pending_rows >= self.options.batch_rows

    def _with_run_id(self, data: pa.Table) -> pa.Table:
        if self.run_id is None or "run_id" not in data.schema.names:
            return data
        i = data.schema.get_field_index("run_id")
        if data.column(i).null_count != data.num_rows:
            return data  # the producer set it
        return data.set_column(i, data.schema.field(i), repeated_string(self.run_id, data.num_rows))

    def flush(self) -> None:
        """Write buffered rows to the open segment, then roll it if a limit is reached."""
        if self.pending_rows:
            data = self._with_run_id(pa.concat_tables(self.pending).combine_chunks())
            self.pending.clear()
            self.pending_rows = 0
            self._pending_steps.clear()
            while (cut := self._step_split(data)) is not None:
                # Rows before the cut complete the open segment's steps; the rest go on.
                self._write(data.slice(0, cut))
                self.roll()
                data = data.slice(cut)
            self._write(data)
        else:
            self.pending.clear()
        if self._writer is not None and self._due():
            self.roll()

    def _step_split(self, data: pa.Table) -> int | None:
        """Row at which ``data`` reaches ``roll_steps`` distinct steps of the open segment, if it does."""
        limit = self.options.roll_steps
        if limit is None or "step" not in data.schema.names or not data.num_rows:
            return None
        steps = data.column("step").to_numpy()
        values, first = np.unique(steps, return_index=True)
        new = sorted(int(i) for v, i in zip(values, first) if int(v) not in self._open_steps)
        room = limit - len(self._open_steps)
        if len(new) <= room:
            return None
        # Rows are cut where the first step that does not fit begins (steps arrive in order).
        cut = new[max(room, 0)]
        if cut == 0 and self._writer is None:
            return None  # nothing open to roll: the data starts a segment
        return cut

    def _write(self, data: pa.Table) -> None:
        if not data.num_rows:
            return
        if self._writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / open_name(self._next_index)
            # Exclusive: a second writer of the same rank must fail, never interleave.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.close(fd)
            # OSFile is unbuffered: every batch reaches the OS as it is written, so a
            # killed process leaves every completed batch readable.
            self._file = pa.OSFile(str(path), "wb")
            self._writer = ipc.new_file(self._file, data.schema, options=ipc.IpcWriteOptions(compression=self.options.ipc_compression))
            self._open_path = path
            self._opened_at = time.monotonic()
            self._open_steps = set()
        for b in data.to_batches():
            self._writer.write_batch(b)
        if self.options.roll_steps is not None and "step" in data.schema.names:
            self._open_steps.update(pc.unique(data.column("step")).to_pylist())
        self.rows_written += data.num_rows

    def _due(self) -> bool:
        o = self.options
        if self._file is not None and self._file.tell() >= o.roll_bytes:
            return True
        if o.roll_seconds is not None and time.monotonic() - self._opened_at >= o.roll_seconds:
            return True
        return o.roll_steps is not None and len(self._open_steps) >= o.roll_steps

    def roll(self) -> None:
        """Close the open segment (footer written) and publish it as a closed segment."""
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        open_path = self._open_path
        self._writer = self._file = self._open_path = None
        self._open_steps = set()
        index = self._next_index
        self._next_index += 1
        final = closed_name(index, self.options.segment_format)
        if final.endswith(".arrow"):
            os.replace(open_path, open_path.parent / final)  # the footer is written: a complete IPC file
        elif self.publisher is not None:
            self.publisher.submit(open_path, final, self.options)
        else:
            close_open_segment(open_path, final, self.options)

    def close(self) -> None:
        """Flush and roll: nothing stays in an open segment."""
        self.flush()
        self.roll()


def repeated_string(value: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``value``, built without a Python list."""
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw * n))


def close_open_segment(open_path: Path, final_name: str, options: WriterOptions) -> Path:
    """Publish the open segment ``open_path`` as ``final_name`` beside it, then remove it.

    The open file may lack its footer (a killed writer): it is read up to its last
    complete record batch. Between the rename and the removal both files exist; readers
    ignore an open segment whose closed segment exists (spec 'Segments').
    """
    from .segments import Segment, open_segment

    directory = open_path.parent
    if final_name.endswith(".arrow") and _has_footer(open_path):
        os.replace(open_path, directory / final_name)  # already a complete IPC file
        return directory / final_name
    seg = open_segment(Segment(path=open_path, table=directory.parent.name, rank=0, format="file"), load=True)
    if seg.schema is not None:
        table = pa.Table.from_batches(seg.batches, schema=seg.schema)
        if table.num_rows:
            write_closed(table, directory, final_name, options)
    open_path.unlink(missing_ok=True)
    return directory / final_name


def _has_footer(path: Path) -> bool:
    try:
        with pa.memory_map(str(path)) as src:
            ipc.open_file(src)
        return True
    except (pa.ArrowInvalid, OSError):
        return False


def recover_open_segments(
    trace_dir: Path, table: str, options: WriterOptions | None = None, *, ranks: set[int] | None = None
) -> list[Path]:
    """Publish the open segments a killed writer left in ``table`` (every rank, or ``ranks``); return the new files.

    Only for a writer known to be dead: a running writer's open segment would be taken
    from under it.
    """
    from .segments import OPEN_RE, rank_of_dir

    opts = options or WriterOptions()
    out: list[Path] = []
    root = Path(trace_dir) / table
    if not root.is_dir():
        return out
    for rank_dir in sorted(root.iterdir()):
        rank = rank_of_dir(rank_dir.name)
        if rank is None or not rank_dir.is_dir() or rank_dir.is_symlink() or (ranks is not None and rank not in ranks):
            continue
        names = {p.name for p in rank_dir.iterdir()}
        for name in sorted(names):
            if _PUBLISH_TEMP_RE.match(name):
                (rank_dir / name).unlink(missing_ok=True)  # a publication cut short: its open segment is still there
                continue
            m = OPEN_RE.match(name)
            if not m:
                continue
            index = int(m.group(1))
            if any(closed_name(index, f) in names for f in SEGMENT_FORMATS):
                (rank_dir / name).unlink(missing_ok=True)  # published before the kill
                continue
            out.append(close_open_segment(rank_dir / name, closed_name(index, opts.segment_format), opts))
    return out
