"""Traces on object storage or any filesystem: URIs and ``filesystem=`` (spec 'Reading').

Readers accept ``s3://``, ``gs://``, ``hdfs://`` and ``file://`` URIs (through
:func:`pyarrow.fs.FileSystem.from_uri`; S3 options such as ``endpoint_override`` and
``region`` go in the URI's query string) or a path together with a
:class:`pyarrow.fs.FileSystem` or an fsspec filesystem. A remote trace is read from a
local copy of its visible files (names not starting with ``.`` or ``_``; of a lake with a
run selected, that run's files only), made once per process in a private temporary directory: every closed file is complete when it appears,
so the copy is a consistent trace. Listed names are checked before they become local
paths: nothing in a remote listing can name a file outside the copy.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import TraceNotFoundError, UsageError

__all__ = ["is_remote", "resolve_filesystem", "localize", "publish_compaction"]

_COPIES: dict[tuple[int, str], Path] = {}


def is_remote(path: Any, filesystem: Any = None) -> bool:
    """True if ``path`` names a trace that is not on the local file system."""
    if filesystem is not None:
        import pyarrow.fs as pafs

        return not isinstance(_as_pyarrow(filesystem), pafs.LocalFileSystem)
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _as_pyarrow(filesystem: Any) -> Any:
    """A :class:`pyarrow.fs.FileSystem` for a pyarrow or an fsspec filesystem."""
    import pyarrow.fs as pafs

    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    if hasattr(filesystem, "ls") and hasattr(filesystem, "open"):  # fsspec's interface
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise UsageError(f"filesystem must be a pyarrow.fs.FileSystem or an fsspec filesystem, got {type(filesystem).__name__}")


def resolve_filesystem(path: Any, filesystem: Any = None) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI, or a path with ``filesystem``."""
    import pyarrow.fs as pafs

    if filesystem is not None:
        return _as_pyarrow(filesystem), str(path).rstrip("/")
    try:
        fs, inner = pafs.FileSystem.from_uri(str(path))
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{path}: not a usable URI ({exc})") from None
    return fs, inner.rstrip("/")


def _safe_relative(base: str, full: str) -> PurePosixPath | None:
    """``full`` relative to ``base`` if every part is a plain, visible name; None otherwise."""
    if not full.startswith(base + "/"):
        return None
    rel = PurePosixPath(full[len(base) + 1 :])
    parts = rel.parts
    if not parts or any(p in ("", ".", "..") or p.startswith((".", "_")) or "\\" in p or "\0" in p for p in parts):
        return None
    return rel


def localize(path: str | Path, *, filesystem: Any = None, run: str | None = None) -> Path:
    """A local directory holding the trace (or lake) at ``path``.

    Local paths and ``file://`` URIs are returned as they are; a remote trace is copied
    once per process (closed files only) and the copy returned. Of a remote lake with
    ``run`` given, only the members' manifests and the selected run's files are copied.

    Raises:
        TraceNotFoundError: nothing exists at ``path`` on its filesystem.
    """
    if not is_remote(path, filesystem):
        text = str(path)
        return Path(text[len("file://") :]) if text.startswith("file://") else Path(path)
    import pyarrow.fs as pafs

    fs, base = resolve_filesystem(path, filesystem)
    key = (id(fs) if filesystem is not None else 0, f"{fs.type_name}:{base}", run)
    if key in _COPIES and _COPIES[key].is_dir():
        return _COPIES[key]
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        raise TraceNotFoundError(f"{path}: not a trace directory (no such directory)")
    root = Path(tempfile.mkdtemp(prefix="tracefmt-remote-"))
    atexit.register(shutil.rmtree, root, True)
    local = root / (PurePosixPath(base).name or "trace")
    local.mkdir()
    files = {}
    for entry in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        rel = _safe_relative(base, entry.path) if entry.type == pafs.FileType.File else None
        if rel is not None:  # a hidden or unsafe name never becomes a local path
            files[rel] = entry.path
    wanted = files
    if run is not None and PurePosixPath("manifest.json") not in files:
        # A lake: the members' manifests name the runs; then only the chosen run is copied.
        _copy(fs, {r: p for r, p in files.items() if len(r.parts) == 2 and r.name == "manifest.json"}, local)
        from .lake import select_run

        chosen = select_run(local, run).name
        wanted = {r: p for r, p in files.items() if r.parts[0] == chosen}
    _copy(fs, wanted, local)
    _COPIES[key] = local
    return local


def _copy(fs: Any, files: dict[PurePosixPath, str], local: Path) -> None:
    """Copy remote ``files`` (relative path -> remote path) below ``local``."""
    for rel, remote in sorted(files.items()):
        target = local.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(remote) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def publish_compaction(local: Path, path: str | Path, *, filesystem: Any = None) -> None:
    """Make the remote trace at ``path`` hold what the compacted local copy holds.

    New files are uploaded first, then the replaced ones deleted. Object storage has no
    atomic switch: between the two an outside engine listing the table counts the
    compacted rows twice (spec 'Compaction'); compact before uploading where that matters.
    """
    import pyarrow.fs as pafs

    fs, base = resolve_filesystem(path, filesystem)
    remote = {}
    for entry in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        rel = _safe_relative(base, entry.path) if entry.type == pafs.FileType.File else None
        if rel is not None:
            remote[str(rel)] = entry.path
    local_files = {
        str(p.relative_to(local).as_posix()): p
        for p in local.rglob("*")
        if p.is_file() and not any(s.startswith((".", "_")) for s in p.relative_to(local).parts)
    }
    for rel, p in sorted(local_files.items()):
        if rel not in remote or rel == "manifest.json":
            with open(p, "rb") as src, fs.open_output_stream(f"{base}/{rel}") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    for rel, full in sorted(remote.items()):
        if rel not in local_files:
            fs.delete_file(full)
