"""Mutations of a trace directory for the fuzzing suite (tests/_fuzz.py).

Each mutation takes a seeded :class:`random.Random`, the trace directory and the case's
scratch directory (which holds ``victim.txt`` and ``outside/``: files outside the trace
that no command may touch), changes the trace in place and returns a short label.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

#: Strings that break naive DOT, HTML, JSON, terminal or path handling.
HOSTILE = [
    '<<TABLE HREF="javascript:alert(1)"><TR><TD>x</TD></TR></TABLE>>',
    '<script>alert("x")</script>',
    '<img src=x onerror="alert(1)">',
    '"]; evil [label="x"]; "',
    "a\\",
    "\\",
    "\x00nul\x00",
    "\x1b[31mred\x1b[0m\r\n\t\x07",
    "\u202eevil\u202c",
    "../../../../etc/passwd",
    "/etc/passwd",
    "{}",
    "%s%n%x",
    "\ud7ff\ufffe\uffff",
    "x" * 5000,
    "",
    "javascript:alert(1)",
    "</svg><svg onload=alert(1)>",
    "&amp;&lt;&#0;",
]

_INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**62, 15000, 10**9, 65536]
_FLOATS = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324, -0.0, 1e300]
_SEGMENT_SUFFIXES = (".arrow", ".arrows", ".parquet")


def _files(trace: Path) -> list[Path]:
    return sorted(p for p in trace.rglob("*") if p.is_file() and not p.is_symlink())


def _dirs(trace: Path) -> list[Path]:
    return sorted(p for p in trace.rglob("*") if p.is_dir() and not p.is_symlink())


def _pick_file(rng: random.Random, trace: Path, *, prefer_data: bool = True) -> Path | None:
    files = _files(trace)
    if prefer_data:
        data = [p for p in files if p.suffix in _SEGMENT_SUFFIXES]
        if data and rng.random() < 0.8:
            files = data
    return rng.choice(files) if files else None


def bit_flips(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Flip 1-16 random bits of one file."""
    p = _pick_file(rng, trace)
    if p is None:
        return "bit_flips:none"
    data = bytearray(p.read_bytes())
    if not data:
        return "bit_flips:empty"
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    p.write_bytes(bytes(data))
    return f"bit_flips:{p.suffix}"


def int_stamp(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Overwrite 4 or 8 bytes of one file with an extreme integer (lengths, offsets)."""
    p = _pick_file(rng, trace)
    if p is None or p.stat().st_size < 8:
        return "int_stamp:none"
    data = bytearray(p.read_bytes())
    width = rng.choice((4, 8))
    value = rng.choice((2**31 - 1, 2**32 - 1, 2**63 - 1, 2**31, 0, 1, 2**20)) & ((1 << (8 * width)) - 1)
    i = rng.randrange(0, len(data) - width)
    data[i : i + width] = value.to_bytes(width, "little")
    p.write_bytes(bytes(data))
    return f"int_stamp:{p.suffix}"


def truncate(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Cut one file at a random length."""
    p = _pick_file(rng, trace)
    if p is None:
        return "truncate:none"
    size = p.stat().st_size
    os.truncate(p, rng.randrange(size) if size else 0)
    return f"truncate:{p.suffix}"


def _hostile_json_value(rng: random.Random) -> object:
    choice = rng.randrange(8)
    if choice == 0:
        value: list = []
        for _ in range(rng.choice((50, 200, 900))):
            value = [value]
        return value
    if choice == 1:
        return rng.choice(HOSTILE)
    if choice == 2:
        return rng.choice(_INTS)
    if choice == 3:
        return None
    if choice == 4:
        return {"a": [1, {"b": rng.choice(HOSTILE)}]}
    if choice == 5:
        return rng.choice(["².0", "1.0", "1", "2.0", "1.999999999999999999999", "01.1", " 1.0"])
    if choice == 6:
        return [rng.choice(HOSTILE)]
    return rng.choice([True, False, 1.5, -1])


def json_mutation(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Change, delete or add one field of manifest.json (wrong types, deep nesting, odd versions)."""
    p = trace / "manifest.json"
    if p.is_symlink() or not p.is_file():
        return "json:not-a-file"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return "json:unreadable"
    if not isinstance(data, dict):
        return "json:not-object"
    key = rng.choice([*data.keys(), "world_size", "format_version", "model", "metadata", "producer", "complete"])
    action = rng.randrange(4)
    if action == 0:
        data.pop(key, None)
    elif action == 1 and isinstance(data.get(key), dict):
        data[key][rng.choice(HOSTILE)] = _hostile_json_value(rng)
    else:
        data[key] = _hostile_json_value(rng)
    text = json.dumps(data)
    if rng.random() < 0.1:
        text = "[" * 100000 + "]" * 100000
    p.write_text(text)
    return f"json:{key}"


def _read_table(p: Path) -> tuple[pa.Table, str]:
    """A table of the trace, fully validated: a file an earlier mutation damaged must not crash
    the harness's own rewriting (pyarrow aborts the process on some invalid arrays)."""
    if p.suffix == ".parquet":
        t, fmt = pq.read_table(p), "parquet"
    else:
        # Read into memory, not memory-mapped: the file is rewritten in place afterwards.
        data = pa.py_buffer(p.read_bytes())
        try:
            t, fmt = ipc.open_file(pa.BufferReader(data)).read_all(), "file"
        except pa.ArrowInvalid:
            t, fmt = ipc.open_stream(pa.BufferReader(data)).read_all(), "stream"
    t.validate(full=True)
    return t, fmt


def _write_table(p: Path, t: pa.Table, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(t, p)
        return
    with pa.OSFile(str(p), "wb") as f:
        with (ipc.new_file if fmt == "file" else ipc.new_stream)(f, t.schema) as w:
            w.write_table(t)


def _mutate_column(rng: random.Random, t: pa.Table) -> tuple[pa.Table, str]:
    i = rng.randrange(t.num_columns)
    name, col = t.schema.names[i], t.column(i)
    action = rng.randrange(9)
    n = t.num_rows
    if action == 0:
        return t.remove_column(i), f"drop:{name}"
    if action == 1:
        return t.rename_columns([*t.schema.names[:i], rng.choice(HOSTILE + ["x"]), *t.schema.names[i + 1 :]]), f"rename:{name}"
    if action == 2:
        return t.append_column(name, col), f"dup:{name}"
    if action == 3:
        return t.set_column(i, name, pa.nulls(n, col.type)), f"nulls:{name}"
    if action == 4:
        try:
            return t.set_column(
                i, name, pc.cast(col, rng.choice([pa.string(), pa.int64(), pa.float32(), pa.int8(), pa.large_string()]), safe=False)
            ), f"cast:{name}"
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return t.set_column(i, name, pa.array([rng.choice(HOSTILE)] * n)), f"retype:{name}"
    if pa.types.is_integer(col.type):
        values = [rng.choice(_INTS) for _ in range(n)]
        try:
            return t.set_column(i, name, pa.array(values, pa.int64()).cast(col.type, safe=False)), f"ints:{name}"
        except pa.ArrowInvalid:
            return t, "ints:skip"
    if pa.types.is_floating(col.type):
        return t.set_column(i, name, pa.array([rng.choice(_FLOATS) for _ in range(n)], col.type)), f"floats:{name}"
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return t.set_column(i, name, pa.array([rng.choice(HOSTILE) for _ in range(n)], col.type)), f"strings:{name}"
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        vt = col.type.value_type
        if pa.types.is_string(vt):
            vals = [[rng.choice(HOSTILE) for _ in range(rng.randrange(4))] for _ in range(n)]
        elif pa.types.is_integer(vt):
            vals = [[rng.choice(_INTS) for _ in range(rng.randrange(6))] for _ in range(n)]
        elif pa.types.is_floating(vt):
            vals = [[rng.choice(_FLOATS + [0.5]) for _ in range(rng.randrange(70))] for _ in range(n)]
        else:
            vals = [None] * n
        try:
            return t.set_column(i, name, pa.array(vals, pa.list_(vt)).cast(col.type, safe=False)), f"lists:{name}"
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return t, "lists:skip"
    return t.remove_column(i), f"drop:{name}"


def schema_mutation(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Rewrite one Arrow/Parquet file of the trace with a column dropped, renamed, repeated, retyped or filled with extremes."""
    files = [p for p in _files(trace) if p.suffix in _SEGMENT_SUFFIXES]
    if not files:
        return "schema:none"
    p = rng.choice(files)
    try:
        t, fmt = _read_table(p)
    except (pa.ArrowException, OSError, ValueError):
        return "schema:unreadable"
    if t.num_columns == 0:
        return "schema:empty"
    label = ""
    for _ in range(rng.randint(1, 3)):
        if t.num_columns == 0:
            break
        t, what = _mutate_column(rng, t)
        label += what + ","
    try:
        _write_table(p, t, fmt)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return "schema:unwritable"
    return f"schema:{label}"


def hostile_strings(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Replace every string (and list-of-string) value of every table, and the manifest's model name, with hostile text."""
    for p in _files(trace):
        if p.suffix not in _SEGMENT_SUFFIXES:
            continue
        try:
            t, fmt = _read_table(p)
        except (pa.ArrowException, OSError, ValueError):
            continue
        for i, f in enumerate(t.schema):
            n = t.num_rows
            if pa.types.is_string(f.type) and f.name not in ("kind", "phase", "hist_scheme", "severity", "dtype", "op_class"):
                t = t.set_column(i, f.name, pa.array([rng.choice(HOSTILE) for _ in range(n)], f.type))
            elif pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type):
                t = t.set_column(i, f.name, pa.array([[rng.choice(HOSTILE)] for _ in range(n)], f.type))
        _write_table(p, t, fmt)
    m = trace / "manifest.json"
    if m.is_symlink() or not m.is_file():
        return "hostile_strings"
    try:
        data = json.loads(m.read_text())
        data["model"] = rng.choice(HOSTILE)
        data["run_id"] = rng.choice(HOSTILE)
        m.write_text(json.dumps(data))
    except (OSError, ValueError, TypeError):
        pass
    return "hostile_strings"


def symlinks(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Replace a file or directory of the trace by a link to something outside it."""
    action = rng.randrange(4)
    if action == 0 or action == 1:
        p = _pick_file(rng, trace, prefer_data=False)
        if p is None:
            return "symlink:none"
        p.unlink()
        target = rng.choice([scratch / "victim.txt", Path("/dev/zero"), Path("/dev/urandom"), scratch / "outside" / "data.arrow"])
        p.symlink_to(target)
        return f"symlink:file->{target.name}"
    dirs = [d for d in _dirs(trace)]
    if action == 2 and dirs:
        d = rng.choice(dirs)
        os.rename(d, scratch / "outside" / f"moved-{d.name}")
        d.symlink_to(scratch / "outside" / f"moved-{d.name}")
        return "symlink:dir->outside"
    # A link planted at a name a command might write to.
    rank_dirs = [d for d in dirs if d.name.startswith("rank=")] or [trace]
    d = rng.choice(rank_dirs)
    name = rng.choice([".compact.json.tmp", ".part-00001.parquet.tmp", "part-00009.parquet", ".compact.json"])
    (d / name).unlink(missing_ok=True)
    (d / name).symlink_to(scratch / "victim.txt")
    (trace / "findings").mkdir(exist_ok=True)
    (trace / "findings" / ".dead.arrow.tmp").symlink_to(scratch / "victim.txt")
    return f"symlink:planted:{name}"


def fifos(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Replace a file by a FIFO, or add a FIFO where a reader looks (a segment, a findings file)."""
    action = rng.randrange(3)
    if action == 0:
        p = _pick_file(rng, trace, prefer_data=False)
        if p is None:
            return "fifo:none"
        p.unlink()
    elif action == 1:
        (trace / "findings").mkdir(exist_ok=True)
        p = trace / "findings" / "dead.arrow"
        p.unlink(missing_ok=True)
    else:
        p = trace / "records" / "rank=0" / "part-00077.arrows"
        p.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(p)
    return f"fifo:{p.name}"


def journal(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Plant a compaction journal whose names point outside the trace (or are not names at all)."""
    rank_dirs = [d for d in _dirs(trace) if d.name.startswith("rank=")]
    if not rank_dirs:
        d = trace / "records" / "rank=0"
        d.mkdir(parents=True, exist_ok=True)
    else:
        d = rng.choice(rank_dirs)
    segs = sorted(p.name for p in d.iterdir() if p.is_file())
    victim = scratch / "victim.txt"
    replaces = rng.choice([
        [os.path.relpath(victim, d)],
        [str(victim)],
        ["..", "."],
        [str(scratch / "outside")],
        [*segs[:1], "../../manifest.json"],
        "not-a-list",
        [{"x": 1}],
    ])  # fmt: skip
    output = rng.choice([segs[0] if segs else "x", os.path.relpath(victim, d), "manifest.json", 7, None])
    target = d / ".compact.json"
    if os.path.lexists(target) and not (target.is_file() and not target.is_symlink()):
        # An earlier mutation made it a FIFO or a link: writing would block or escape.
        return "journal:skipped(not a regular file)"
    target.write_text(json.dumps({"output": output, "replaces": replaces}))
    return "journal"


def sparse_huge(rng: random.Random, trace: Path, scratch: Path) -> str:
    """Make one file a sparse multi-gigabyte file (size checks, not reads, must stop it)."""
    p = _pick_file(rng, trace, prefer_data=False)
    if p is None:
        return "sparse:none"
    with open(p, "r+b") as f:
        f.truncate(rng.choice((2**31, 2**33, 2**40)))
    return f"sparse:{p.suffix}"


MUTATIONS = [bit_flips, bit_flips, int_stamp, truncate, json_mutation, schema_mutation, schema_mutation,
             hostile_strings, symlinks, fifos, journal, sparse_huge]  # fmt: skip
