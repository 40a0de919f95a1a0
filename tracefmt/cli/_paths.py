"""Output paths of the commands: never replace what the command did not create.

The rules (README 'Exit codes and outputs'):

- an output file that exists is replaced only with ``--overwrite``; an existing directory
  where a file is expected (or a file where a directory is expected) is a one-line error;
- a trace directory that exists (and is not empty) is replaced only with ``--overwrite``,
  and only if it is a trace written by tracefmt (its manifest names the format);
- every output is written to an exclusive temporary name next to it and renamed into
  place, so a failed or interrupted command leaves the old output (or nothing), never a
  partial one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import TraceError, UsageError
from ..safe_io import write_atomic

__all__ = ["check_output_file", "write_output_file", "new_trace_dir", "check_output_dir"]


def check_output_file(path: str | Path, *, overwrite: bool) -> Path:
    """``path`` if a file may be written there.

    Raises:
        UsageError: ``path`` is a directory (or a link, FIFO, device), or a file that
            exists without ``overwrite``, or its parent directory does not exist.
    """
    p = Path(path)
    if os.path.lexists(p):
        if p.is_symlink() or not p.is_file():
            raise UsageError(f"{p}: exists and is not a regular file; give a file name for the output")
        if not overwrite:
            raise UsageError(f"{p}: already exists; pass --overwrite to replace it")
    if not p.parent.is_dir():
        raise UsageError(f"{p.parent}: no such directory for the output")
    return p


def write_output_file(path: str | Path, data: bytes | str, *, overwrite: bool) -> Path:
    """Write ``data`` to ``path`` through an exclusive temporary file and a rename.

    Raises:
        UsageError: see :func:`check_output_file`.
    """
    return write_atomic(check_output_file(path, overwrite=overwrite), data)


def check_output_dir(path: str | Path, *, overwrite: bool, contents: tuple[str, ...]) -> Path:
    """``path`` if a command may write the entries ``contents`` into it (created if missing).

    Raises:
        UsageError: ``path`` exists and is not a directory, or already holds one of
            ``contents`` without ``overwrite``.
    """
    p = Path(path)
    if os.path.lexists(p) and (p.is_symlink() or not p.is_dir()):
        raise UsageError(f"{p}: exists and is not a directory; give a directory for the output")
    present = [name for name in contents if os.path.lexists(p / name)]
    if present and not overwrite:
        raise UsageError(f"{p}: already holds {', '.join(present)}; pass --overwrite to replace them")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _is_tracefmt_trace(p: Path) -> bool:
    from ..manifest import read_manifest

    try:
        read_manifest(p)
    except (TraceError, OSError):
        return False
    return True


@contextlib.contextmanager
def new_trace_dir(path: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """A fresh empty directory to write a trace in, renamed to ``path`` when the block succeeds.

    On an exception inside the block the temporary directory is removed and ``path`` is
    left as it was. An existing ``path`` is replaced only with ``overwrite`` and only if it
    is a tracefmt trace (or an empty directory).

    Raises:
        UsageError: ``path`` is a file, or a non-empty directory that is not replaceable.
    """
    p = Path(path)
    if os.path.lexists(p):
        if p.is_symlink() or not p.is_dir():
            raise UsageError(f"{p}: exists and is not a directory; give a new directory for the trace")
        if any(p.iterdir()):
            if not overwrite:
                raise UsageError(f"{p}: already exists and is not empty; pass --overwrite to replace a trace there")
            if not _is_tracefmt_trace(p):
                raise UsageError(
                    f"{p}: is not a tracefmt trace (no valid manifest.json); --overwrite only replaces a trace, so nothing was changed"
                )
    if not p.parent.is_dir():
        raise UsageError(f"{p.parent}: no such directory for the trace")
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(p):
        old = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".old", dir=p.parent))
        os.rename(p, old / "trace")
    os.rename(tmp, p)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
