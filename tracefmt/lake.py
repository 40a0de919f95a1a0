"""Lakes: a directory of many traces read as one dataset (spec 'Lakes').

A lake is a directory whose entries are trace directories (``<lake>/<name>/manifest.json``),
conventionally named ``<run_id>.trace``. Every row of every table carries its run's
``run_id`` and ``rank`` as columns, and no directory name is a ``key=value`` pair, so one
glob reads every run and rank of a table with any engine, e.g.
``<lake>/*/records/*/*.parquet``. This module finds the runs of a lake and selects one.
"""

from __future__ import annotations

from pathlib import Path

from .errors import TraceError, TraceNotFoundError, UsageError
from .manifest import MANIFEST, read_manifest

__all__ = ["is_lake", "lake_runs", "select_run"]


def is_lake(path: str | Path) -> bool:
    """True if ``path`` is a directory without a manifest holding at least one trace directory."""
    p = Path(path)
    if not p.is_dir() or (p / MANIFEST).exists():
        return False
    return any(d.is_dir() and (d / MANIFEST).is_file() for d in p.iterdir() if not d.name.startswith((".", "_")))


def lake_runs(path: str | Path) -> dict[str, Path]:
    """``run_id -> trace directory`` of every readable trace in the lake at ``path``, by directory name."""
    out: dict[str, Path] = {}
    for d in sorted(Path(path).iterdir()):
        if d.name.startswith((".", "_")) or not d.is_dir() or d.is_symlink() or not (d / MANIFEST).is_file():
            continue
        try:
            run_id = str(read_manifest(d).get("run_id") or d.name)
        except TraceError:
            continue  # an unreadable member is reported when it is selected, not here
        out.setdefault(run_id, d)
    return out


def select_run(path: str | Path, run: str | None) -> Path:
    """The trace directory of ``run`` (a run_id or a directory name) in the lake at ``path``.

    Without ``run``, a lake of one run selects it.

    Raises:
        UsageError: ``run`` is unknown, or missing while the lake has several runs.
        TraceNotFoundError: the lake holds no trace.
    """
    runs = lake_runs(path)
    if not runs:
        raise TraceNotFoundError(f"{path}: not a trace directory or a lake of traces")
    if run is None:
        if len(runs) == 1:
            return next(iter(runs.values()))
        raise UsageError(f"{path}: a lake of {len(runs)} runs; select one (run=...); available: {', '.join(list(runs)[:10])}")
    if run in runs:
        return runs[run]
    by_name = {d.name: d for d in runs.values()}
    if run in by_name:
        return by_name[run]
    raise UsageError(f"{path}: no run {run!r} in the lake; available: {', '.join(list(runs)[:10])}{' ...' if len(runs) > 10 else ''}")
