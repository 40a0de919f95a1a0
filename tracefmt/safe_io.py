"""Reading a trace without trusting it (spec 'Reading untrusted traces').

A trace is data, never a path: it travels between people and machines, so every read
point goes through this module, which

- refuses symbolic links, FIFOs, devices and sockets inside a trace (a symlink could
  point anywhere, a FIFO blocks a reader forever) with one line naming the file;
- bounds the size of the JSON files it parses and their nesting depth;
- checks that a name read from a trace (a compaction journal entry) is a plain file name,
  so it can only name a file in the directory it came from;
- validates every Arrow record batch fully before anything computes on it, so a damaged
  segment is a :class:`~tracefmt.errors.TraceFormatError`, never a crash of the process.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import TraceFormatError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "check_regular_file",
    "is_regular_file",
    "is_plain_dir",
    "plain_entries",
    "special_entries",
    "read_bytes",
    "read_json",
    "plain_name",
    "check_batch",
    "check_batches",
    "read_ipc_table",
    "check_schema_names",
    "write_atomic",
    "MAX_TABLE_BYTES",
]

#: Largest JSON file (manifest, compaction journal) read from a trace: 16 MiB.
MAX_JSON_BYTES = 16 * 1024 * 1024
#: Largest whole-read Arrow file (nodes, findings): 4 GiB; bigger ones are not a graph.
MAX_TABLE_BYTES = 4 * 1024**3
#: Deepest nesting of JSON containers accepted (a manifest needs a handful).
MAX_JSON_DEPTH = 64

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def check_regular_file(path: str | Path) -> os.stat_result:
    """``lstat`` of ``path``, refusing anything but a regular file (symlinks included).

    Raises:
        TraceFormatError: ``path`` is a symlink, FIFO, device, socket or directory.
        FileNotFoundError: ``path`` does not exist.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise TraceFormatError(f"{path}: is {_kind(st.st_mode)}; a trace holds only regular files and directories, never links")
    return st


def is_regular_file(path: str | Path) -> bool:
    """True if ``path`` is a regular file, not a symlink (never raises)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_plain_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory, not a symlink to one (never raises)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def plain_entries(directory: str | Path) -> list[Path]:
    """The regular files and real directories in ``directory``, sorted; links and special files left out."""
    out = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.is_file(follow_symlinks=False) or e.is_dir(follow_symlinks=False):
                    out.append(Path(directory) / e.name)
    except OSError:
        return []
    return sorted(out)


def special_entries(directory: str | Path) -> list[tuple[Path, str]]:
    """Symlinks and special files in ``directory`` with what each one is (for a one-line error)."""
    out = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if not (e.is_file(follow_symlinks=False) or e.is_dir(follow_symlinks=False)):
                    out.append((Path(directory) / e.name, _kind(e.stat(follow_symlinks=False).st_mode)))
    except OSError:
        return out
    return sorted(out)


def read_bytes(path: str | Path, *, limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes, opened without following links.

    Raises:
        TraceFormatError: not a regular file, or larger than ``limit``.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise TraceFormatError(f"{path}: is a symbolic link; a trace holds only regular files and directories, never links") from None
        raise exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TraceFormatError(f"{path}: is {_kind(st.st_mode)}; expected a regular file")
        if st.st_size > limit:
            raise TraceFormatError(f"{path}: {st.st_size} bytes, more than the {limit} this reader accepts")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(limit + 1)
        if len(data) > limit:
            raise TraceFormatError(f"{path}: more than the {limit} bytes this reader accepts")
        return data
    finally:
        if fd >= 0:
            os.close(fd)


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, computed without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in o)
    return deepest


def read_json(path: str | Path, *, limit: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON file from a trace, bounded in size and nesting depth.

    Raises:
        TraceFormatError: not a regular file, too large, not UTF-8 JSON, or nested too deeply.
    """
    data = read_bytes(path, limit=limit)
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise TraceFormatError(f"{path}: JSON nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{path}: not valid JSON ({exc})") from None
    if _depth(value) > max_depth:
        raise TraceFormatError(f"{path}: JSON nested more than {max_depth} levels deep")
    return value


def plain_name(name: Any, *, where: str) -> str:
    """``name`` if it is a plain file name (no directory part, no '..'), else a one-line error.

    A name read from a trace can then only mean a file in the directory it came from.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name or os.path.isabs(name):
        raise TraceFormatError(f"{where}: {name!r} is not a plain file name inside the trace")
    return name


def check_batch(batch: pa.RecordBatch | pa.Table, *, where: str) -> pa.RecordBatch | pa.Table:
    """``batch`` after pyarrow's full validation (offsets, lengths, UTF-8, dictionary indices).

    Raises:
        TraceFormatError: the data is damaged; the message names ``where``.
    """
    check_schema_names(batch.schema, where=where)
    try:
        batch.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowException, ValueError) as exc:
        raise TraceFormatError(f"{where}: damaged Arrow data ({' '.join(str(exc).split())[:300]})") from None
    return batch


def check_schema_names(schema: pa.Schema, *, where: str) -> pa.Schema:
    """``schema`` if its column names are valid UTF-8 and distinct (a table's columns are found by name).

    Raises:
        TraceFormatError: a name is not UTF-8, or two columns share a name.
    """
    try:
        names = schema.names
    except UnicodeDecodeError:
        raise TraceFormatError(f"{where}: a column name is not valid UTF-8 (damaged schema)") from None
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise TraceFormatError(f"{where}: duplicate column name(s) {', '.join(repr(n) for n in dup)[:200]}")
    return schema


def check_batches(batches: Iterable[pa.RecordBatch], *, where: str) -> list[pa.RecordBatch]:
    """Every batch of ``batches`` fully validated (see :func:`check_batch`)."""
    return [check_batch(b, where=where) for b in batches]


def read_ipc_table(path: str | Path, *, limit: int = MAX_TABLE_BYTES) -> pa.Table:
    """A whole Arrow IPC file (or stream) from a trace, its file checked and every batch validated.

    Raises:
        TraceFormatError: a link or special file, too large, not Arrow IPC, or damaged data.
    """
    import pyarrow.ipc as ipc

    st = check_regular_file(path)
    if st.st_size > limit:
        raise TraceFormatError(f"{path}: {st.st_size} bytes, more than the {limit} this reader accepts")
    try:
        with pa.memory_map(str(path)) as source:
            table = ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError):
        try:
            with pa.memory_map(str(path)) as source:
                table = ipc.open_stream(source).read_all()
        except (pa.ArrowException, OSError) as exc:
            raise TraceFormatError(f"{path}: not an Arrow IPC file or stream ({' '.join(str(exc).split())[:300]})") from None
    return check_batch(table, where=str(path))


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through an exclusive, randomly named temporary file and a rename.

    Readers see the old content or the new one, never a partial file, and nothing planted
    at a predictable temporary name can redirect the write.
    """
    import tempfile

    p = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
