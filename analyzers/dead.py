"""Dead layers, dead units and layers whose output never changes.

Sources:
    * fast.ai course part 2 (2019 lesson 10, 2022 lesson 16 "ActivationStats"): the
      fraction of activations in the histogram's bottom bins, plotted per layer over
      training, shows layers whose activations collapse to zero.
    * Lu et al. (2019), "Dying ReLU and Initialization": a ReLU unit whose input is negative
      for every example outputs zero and receives zero gradient, so it never recovers.

Scale-free: a rectifier is dead where it outputs exact zeros; any other layer only where
its output collapsed below ``near_zero`` x its own peak RMS (never against an absolute
threshold, which would call ConvNeXt's LayerScale branches, 1e-6 by design, dead).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracefmt import Trace
from tracefmt.findings import Finding
from tracefmt.op_classes import RECTIFYING, OpClass

from .base import AnalyzerResult, Needs, Param, RecordConsumer, StreamingAnalyzer
from .scan import node_table, training_grid
from .series import BucketStats, LayerSeries, StepGrid, finite_count, rms

__all__ = ["DeadAnalyzer", "is_rectifier"]

#: Classes whose output is no layer that can die on its own: they pass on what they get
#: (a dropout or a reshape after a dead rectifier is dead because the rectifier is).
_NOT_JUDGED = frozenset({OpClass.DROPOUT, OpClass.RESHAPE, OpClass.CONTAINER, OpClass.LOSS})


def is_rectifier(op_class: str | OpClass) -> bool:
    """True for the op class ``rectifier``: exact zeros for every negative input."""
    return op_class in RECTIFYING


class DeadAnalyzer(StreamingAnalyzer):
    """Dead layers (near-zero/exact-zero fraction), dead units (never positive), constant outputs."""

    name = "dead"
    description = "Dead layers (fraction of near-zero or exactly-zero activations over the last steps), dead units (channels never positive), layers whose output never changes."
    needs = Needs(tables=("records",), kinds=("activation",))
    params = (
        Param("threshold", 0.9, "a layer whose near-zero fraction over the window is at least this is dead (warning)", low=0),
        Param("error_threshold", 0.99, "near-zero fraction at which a dead layer is an error", low=0),
        Param(
            "near_zero",
            1e-3,
            "a non-rectifier layer whose RMS falls below this fraction of its own peak RMS so far is near zero (rectifiers: exact zeros)",
            low=0,
        ),
        Param("window", 0.25, "fraction of the last training steps a layer must stay dead", low=0, low_open=True, high=1),
        Param("unit_fraction", 0.5, "dead units of a rectifier layer at or above this fraction are a warning (fewer are info)", low=0, high=1),
        Param("constant_rtol", 1e-6, "relative spread of mean/std/L2 over the window below which an output never changes", low=0),
        Param("max_buckets", 512, "step buckets kept per series (bounds memory on long runs)", low=1),
    )

    def consumer(self, trace: Trace, params: dict[str, Any]) -> _DeadConsumer:
        """The streaming part of the analysis (one pass shared with other analyzers)."""
        return _DeadConsumer(trace, params)


class _DeadConsumer(RecordConsumer):
    columns = ("numel", "nan_count", "inf_count", "zero_count", "mean", "std", "l2", "max", "channel_pos_frac")

    def __init__(self, trace: Trace, params: dict[str, Any]) -> None:
        self.trace = trace
        self.params = params
        self.phases, self.grid = training_grid(trace, params["max_buckets"])
        self.stats = (
            BucketStats(self.grid, ["zero", "rms", "mean", "std", "l2", "max"], extremes=["rms", "mean", "std", "l2", "max"])
            if self.grid
            else None
        )
        if self.grid is not None:
            self.w0 = min(self.grid.size - 1, int(np.floor(self.grid.size * (1.0 - float(params["window"])))))
            self.window_start = int(self.grid.start(self.w0))
        self.unit_max: dict[int, np.ndarray] = {}
        self.index: Any = None

    def consume(self, view: Any) -> None:
        if self.stats is None:
            return
        self.index = view.index
        rows = view.rows(kinds=("activation",), phases=self.phases)
        if rows is not None and not len(rows):
            return
        n = finite_count(view)
        numel = view.f64("numel")
        with np.errstate(invalid="ignore", divide="ignore"):
            zero = np.where(numel > 0, view.f64("zero_count") / np.where(numel > 0, numel, 1), np.nan)
        values = {
            "zero": zero,
            "rms": rms(view),
            "mean": view.f64("mean"),
            "std": view.f64("std"),
            "l2": view.f64("l2"),
            "max": view.f64("max"),
        }
        # Once NaN/Inf appear the statistics describe the damage, not the layer: the
        # gradients analyzer reports the NaN origin, this one judges finite outputs only.
        broken = n < numel
        if broken.any():
            values = {k: np.where(broken, np.nan, v) for k, v in values.items()}
        sid, steps = view.sid, view.steps
        if rows is not None:
            sid, steps, values = sid[rows], steps[rows], {k: v[rows] for k, v in values.items()}
        self.stats.add(sid, steps, values)
        if "channel_pos_frac" in view.batch.schema.names:
            self._units(view, rows, broken)

    def _units(self, view: Any, rows: np.ndarray | None, broken: np.ndarray) -> None:
        col = view.batch.column("channel_pos_frac")
        if col.null_count == view.num_rows:
            return
        keep = col.is_valid().to_numpy(zero_copy_only=False) & (view.steps >= self.window_start) & ~broken
        if rows is not None:
            sel = np.zeros(view.num_rows, dtype=bool)
            sel[rows] = True
            keep &= sel
        if not keep.any():
            return
        ids = view.batch.column("node_id").to_numpy()
        for nid in np.unique(ids[keep]).tolist():
            at = np.flatnonzero(keep & (ids == nid))
            vals = col.take(pa.array(at))
            lengths = pc.list_value_length(vals).to_numpy(zero_copy_only=False)
            flat = pc.list_flatten(vals).to_numpy(zero_copy_only=False)
            if not len(lengths) or (lengths != lengths[0]).any():
                continue
            m = flat.reshape(len(at), lengths[0]).max(axis=0)
            prev = self.unit_max.get(nid)
            self.unit_max[nid] = m if prev is None or len(prev) != len(m) else np.maximum(prev, m)

    def finish(self) -> AnalyzerResult:
        result = AnalyzerResult()
        if self.stats is None or self.index is None:
            return result
        trace, params, grid, w0, window_start, unit_max = self.trace, self.params, self.grid, self.w0, self.window_start, self.unit_max
        nodes = node_table(trace)
        series = LayerSeries(self.index, self.stats)
        frac = _dead_fraction(series, nodes, float(params["near_zero"]))
        result.data["dead_fraction"] = {
            _name(nodes, k[0]) + (f":{k[2]}" if k[2] not in ("", "0") else ""): frac[i].tolist() for i, k in enumerate(series.keys)
        }
        result.data["steps"] = grid.starts.tolist()
        result.data["window_start"] = window_start
        dead_nodes = _dead_layers(series, frac, w0, nodes, trace, params, result)
        since = {f.node_id: int(f.step_first) for f in result.findings if f.code == "dead-layer" and f.node_id is not None}
        result.data["dead_units"] = {_name(nodes, n): np.flatnonzero(m <= 0).tolist() for n, m in sorted(unit_max.items())}
        later = _downstream_note(since, nodes, trace)
        result.findings = [
            replace(f, message=f"{f.message[:-1]}{later(f.node_id)}.") if f.code == "dead-layer" and later(f.node_id) else f
            for f in result.findings
        ]
        result.findings += _dead_units(unit_max, series, w0, nodes, dead_nodes, params, window_start, grid, later)
        result.findings += _constant_outputs(series, w0, nodes, dead_nodes, params, window_start, later, trace)
        result.figures["dead_fraction"] = lambda: _plot_fraction(series, frac, nodes, params)
        if unit_max:
            result.figures["dead_units"] = lambda: _plot_units(unit_max, nodes)
        return result


def _dead_fraction(series: LayerSeries, nodes: dict, near_zero: float) -> np.ndarray:
    """Per (series, bucket): the fraction of outputs that are dead.

    Scale-free: a rectifier's dead outputs are its exact zeros (zero for every negative
    input: no threshold needed). Any other layer is near zero only relative to its own
    scale: while its RMS is below ``near_zero`` x the largest RMS it had so far, all its
    outputs count as near zero (a layer whose output collapsed); otherwise only its exact
    zeros count. A layer small by design from the start (LayerScale at 1e-6) is at its own
    scale, not near zero.
    """
    zero = series.mean("zero")
    r = series.mean("rms")
    peak = np.fmax.accumulate(np.where(np.isfinite(r), r, -np.inf), axis=1) if r.size else r
    with np.errstate(invalid="ignore"):
        collapsed = np.isfinite(r) & (peak > 0) & (r < near_zero * peak)
    return np.where(collapsed, 1.0, zero)


def _judged(nodes: dict, nid: int, slot: str) -> bool:
    """Whether a series can be a dead layer: a layer's main output (first slot), not a container's or a pass-through's."""
    # By class, not by the container flag: a module with children may compute an output of
    # its own (nn.MultiheadAttention, a weight-normed Linear) and is judged like its class.
    if nid >= len(nodes["op_class"]) or nodes["op_class"][nid] in _NOT_JUDGED:
        return False
    return slot in ("", "0") or ("." not in slot and not slot.isdigit())


def _name(nodes: dict[str, np.ndarray], nid: int) -> str:
    return str(nodes["name"][nid]) if 0 <= nid < len(nodes["name"]) and nodes["name"][nid] is not None else str(nid)


def _upstream(trace: Trace, nodes: dict[str, np.ndarray], nid: int, has_records: set[int]) -> list[int]:
    """Producers of ``nid``'s inputs (graph edges), else the node executed just before it."""
    preds = [src for src, dst, _ in trace.edges() if dst == nid and src in has_records]
    if preds:
        return sorted(set(preds))
    order = nodes["order"]
    mine = order[nid] if nid < len(order) else -1
    if mine <= 0:
        return []
    earlier = [n for n in has_records if 0 <= order[n] < mine and not nodes["container"][n]]
    return [max(earlier, key=lambda n: order[n])] if earlier else []


def _dead_layers(
    series: LayerSeries, frac: np.ndarray, w0: int, nodes: dict, trace: Trace, params: dict, result: AnalyzerResult
) -> set[int]:
    grid = series.grid
    peak = series.extreme("max", "max")
    has_records = {k[0] for k in series.keys}
    dead: set[int] = set()
    for i, (nid, _kind, slot) in enumerate(series.keys):
        if not _judged(nodes, nid, slot):
            continue
        win = frac[i, w0:]
        if not np.isfinite(win).any():
            continue
        level = float(np.nanmean(win))
        if level < params["threshold"]:
            continue
        # Dead since: the start of the final run of buckets at or above the threshold.
        ok = np.isfinite(frac[i]) & (frac[i] >= params["threshold"])
        filled = np.flatnonzero(np.isfinite(frac[i]))
        start = int(filled[-1])
        while start > 0 and (not np.isfinite(frac[i, start - 1]) or ok[start - 1]):
            start -= 1
        while not np.isfinite(frac[i, start]):
            start += 1
        name = _name(nodes, nid)
        cause = ""
        for up in _upstream(trace, nodes, nid, has_records):
            rows = [j for j, k in enumerate(series.keys) if k[0] == up]
            up_max = max((float(np.nanmax(peak[j, w0:])) for j in rows if np.isfinite(peak[j, w0:]).any()), default=np.nan)
            if np.isfinite(up_max) and up_max < 0:
                up_name = _name(nodes, up)
                cause = f" Its input from '{up_name}' is negative everywhere (max {up_max:.3g})."
                result.findings.append(Finding(
                    "dead", "negative-preactivation", "warning",
                    f"Every output of '{up_name}' is negative over the last steps (max {up_max:.3g}), so '{name}' after it outputs zero: a large negative bias, a bad initialisation or an oversized update pushed it below zero.",
                    node_id=up, node=up_name, step_first=int(grid.start(start)), step_last=grid.last, metric="max", value=up_max, threshold=0.0,
                ))  # fmt: skip
        sev = "error" if level >= params["error_threshold"] else "warning"
        result.findings.append(Finding(
            "dead", "dead-layer", sev,
            f"Layer '{name}' is dead: {level:.1%} of its outputs are (near) zero over the last steps, since step {grid.start(start)}.{cause}",
            node_id=nid, node=name, step_first=int(grid.start(start)), step_last=grid.last, metric="near_zero_fraction", value=level, threshold=params["threshold"],
        ))  # fmt: skip
        dead.add(nid)
    dead |= _dead_behind_unrecorded_rectifier(series, peak, w0, nodes, trace, has_records, dead, result)
    return dead


def _final_run_start(ok: np.ndarray, filled: np.ndarray) -> int:
    """Start of the last run of True over the filled buckets (gaps do not break a run)."""
    idx = np.flatnonzero(filled)
    start = int(idx[-1])
    while start > 0 and (not filled[start - 1] or ok[start - 1]):
        start -= 1
    while not filled[start]:
        start += 1
    return start


def _dead_behind_unrecorded_rectifier(
    series: LayerSeries, peak: np.ndarray, w0: int, nodes: dict, trace: Trace, has_records: set[int], dead: set[int], result: AnalyzerResult
) -> set[int]:
    """Layers never positive that feed a rectifier with no records of its own (``F.relu`` in a
    forward, seen only as a graph node): that rectifier outputs nothing but zeros.
    """
    edges = trace.edges()
    if not edges:
        return set()
    grid = series.grid
    found: set[int] = set()
    for i, (nid, _kind, _slot) in enumerate(series.keys):
        if nid in dead or nid in found or not np.isfinite(peak[i, w0:]).any():
            continue
        top = float(np.nanmax(peak[i, w0:]))
        if top >= 0:
            continue
        rect = [
            d
            for s, d, _ in edges
            if s == nid and d not in has_records and d < len(nodes["op_class"]) and is_rectifier(nodes["op_class"][d])
        ]
        if not rect:
            continue
        filled = np.isfinite(peak[i])
        start = _final_run_start(filled & (np.nan_to_num(peak[i], nan=0.0) < 0), filled)
        name, after = _name(nodes, nid), _name(nodes, rect[0])
        result.findings.append(Finding(
            "dead", "dead-layer", "error",
            f"Layer '{name}' is dead: every output is negative over the last steps (max {top:.3g}), since step {grid.start(start)}, and it feeds the rectifier '{after}' ({nodes['op_type'][rect[0]]}), which therefore outputs only zeros and passes no gradient: a large negative bias, a bad initialisation or an oversized update.",
            node_id=nid, node=name, step_first=int(grid.start(start)), step_last=grid.last, metric="max", value=top, threshold=0.0,
        ))  # fmt: skip
        found.add(nid)
    return found


def _downstream_note(since: dict[int, int], nodes: dict, trace: Trace) -> Any:
    """Node -> ' (downstream of the dead layer X)' where X explains it, else ''.

    X explains a node only if it died first and feeds it: X's dead-since step is at or
    before the node's own (a layer dead since step 0 is not downstream of one that died at
    step 65), and X reaches the node in the data-flow graph (or, without edges, runs before
    it).
    """
    order = nodes["order"]
    edges = trace.edges()
    succ: dict[int, set[int]] = {}
    for a, b, _ in edges:
        succ.setdefault(a, set()).add(b)
    reach: dict[int, set[int]] = {}

    def reachable(src: int) -> set[int]:
        if src not in reach:
            seen, todo = set(), [src]
            while todo:
                for nxt in succ.get(todo.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            reach[src] = seen
        return reach[src]

    roots = sorted(since, key=lambda n: (since[n], int(order[n]) if n < len(order) and order[n] >= 0 else 1 << 40))

    def feeds(a: int, b: int) -> bool:
        if edges and a in succ:
            return b in reachable(a)
        oa = order[a] if a < len(order) else -1
        ob = order[b] if b < len(order) else -1
        return 0 <= oa < ob

    def note(nid: int) -> str:
        mine = since.get(nid)
        for n in roots:
            if n == nid:
                continue
            if mine is not None and since[n] > mine:
                break
            if feeds(n, nid):
                return f" (downstream of the dead layer '{_name(nodes, n)}', dead since step {since[n]})"
        return ""

    return note


def _dead_units(
    unit_max: dict,
    series: LayerSeries,
    w0: int,
    nodes: dict,
    dead_nodes: set[int],
    params: dict,
    window_start: int,
    grid: StepGrid,
    later: Any,
) -> list[Finding]:
    out = []
    for nid, m in sorted(unit_max.items()):
        if nid in dead_nodes:
            continue
        if nid >= len(nodes["op_class"]) or not is_rectifier(nodes["op_class"][nid]):
            # A channel that is never positive is only "dead" behind a rectifier; elsewhere
            # (a Linear output, the input data) it is just a sign.
            continue
        n_dead = int((m <= 0).sum())
        if not n_dead:
            continue
        share = n_dead / len(m)
        name = _name(nodes, nid)
        cause = later(nid)
        sev = "warning" if share >= params["unit_fraction"] and not cause else "info"
        out.append(Finding(
            "dead", "dead-units", sev,
            f"{n_dead} of {len(m)} units of '{name}' never output a positive value over the last steps (from step {window_start}){cause}.",
            node_id=nid, node=name, step_first=window_start, step_last=grid.last, metric="dead_unit_fraction", value=share, threshold=params["unit_fraction"],
        ))  # fmt: skip
    return out


def _constant_outputs(
    series: LayerSeries, w0: int, nodes: dict, dead_nodes: set[int], params: dict, window_start: int, later: Any, trace: Trace
) -> list[Finding]:
    """Layers whose output never changes over the window.

    A warning only when the claim "it ignores its input" can be checked: the layer holds
    parameters and a producer of its input (a graph edge) has an output that does change.
    A table looked up at fixed positions (sinusoidal position embeddings) is constant
    because its input is, by design: info.
    """
    rtol = float(params["constant_rtol"])
    count = series.count("mean")[:, w0:]
    spans = {}
    for metric in ("mean", "std", "l2"):
        lo = series.extreme(metric, "min")[:, w0:]
        hi = series.extreme(metric, "max")[:, w0:]
        spans[metric] = (np.nanmin(np.where(np.isnan(lo), np.inf, lo), axis=1, initial=np.inf), np.nanmax(np.where(np.isnan(hi), -np.inf, hi), axis=1, initial=-np.inf))
    steps_seen = (count > 0).sum(axis=1) * series.grid.width
    constant: dict[int, int] = {}
    varying: set[int] = set()
    for i, (nid, _kind, _slot) in enumerate(series.keys):
        if steps_seen[i] < 3 or count[i].sum() < 3:
            continue
        same = all(np.isfinite(lo[i]) and np.isfinite(hi[i]) and (hi[i] - lo[i]) <= rtol * max(abs(lo[i]), abs(hi[i]), 1e-30) for lo, hi in spans.values())
        if same:
            constant.setdefault(nid, i)
        else:
            varying.add(nid)
    producers: dict[int, set[int]] = {}
    for a, b, _ in trace.edges() if constant else ():
        producers.setdefault(b, set()).add(a)
    out = []
    for nid, i in constant.items():
        if nid in dead_nodes or nid in varying:
            continue
        name = _name(nodes, nid)
        learns = nid < len(nodes["param_count"]) and nodes["param_count"][nid] > 0
        input_varies = bool(producers.get(nid, set()) & varying)
        cause = later(nid)
        out.append(Finding(
            "dead", "constant-output", "warning" if learns and input_varies and not cause else "info",
            f"The output of '{name}' never changes over the last steps (mean {spans['mean'][0][i]:.4g}, std {spans['std'][0][i]:.4g})"
            + (f": it ignores its input{' and its parameters do not learn' if learns else ''}" if input_varies else ", nor does its input")
            + f"{cause}.",
            node_id=nid, node=name, step_first=window_start, step_last=series.grid.last, metric="relative_spread", value=0.0, threshold=rtol,
        ))  # fmt: skip
    return out


def _plot_fraction(series: LayerSeries, frac: np.ndarray, nodes: dict, params: dict) -> Any:
    from .figures import MAX_ROWS, SEQUENTIAL_CMAP, new_figure, pick_rows, short_label

    data = np.nan_to_num(frac, nan=0.0)
    names = [short_label(_name(nodes, k[0]), 30) for k in series.keys]
    # Many layers: the most-dead ones (largest fraction over the last quarter) and one row for the rest.
    tail = data[:, -max(1, data.shape[1] // 4) :] if data.size else data
    keep, rest = pick_rows(tail.mean(axis=1) if tail.size else np.zeros(len(names)), MAX_ROWS)
    if rest:
        data = np.vstack([data[keep], data[rest].max(axis=0, keepdims=True)])
        names = [names[i] for i in keep] + [f"other {len(rest)} layers (max)"]
    fig, ax = new_figure(width=8, height=max(2.5, 0.22 * len(names) + 1.5))
    img = ax.imshow(data, aspect="auto", origin="upper", cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1, interpolation="nearest",
                    extent=(series.grid.first, series.grid.last + 1, len(names) - 0.5, -0.5))  # fmt: skip
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("step")
    title = "Fraction of dead outputs (rectifiers: exact zeros; others: collapsed below near_zero x own peak RMS)"
    ax.set_title(title + (f": {len(keep)} most-dead of {len(keep) + len(rest)} layers" if rest else ""))
    fig.colorbar(img, ax=ax, label="fraction")
    return fig


def _plot_units(unit_max: dict, nodes: dict) -> Any:
    from .figures import MAX_ROWS, SERIES_COLORS, new_figure, pick_rows, short_label

    ids = sorted(unit_max)
    shares = np.asarray([float((unit_max[n] <= 0).mean()) for n in ids])
    keep, rest = pick_rows(shares, MAX_ROWS)
    fig, ax = new_figure(width=max(8, 0.2 * len(keep) + 3), height=4)
    ax.bar(range(len(keep)), shares[keep], color=SERIES_COLORS[3])
    ax.set_xticks(range(len(keep)), [short_label(_name(nodes, ids[i]), 18) for i in keep], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of dead units")
    ax.set_title(
        "Units never positive over the window"
        + (f": {len(keep)} of {len(ids)} layers (the rest have at most {shares[rest].max():.0%})" if rest else "")
    )
    return fig
