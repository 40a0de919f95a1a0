"""TensorBoard event files to a trace, read with TensorBoard's own ``EventAccumulator``.

Scalars become the ``scalars`` table; histograms become ``records`` rows with the
histogram scheme ``edges`` (spec section 7), whose edges are TensorBoard's
``bucket_limit`` exactly, preceded by the histogram's ``min`` (or -DBL_MAX, TensorBoard's
lower bound of the first bucket, when ``min`` is not below the first limit). An infinite
limit is kept as DBL_MAX. A histogram row's statistics come from TensorBoard's
``num``/``sum``/``sum_squares``/``min``/``max`` (``mean = sum / num``, ``std`` from the
sums, ``l2 = sqrt(sum_squares)``, ``pos_count`` from the buckets at or above 0), and are
replaced by the exact values where the log holds tracefmt's statistic series (tag
``kind.metric/node``). ``zero_count`` cannot be known from buckets: 0 unless a statistic
series gives it. The graph (``add_graph``) becomes the nodes table; a node named by a
histogram tag and absent from the graph is added.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt.enums import Kind, Phase
from tracefmt.errors import MissingDependencyError, TraceFormatError, TraceNotFoundError, UsageError
from tracefmt.op_classes import classify_op_type

from .tags import METRICS, TRACE_TAG, parse_foreign_tag

__all__ = ["import_tensorboard", "find_run"]

DBL_MAX = sys.float_info.max
_KINDS = {k.value for k in Kind}
_PHASES = {p.value for p in Phase}
_HIST_TAG = re.compile(
    r"^(?P<kind>[a-z_]+)(?:\.(?P<metric>[a-z_0-9]+))?(?:@(?P<phase>[a-z]+))?/(?P<node>.+?)(?::(?P<slot>[^:#/]*))?(?:#(?P<call>\d+))?$"
)


def _has_events(d: Path) -> bool:
    return any(p.is_file() for p in d.glob("events.out.tfevents.*"))


def find_run(logdir: str | Path, run: str | None = None) -> Path:
    """The directory holding one run's event files: ``logdir`` itself or one run below it."""
    root = Path(logdir)
    if not root.is_dir():
        raise TraceNotFoundError(f"{root}: no such TensorBoard log directory")
    if run is not None:
        d = root / run
        if not _has_events(d):
            raise UsageError(f"{root}: run {run!r} has no event files")
        return d
    if _has_events(root):
        return root
    runs = sorted(str(p.parent.relative_to(root)) for p in root.rglob("events.out.tfevents.*") if p.is_file())
    runs = list(dict.fromkeys(runs))
    if len(runs) == 1:
        return root / runs[0]
    if not runs:
        raise TraceNotFoundError(f"{root}: no TensorBoard event files (events.out.tfevents.*)")
    raise UsageError(f"{root}: holds {len(runs)} runs; choose one with run=/--run: {', '.join(runs)}")


def _accumulator(run_dir: Path) -> Any:
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError as exc:  # pragma: no cover - the extra is part of 'all'
        raise MissingDependencyError("TensorBoard import needs the 'tensorboard' package (pip install 'tracefmt[tensorboard]')") from exc
    keep_all = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.GRAPH: 1, ea.COMPRESSED_HISTOGRAMS: 1, ea.IMAGES: 1, ea.AUDIO: 1}
    acc = ea.EventAccumulator(str(run_dir), size_guidance=keep_all)
    acc.damaged = _reload_noting_damage(acc)
    return acc


class _DamageNotes(logging.Handler):
    """Collects TensorBoard's own note that it stopped reading an event file early."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # event_file_loader: a record failing its length or CRC check, or cut short, ends the
        # file for TensorBoard: what follows it is never read (TensorBoard only logs it).
        if not str(record.msg).startswith("Truncated record in ") or not isinstance(record.args, tuple) or len(record.args) != 2:
            return
        path, error = record.args
        name = path.decode(errors="replace") if isinstance(path, bytes) else str(path)
        reason = str(getattr(error, "message", error))
        for spelling in (repr(name.encode()), repr(name), name):
            reason = reason.replace(spelling, "").strip()
        self.notes.append(" ".join(f"{Path(name).name}: {reason or 'damaged record'}".split())[:300])


def _reload_noting_damage(acc: Any) -> list[str]:
    """``acc.Reload()``; returns one note per event file TensorBoard stopped reading early."""
    log = logging.getLogger("tensorboard")
    notes = _DamageNotes()
    level, propagate = log.level, log.propagate
    log.addHandler(notes)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # its debug messages are for this handler, not the user's logging
    try:
        acc.Reload()
    finally:
        log.removeHandler(notes)
        log.setLevel(level)
        log.propagate = propagate
    return notes.notes


def _tensor_value(event: Any) -> np.ndarray:
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)


def _plugin(acc: Any, tag: str) -> str:
    try:
        return acc.SummaryMetadata(tag).plugin_data.plugin_name
    except (KeyError, AttributeError):
        return ""


def _bins(limits: list[float], counts: list[float], lo: float) -> tuple[list[float], list[int]] | None:
    lim = np.asarray(limits, dtype=np.float64)
    if not len(lim) or np.isnan(lim).any():
        return None
    lim = np.where(np.isposinf(lim), DBL_MAX, np.where(np.isneginf(lim), -DBL_MAX, lim))
    first = float(lo) if math.isfinite(lo) and lo < lim[0] else -DBL_MAX
    e = np.concatenate([[first], lim])
    if not (e[1:] > e[:-1]).all():
        return None
    return e.tolist(), [int(round(c)) for c in counts]


class _Rows:
    """Record rows keyed by (step, phase, node name, kind, slot, call)."""

    def __init__(self) -> None:
        self.rows: dict[tuple, dict[str, Any]] = {}

    def get(self, step: int, phase: str, node: str, kind: str, slot: str, call: int) -> dict[str, Any]:
        key = (step, phase, node, kind, slot, call)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = {"step": step, "phase": phase, "node": node, "kind": kind, "slot": slot, "call": call,
                                    "dtype": "float32", "numel": 0, "nan_count": 0, "inf_count": 0, "zero_count": 0, "pos_count": 0}  # fmt: skip
        return row


def _histogram_row(row: dict[str, Any], edges: list[float], counts: list[int], h: Any) -> None:
    num = float(h.num)
    row.update(hist_scheme="edges", hist_lo=edges[0], hist_hi=edges[-1], hist_counts=counts, hist_edges=edges)
    row["numel"] = max(int(row.get("numel") or 0), int(round(num)))
    lefts = np.asarray(edges[:-1])
    row["pos_count"] = int(np.asarray(counts)[lefts >= 0].sum())
    if num > 0:
        mean = float(h.sum) / num
        row.update(mean=mean, std=math.sqrt(max(0.0, float(h.sum_squares) / num - mean * mean)), min=float(h.min), max=float(h.max),
                   l2=math.sqrt(max(0.0, float(h.sum_squares))))  # fmt: skip
    else:
        row.update(l2=0.0)


def _known_layout(row: dict[str, Any], entry: list[Any] | None) -> None:
    """The dtype and shape of a series from an export's tag map (TensorBoard does not keep them)."""
    if entry and len(entry) >= 8:
        if isinstance(entry[6], str):
            row["dtype"] = entry[6]
        if isinstance(entry[7], list):
            row["_shape"] = [int(v) for v in entry[7]]


def _series_key(tag: str, known: dict[str, list[Any]]) -> tuple[str, str, str, str, int, str | None] | None:
    """(phase, node, kind, slot, call, metric) of a record-like tag, None for a plain scalar."""
    if tag in known:
        phase, node_id, kind, slot, call, metric = known[tag][:6]
        return phase, f"#{node_id}", kind, slot, int(call), metric
    m = _HIST_TAG.match(tag)
    if m and m.group("kind") in _KINDS and (m.group("phase") or "train") in _PHASES:
        metric = m.group("metric")
        if metric is not None and metric not in METRICS:
            return None
        return m.group("phase") or "train", m.group("node"), m.group("kind"), m.group("slot") or "", int(m.group("call") or 0), metric
    return None


def _scalar_events(acc: Any, tags: dict[str, Any]) -> Iterator[tuple[str, int, float, float]]:
    for tag in tags.get("scalars", []):
        for e in acc.Scalars(tag):
            yield tag, int(e.step), float(e.value), float(e.wall_time)
    for tag in tags.get("tensors", []):
        if tag == TRACE_TAG or _plugin(acc, tag) != "scalars":
            continue
        for e in acc.Tensors(tag):
            v = _tensor_value(e)
            if v.size == 1:
                yield tag, int(e.step), float(v.reshape(-1)[0]), float(e.wall_time)


def _histogram_events(acc: Any, tags: dict[str, Any]) -> Iterator[tuple[str, int, list[float], list[int], Any]]:
    for tag in tags.get("histograms", []):
        for e in acc.Histograms(tag):
            h = e.histogram_value
            b = _bins(list(h.bucket_limit), list(h.bucket), float(h.min))
            if b is not None:
                yield tag, int(e.step), b[0], b[1], h
    for tag in tags.get("tensors", []):
        if _plugin(acc, tag) != "histograms":
            continue
        for e in acc.Tensors(tag):
            v = _tensor_value(e)  # (k, 3): left edge, right edge, count
            if v.ndim != 2 or v.shape[1] != 3 or not len(v):
                continue
            edges = [*v[:, 0].tolist(), float(v[-1, 1])]
            if not np.isfinite(edges).all() or not (np.asarray(edges[1:]) > np.asarray(edges[:-1])).all():
                continue
            centres = (v[:, 0] + v[:, 1]) / 2
            h = _Summary(num=float(v[:, 2].sum()), sum=float((centres * v[:, 2]).sum()), sum_squares=float((centres**2 * v[:, 2]).sum()),
                         min=float(v[0, 0]), max=float(v[-1, 1]))  # fmt: skip
            yield tag, int(e.step), edges, [int(round(c)) for c in v[:, 2]], h


class _Summary:
    def __init__(self, **kw: float) -> None:
        self.__dict__.update(kw)


def _graph_nodes(acc: Any) -> list[dict[str, Any]]:
    try:
        graph = acc.Graph()
    except (ValueError, KeyError):
        return []
    rows = []
    for i, n in enumerate(graph.node):
        parts = re.findall(r"\[([^\]]+)\]", n.name)
        scope = ".".join(parts) if parts else n.name.rpartition("/")[0].replace("/", ".")
        inputs = [s.lstrip("^").split(":")[0] for s in n.input]
        # TensorBoard graphs carry framework op names ('aten::linear', 'MatMul'): the
        # name rule of the op vocabulary is the only source of their class.
        rows.append({"name": n.name, "scope": scope, "op_type": n.op or "", "op_class": classify_op_type(n.op or "").value,
                     "inputs": inputs, "outputs": [n.name], "order": i})  # fmt: skip
    return rows


def import_tensorboard(
    logdir: str | Path, out: str | Path, *, run: str | None = None, mode: str = "create", model: str | None = None
) -> Path:
    """Convert one TensorBoard run to a trace.

    Args:
        logdir: A TensorBoard log directory (the run itself, or a directory of runs).
        out: The trace directory to write.
        run: The run below ``logdir`` when it holds several. Defaults to the only one.
        mode: Writer mode: ``'create'`` or ``'overwrite'``. Defaults to ``'create'``.
        model: Model name for the manifest. Defaults to the one stored by an export, else
            the run's directory name.

    Returns:
        The trace directory.
    """
    import tensorboard

    from tracefmt import TraceWriter

    run_dir = find_run(logdir, run)
    acc = _accumulator(run_dir)
    tags = acc.Tags()
    doc: dict[str, Any] = {}
    if TRACE_TAG in tags.get("tensors", []):
        events = acc.Tensors(TRACE_TAG)
        if events:
            try:
                doc = json.loads(_tensor_value(events[-1]).reshape(-1)[0].decode())
            except (ValueError, UnicodeDecodeError, IndexError):
                doc = {}
    known: dict[str, list[Any]] = doc.get("series", {}) if isinstance(doc.get("series"), dict) else {}
    rows = _Rows()
    scalars: list[dict[str, Any]] = []
    for tag, step, value, wall in _scalar_events(acc, tags):
        key = _series_key(tag, known)
        if key is None or key[5] is None:
            name, _, phase = tag.rpartition("@")
            name, phase = (name, phase) if name and phase in _PHASES else (tag, "train")
            scalars.append({"step": step, "phase": phase, "name": name, "value": value, "wall_time": wall})
            continue
        phase, node, kind, slot, call, metric = key
        row = rows.get(step, phase, node, kind, slot, call)
        _known_layout(row, known.get(tag))
        row[metric] = int(value) if metric in ("numel", "nan_count", "inf_count", "zero_count", "pos_count") else value
        row["_exact"] = True
    for tag, step, edges, counts, h in _histogram_events(acc, tags):
        key = _series_key(tag, known)
        if key is None:
            node, kind, slot = parse_foreign_tag(tag)
            key = ("train", node, kind, slot, 0, None)
        phase, node, kind, slot, call, _ = key
        row = rows.get(step, phase, node, kind, slot, call)
        _known_layout(row, known.get(tag))
        exact = {k: row[k] for k in (*METRICS, "nan_count", "inf_count", "zero_count") if k in row} if row.get("_exact") else {}
        _histogram_row(row, edges, counts, h)
        row.update(exact)
    nodes, by_name = _nodes(doc, acc, rows)
    if not rows.rows and not scalars:
        damage = f" ({'; '.join(acc.damaged)})" if acc.damaged else ""
        raise TraceFormatError(f"{run_dir}: no scalar or histogram events could be read{damage}")
    writer = TraceWriter(out, mode=mode, model=model or doc.get("manifest", {}).get("model") or run_dir.name,
                         producer={"adapter": "tracefmt.adapters.tensorboard", "framework": "tensorboard", "framework_version": tensorboard.__version__},
                         metadata={"tensorboard_logdir": str(run_dir), **({"tensorboard_damaged": acc.damaged} if acc.damaged else {})},
                         flush_interval=0)  # fmt: skip
    try:
        if nodes:  # scalars alone need no nodes table
            writer.write_nodes(nodes)
        recs = []
        for row in rows.rows.values():
            r = {k: v for k, v in row.items() if not k.startswith("_") and k != "node"}
            r["node_id"] = by_name[row["node"]]
            shape = row.get("_shape")
            r["shape"] = shape if shape is not None and int(np.prod(shape, dtype=np.int64)) == int(r["numel"]) else [int(r["numel"])]
            recs.append(r)
        recs.sort(key=lambda r: (r["step"], r["phase"], r["node_id"], r["kind"], r["slot"], r["call"]))
        for i in range(0, len(recs), 8192):
            writer.append("records", recs[i : i + 8192])
        if scalars:
            writer.append("scalars", scalars)
    finally:
        writer.close()
    return Path(out)


def _nodes(doc: dict[str, Any], acc: Any, rows: _Rows) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The nodes table: the stored one of an export, else the graph plus nodes named by tags."""
    out: list[dict[str, Any]] = []
    by_name: dict[str, int] = {}
    stored = doc.get("nodes")
    if isinstance(stored, list) and stored:
        out = stored
        by_name = {f"#{r['node_id']}": int(r["node_id"]) for r in stored}
        by_name.update({str(r["name"]): int(r["node_id"]) for r in stored})
    else:
        for r in _graph_nodes(acc):
            r["node_id"] = len(out)
            by_name.setdefault(r["name"], r["node_id"])
            out.append(r)
    for row in rows.rows.values():
        name = row["node"]
        if name not in by_name:
            nid = max((int(r["node_id"]) for r in out), default=-1) + 1
            by_name[name] = nid
            out.append({"node_id": nid, "name": name, "scope": name, "op_type": "", "inputs": [], "outputs": [], "param_count": 0})
    for r in out:
        r.setdefault("container", False)
        r.setdefault("param_count", 0)
        r.setdefault("inputs", [])
        r.setdefault("outputs", [])
    return out, by_name
