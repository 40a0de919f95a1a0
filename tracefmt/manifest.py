"""manifest.json: reading, version checks and atomic writes (spec 'Manifest', 'Versioning')."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import TraceFormatError, TraceNotFoundError, UnsupportedVersionError
from .safe_io import read_json
from .schema import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FIELDS

__all__ = ["MANIFEST", "new_manifest", "read_manifest", "write_manifest", "check_version", "parse_version", "SUPPORTED_MAJOR"]

MANIFEST = "manifest.json"
#: The major format version this library reads (any 1.x; spec 'Versioning').
SUPPORTED_MAJOR = int(FORMAT_VERSION.split(".")[0])
_READ_MAJOR = SUPPORTED_MAJOR


def parse_version(text: Any, *, where: str = MANIFEST) -> tuple[int, int]:
    """Parse ``'MAJOR.MINOR'`` into integers, refusing anything else."""
    parts = str(text).split(".")
    if not isinstance(text, str) or len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise TraceFormatError(f"{where}: format_version must be 'MAJOR.MINOR', got {text!r}")
    return int(parts[0]), int(parts[1])


def check_version(text: Any, *, where: str = MANIFEST) -> tuple[int, int]:
    """Return the parsed version; refuse a major version this reader does not know."""
    major, minor = parse_version(text, where=where)
    if major != _READ_MAJOR:
        raise UnsupportedVersionError(
            f"{where}: format_version {text} is not supported; this tracefmt reads {_READ_MAJOR}.x (upgrade tracefmt to read it)"
        )
    return major, minor


def new_manifest(
    *,
    run_id: str | None = None,
    producer: dict[str, Any] | None = None,
    model: str | None = None,
    world_size: int = 1,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh manifest dict with the required fields filled in."""
    from . import __version__

    prod = {"adapter": "tracefmt", "framework": "", "framework_version": "", "tracefmt_version": __version__}
    prod.update(producer or {})
    out: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "run_id": run_id or uuid.uuid4().hex,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "producer": prod,
        "world_size": int(world_size),
        "metadata": dict(metadata or {}),
    }
    if model is not None:
        out["model"] = model
    return out


def read_manifest(trace_dir: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; errors name the file and the field."""
    path = Path(trace_dir) / MANIFEST
    if not Path(trace_dir).is_dir():
        raise TraceNotFoundError(f"{trace_dir}: not a trace directory (no such directory)")
    if not os.path.lexists(path):
        raise TraceNotFoundError(f"{trace_dir}: not a trace directory (missing {MANIFEST})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise TraceFormatError(f"{path}: must be a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise TraceFormatError(f"{path}: field 'format' must be {FORMAT_NAME!r}, got {data.get('format')!r}")
    if "format_version" not in data:
        raise TraceFormatError(f"{path}: missing required field 'format_version'")
    check_version(data["format_version"], where=str(path))
    return _known_fields_well_typed(data)


def _known_fields_well_typed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the spec's fields whose JSON type is wrong (``producer`` a string,
    ``metadata`` a number): every reader then sees either the declared type or nothing.
    ``tracefmt validate`` reads the file itself and reports them.
    """
    out = dict(data)
    for name, (jtype, _required, _doc) in MANIFEST_FIELDS.items():
        if name in out and not json_type_matches(out[name], jtype):
            del out[name]
    return out


def json_type_matches(value: Any, jtype: str) -> bool:
    """Whether ``value`` (parsed JSON) is of the manifest JSON type ``jtype`` (a boolean is not an integer)."""
    if jtype == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "object": dict}[jtype])


def write_manifest(trace_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temporary file, fsync, rename).

    The file gets the mode of every other file of the trace (0666 less the umask), so
    whoever can read the trace's tables can read its manifest.
    """
    trace_dir = Path(trace_dir)
    for _ in range(100):
        tmp = trace_dir / f".manifest.{secrets.token_hex(8)}.tmp"
        try:
            # Exclusive and random, like mkstemp, but with the umask's mode, not 0600.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(f"{trace_dir}: cannot create a temporary manifest")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, trace_dir / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
