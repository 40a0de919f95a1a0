"""Gradient health: vanishing and exploding gradients, update/weight ratios, the NaN origin.

Sources:
    * Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward
      neural networks": in deep sigmoid networks the back-propagated gradients shrink layer
      after layer, so the lower layers barely learn. Measured here as each layer's typical
      gradient RMS relative to the layer nearest the loss.
    * Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural
      networks": exploding gradients, norms growing by orders of magnitude.
    * Karpathy, CS231n notes "Neural Networks Part 3" (ratio of weights:updates): the
      update/weight norm ratio should be around 1e-3; far below, the learning rate is too
      low; far above, too high.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tracefmt import Trace
from tracefmt.findings import Finding

from .base import AnalyzerResult, Needs, Param, RecordConsumer, StreamingAnalyzer
from .nan_origin import NanOrigin, NanTracker
from .scan import node_table, training_grid
from .series import BucketStats, LayerSeries, StepGrid, nanmedian_rows, rms

__all__ = ["GradientsAnalyzer"]

_GRAD_KINDS = ("gradient", "weight_grad")
_WEIGHT_KINDS = ("weight", "weight_update")
#: float32 machine epsilon: a relative update smaller than this is rounded away.
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _is_weight_slot(slot: str) -> bool:
    return "bias" not in slot and not slot.startswith("all:")


class GradientsAnalyzer(StreamingAnalyzer):
    """Vanishing/exploding gradients per layer and across depth, update/weight ratio, NaN origin."""

    name = "gradients"
    description = "Vanishing and exploding gradients (per layer, across depth, over time), update/weight ratio per layer, and the first node and step where NaN/Inf appear."
    needs = Needs(tables=("records",), kinds=_GRAD_KINDS, any_kind=True)
    params = (
        Param("vanishing_ratio", 1e-3, "a layer whose typical gradient RMS is below this fraction of the output-side layer's is vanishing", low=0, low_open=True),
        Param("exploding_ratio", 1e3, "a layer whose typical gradient RMS exceeds the output-side layer's by this factor explodes across depth", low=0, low_open=True),
        Param("growth_factor", 100.0, "gradient RMS growing by this factor over its value at the start of training is exploding", low=1),
        Param("update_ratio_low", 1e-5, "median |update|/|weight| below this: learning rate probably too low (info)", low=0),
        Param("update_ratio_high", 0.1, "median |update|/|weight| above this: learning rate probably too high (info)", low=0),
        Param("update_ratio_floor", FLOAT32_EPS, "median |update|/|weight| below this is lost to float32 rounding (warning)", low=0),
        Param("update_ratio_ceiling", 1.0, "median |update|/|weight| above this replaces the weight each step (warning)", low=0, low_open=True),
        Param("max_buckets", 512, "step buckets kept per series (bounds memory on long runs)", low=1),
    )

    def consumer(self, trace: Trace, params: dict[str, Any]) -> _GradientsConsumer:
        """The streaming part of the analysis (one pass shared with other analyzers)."""
        return _GradientsConsumer(trace, params)


class _GradientsConsumer(RecordConsumer):
    columns = ("numel", "nan_count", "inf_count", "l2", "call", "seq")

    def __init__(self, trace: Trace, params: dict[str, Any]) -> None:
        self.trace = trace
        self.params = params
        self.phases, self.grid = training_grid(trace, params["max_buckets"])
        self.stats = BucketStats(self.grid, ["rms", "l2", "overflow"], extremes=["rms"]) if self.grid else None
        self.nan = NanTracker()
        self.index: Any = None

    def consume(self, view: Any) -> None:
        self.index = view.index
        self.nan.consume(view)
        if self.stats is None:
            return
        rows = view.rows(kinds=(*_GRAD_KINDS, *_WEIGHT_KINDS), phases=self.phases)
        values = {"rms": rms(view), "l2": view.f64("l2"), "overflow": (view.f64("inf_count") > 0).astype(np.float64)}
        sid, steps = view.sid, view.steps
        if rows is not None:
            if not len(rows):
                return
            sid, steps, values = sid[rows], steps[rows], {k: v[rows] for k, v in values.items()}
        self.stats.add(sid, steps, values)

    def finish(self) -> AnalyzerResult:
        params, grid = self.params, self.grid
        nodes = node_table(self.trace)
        result = AnalyzerResult()
        origin = self.nan.origin(self.trace)
        if origin is not None:
            result.findings.append(_origin_finding(origin, nodes))
            result.data["nan_origin"] = origin.__dict__
        if self.stats is None or self.index is None:
            return result
        series = LayerSeries(self.index, self.stats)
        depth = _depth_profile(series, nodes)
        result.data["depth"] = depth
        result.findings += _depth_findings(depth, nodes, params, grid)
        result.findings += _growth_findings(series, nodes, params)
        ratios = _update_ratios(series)
        result.data["update_ratio"] = {f"{nodes['name'][n]}.{s}": float(np.nanmedian(r)) if np.isfinite(r).any() else None for (n, s), (r, _) in ratios.items()}
        peak = series.extreme("rms", "max") if series.keys else None
        grads = {(n, sl): float(np.nanmax(peak[i])) for i, (n, k, sl) in enumerate(series.keys) if k == "weight_grad" and np.isfinite(peak[i]).any()}
        result.findings += _ratio_findings(ratios, nodes, params, grid, grads)
        result.data["steps"] = grid.starts.tolist()
        result.figures["gradient_rms"] = lambda: _plot_rms(series, nodes)
        result.figures["depth"] = lambda: _plot_depth(depth)
        if ratios:
            result.figures["update_ratio"] = lambda: _plot_ratios(ratios, nodes, grid, params)
        return result


def _node_name(nodes: dict[str, np.ndarray], nid: int) -> str:
    return str(nodes["name"][nid]) if 0 <= nid < len(nodes["name"]) and nodes["name"][nid] is not None else str(nid)


def _origin_finding(o: NanOrigin, nodes: dict[str, np.ndarray]) -> Finding:
    what = "NaN" if o.nan_count else "Inf"
    name = _node_name(nodes, o.node_id)
    of = {"activation": "output", "gradient": "output gradient", "input": "input", "weight": "parameter", "weight_grad": "parameter gradient", "weight_update": "parameter update"}.get(o.kind, o.kind)
    slot = f" '{o.slot}'" if o.kind.startswith("weight") and o.slot else ""
    return Finding(
        analyzer="gradients",
        code="nan-origin",
        severity="error",
        node_id=o.node_id,
        node=name,
        step_first=o.step,
        step_last=o.last_step,
        metric="nan_count" if o.nan_count else "inf_count",
        value=float(o.nan_count or o.inf_count),
        threshold=0.0,
        message=f"{what} first appears at step {o.step} ({o.phase}) in the {of}{slot} of '{name}', the earliest of {o.bad_records} non-finite records ({o.bad_nodes} nodes) at that step in execution order.",
    )


def _order_key(nodes: dict[str, np.ndarray], nid: int) -> int:
    o = nodes["order"][nid] if nid < len(nodes["order"]) else -1
    return int(o) if o >= 0 else 1_000_000 + nid


def _depth_profile(series: LayerSeries, nodes: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Typical gradient RMS per layer (median over step buckets), in forward order."""
    keys = series.keys
    kinds_present = {k for _, k, _ in keys}
    kind = "gradient" if "gradient" in kinds_present else "weight_grad"
    rms_b = series.mean("rms")
    typical = nanmedian_rows(rms_b) if len(keys) else np.array([])
    peak = series.extreme("rms", "max") if len(keys) else np.zeros((0, 0))
    per_node: dict[int, tuple[float, float]] = {}
    for i, (nid, k, slot) in enumerate(keys):
        if k != kind or (kind == "weight_grad" and not _is_weight_slot(slot)) or not np.isfinite(typical[i]):
            continue
        if nid < len(nodes["container"]) and nodes["container"][nid]:
            continue
        prev = per_node.get(nid, (0.0, 0.0))
        per_node[nid] = (max(prev[0], float(typical[i])), max(prev[1], float(np.nanmax(peak[i]))))
    with_params = [n for n in per_node if n < len(nodes["param_count"]) and nodes["param_count"][n] > 0]
    chosen = with_params if len(with_params) >= 2 else list(per_node)
    chosen.sort(key=lambda n: _order_key(nodes, n))
    return [{"node_id": int(n), "node": _node_name(nodes, n), "kind": kind, "rms": per_node[n][0], "peak": per_node[n][1]} for n in chosen]


def _depth_findings(depth: list[dict[str, Any]], nodes: dict[str, np.ndarray], params: dict[str, Any], grid: StepGrid) -> list[Finding]:
    out: list[Finding] = []
    for d in depth:
        if d["peak"] == 0.0:
            out.append(Finding("gradients", "zero-gradient", "warning", f"No gradient reaches '{d['node']}': its {d['kind']} is exactly zero throughout.", node_id=d["node_id"], node=d["node"], step_first=grid.first, step_last=grid.last, metric=f"{d['kind']}_rms", value=0.0, threshold=0.0))
    live = [d for d in depth if d["rms"] > 0]
    if len(live) < 2:
        return out
    ref = live[-1]
    for d in live[:-1]:
        ratio = d["rms"] / ref["rms"]
        if ratio < params["vanishing_ratio"]:
            out.append(Finding(
                "gradients", "vanishing-gradient", "warning",
                f"Vanishing gradient at '{d['node']}': typical {d['kind']} RMS {d['rms']:.3g} is {ratio:.2g} x that of the output-side layer '{ref['node']}' ({ref['rms']:.3g}).",
                node_id=d["node_id"], node=d["node"], step_first=grid.first, step_last=grid.last,
                metric=f"{d['kind']}_rms_ratio_to_last", value=ratio, threshold=params["vanishing_ratio"],
            ))  # fmt: skip
        elif ratio > params["exploding_ratio"]:
            out.append(Finding(
                "gradients", "exploding-gradient-depth", "warning",
                f"Gradient grows towards the input at '{d['node']}': typical {d['kind']} RMS {d['rms']:.3g} is {ratio:.3g} x that of the output-side layer '{ref['node']}'.",
                node_id=d["node_id"], node=d["node"], step_first=grid.first, step_last=grid.last,
                metric=f"{d['kind']}_rms_ratio_to_last", value=ratio, threshold=params["exploding_ratio"],
            ))  # fmt: skip
    return out


def _growth_findings(series: LayerSeries, nodes: dict[str, np.ndarray], params: dict[str, Any]) -> list[Finding]:
    """Per node: the first step where a gradient RMS exceeds growth_factor x its initial value."""
    keys = series.keys
    if not keys:
        return []
    peak = series.extreme("rms", "max")
    first_vals = series.mean("rms")
    overflow = series.mean("overflow")
    grid = series.grid
    worst: dict[int, tuple[int, int, float, str]] = {}
    for i, (nid, kind, _slot) in enumerate(keys):
        if kind not in _GRAD_KINDS:
            continue
        vals = first_vals[i]
        ok = np.flatnonzero(np.isfinite(vals) & (vals > 0))
        # An infinite gradient element is an overflow: the norm exploded past float range.
        inf_hit = np.nan_to_num(overflow[i], nan=0.0) > 0
        if len(ok) < 2 and not inf_hit.any():
            continue
        # Baseline: the start of training (first 5% of the buckets that have a value).
        base = float(np.median(vals[ok[: max(1, len(ok) // 20)]])) if len(ok) else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            growth = np.where(inf_hit, np.inf, peak[i] / base)
        hit = np.flatnonzero(inf_hit | (np.isfinite(growth) & (growth >= params["growth_factor"])))
        if not len(hit):
            continue
        b0, b1, g = int(hit[0]), int(hit[-1]), float(np.nanmax(growth))
        prev = worst.get(nid)
        if prev is None or b0 < prev[0] or (b0 == prev[0] and g > prev[2]):
            worst[nid] = (b0, b1, g, kind)
    out = []
    for nid, (b0, b1, g, kind) in sorted(worst.items(), key=lambda kv: (kv[1][0], _order_key(nodes, kv[0]))):
        name = _node_name(nodes, nid)
        out.append(Finding(
            "gradients", "exploding-gradient", "error",
            f"Exploding gradient at '{name}': {kind} {'overflows to Inf' if np.isinf(g) else f'RMS reaches {g:.3g} x its initial value'}, first at step {grid.start(b0)}.",
            node_id=nid, node=name, step_first=int(grid.start(b0)), step_last=grid.end(b1),
            metric=f"{kind}_rms_growth", value=g, threshold=params["growth_factor"],
        ))  # fmt: skip
    return out


def _update_ratios(series: LayerSeries) -> dict[tuple[int, str], tuple[np.ndarray, bool]]:
    """(node, slot) -> (per-bucket |update|/|weight|, exact?); a lower bound from weight norms when no updates were recorded."""
    keys = series.keys
    l2 = series.mean("l2") if keys else None
    weights = {(n, s): i for i, (n, k, s) in enumerate(keys) if k == "weight" and _is_weight_slot(s)}
    updates = {(n, s): i for i, (n, k, s) in enumerate(keys) if k == "weight_update" and _is_weight_slot(s)}
    out: dict[tuple[int, str], tuple[np.ndarray, bool]] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, wi in weights.items():
            w = l2[wi]
            if key in updates:
                # Weight records are taken after the optimizer step, so the weight the update
                # at step t was applied to is the record of the step before (CS231n divides
                # the update by the parameter scale before the update).
                before = _previous_value(w)
                out[key] = (np.where(before > 0, l2[updates[key]] / before, np.nan), True)
            elif np.isfinite(w).sum() >= 2:
                # | |W_t| - |W_s| | <= sum of |update| over the steps from s to t (triangle
                # inequality), so the change of the norm between two buckets, divided by the
                # steps they span, is a lower bound of the mean update per step.
                grid = series.grid
                filled = np.flatnonzero(np.isfinite(w) & (w > 0))
                r = np.full_like(w, np.nan)
                a, b = filled[:-1], filled[1:]
                span = np.array([grid.end(int(j)) - int(grid.start(int(i))) for i, j in zip(a, b)], dtype=np.float64)
                r[b] = np.abs(w[b] - w[a]) / (np.maximum(span, 1.0) * w[a])
                out[key] = (r, False)
    return out


def _previous_value(w: np.ndarray) -> np.ndarray:
    """For each bucket, the value of the closest earlier non-empty bucket (NaN if none)."""
    idx = np.where(np.isfinite(w), np.arange(len(w)), -1)
    last = np.maximum.accumulate(idx)
    prev = np.full(len(w), -1)
    prev[1:] = last[:-1]
    return np.where(prev >= 0, w[np.maximum(prev, 0)], np.nan)


def _ratio_findings(ratios: dict, nodes: dict[str, np.ndarray], params: dict[str, Any], grid: StepGrid, grads: dict[tuple[int, str], float]) -> list[Finding]:
    out = []
    for (nid, slot), (r, exact) in ratios.items():
        fin = r[np.isfinite(r)]
        if not len(fin):
            continue
        # Steps without any update (a layer that stopped receiving gradient) say nothing
        # about the step size; the dead and zero-gradient findings cover them.
        moving = fin[fin > 0]
        med = float(np.median(moving)) if len(moving) else 0.0
        name = _node_name(nodes, nid)
        where = dict(node_id=nid, node=name, step_first=grid.first, step_last=grid.last, metric="update_weight_ratio", value=med)
        if med > params["update_ratio_ceiling"]:
            out.append(Finding("gradients", "update-too-large", "warning", f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median{'' if exact else ', lower bound'}): each step replaces the weight; the learning rate is far too high (about 1e-3 is typical).", threshold=params["update_ratio_ceiling"], **where))
        elif med > params["update_ratio_high"]:
            out.append(Finding("gradients", "update-large", "info", f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median{'' if exact else ', lower bound'}); about 1e-3 is typical, the learning rate may be high.", threshold=params["update_ratio_high"], **where))
        elif exact and med == 0.0 and grads.get((nid, slot), 0.0) > 0:
            out.append(Finding("gradients", "update-too-small", "warning", f"'{name}.{slot}' never changes although its gradient is non-zero: every update is lost to float32 rounding (learning rate far too small, or zero).", threshold=params["update_ratio_floor"], **where))
        elif exact and med == 0.0:
            out.append(Finding("gradients", "frozen", "info", f"'{name}.{slot}' never changes (update norm 0): frozen, not in the optimizer, or it receives no gradient.", threshold=0.0, **where))
        elif exact and med < params["update_ratio_floor"]:
            out.append(Finding("gradients", "update-too-small", "warning", f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median), below float32 resolution: the layer does not learn.", threshold=params["update_ratio_floor"], **where))
        elif exact and med < params["update_ratio_low"]:
            out.append(Finding("gradients", "update-small", "info", f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median); about 1e-3 is typical, the learning rate may be low.", threshold=params["update_ratio_low"], **where))
    return out


# -- figures -------------------------------------------------------------------------------
def _plot_rms(series: LayerSeries, nodes: dict[str, np.ndarray]) -> Any:
    from .figures import new_figure, plot_layer_lines

    fig, ax = new_figure(width=8, height=4.5)
    vals = series.mean("rms")
    rows, labels = [], []
    for i, (nid, kind, slot) in enumerate(series.keys):
        if kind == "gradient" or (kind == "weight_grad" and _is_weight_slot(slot)):
            rows.append(np.where(vals[i] > 0, vals[i], np.nan))
            labels.append(f"{_node_name(nodes, nid)} ({kind})")
    plot_layer_lines(ax, series.grid.starts, np.asarray(rows).reshape(len(rows), -1), labels, scale="log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient RMS (log)")
    ax.set_title("Gradient RMS per layer" + (f": the {min(8, len(rows))} largest of {len(rows)}" if len(rows) > 9 else ""))
    return fig


def _plot_depth(depth: list[dict[str, Any]]) -> Any:
    from .figures import SERIES_COLORS, SEVERITY_COLORS, new_figure, short_label, sparse_ticks

    n = len(depth)
    fig, ax = new_figure(width=max(8, min(16, 0.12 * n + 4)), height=4.2)
    vals = np.asarray([d["rms"] if d["rms"] is not None else np.nan for d in depth], dtype=np.float64)
    pos = np.isfinite(vals) & (vals > 0)
    ax.bar(np.flatnonzero(pos), vals[pos], color=SERIES_COLORS[0], width=0.8)
    ax.set_yscale("log")
    floor = float(vals[pos].min()) / 10 if pos.any() else 1e-12
    zero = np.flatnonzero(np.isfinite(vals) & (vals == 0))
    if len(zero):  # log axes cannot show 0: mark the layers whose gradient is exactly zero
        ax.scatter(
            zero,
            np.full(len(zero), floor),
            marker="x",
            color=SEVERITY_COLORS["error"],
            zorder=3,
            label=f"gradient exactly 0 ({len(zero)} layers)",
        )
        ax.legend(fontsize=7, loc="best")
    ax.set_ylim(bottom=floor / 2)
    marked = zero.tolist()[:10]
    ticks = sorted({t for t in sparse_ticks(n) if all(abs(t - z) > max(1, n // 80) for z in marked)} | set(marked))
    ax.set_xticks(ticks, [short_label(depth[i]["node"], 18) for i in ticks], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("typical gradient RMS (log)")
    ax.set_title(f"Gradient RMS across depth (input -> output, {n} layers)")
    return fig


def _plot_ratios(ratios: dict, nodes: dict[str, np.ndarray], grid: StepGrid, params: dict[str, Any]) -> Any:
    from .figures import new_figure, plot_layer_lines

    fig, ax = new_figure(width=8, height=4.5)
    rows = [np.where(r > 0, r, np.nan) for (r, _) in ratios.values()]
    labels = [f"{_node_name(nodes, nid)}.{slot}" for (nid, slot) in ratios]
    ax.axhline(1e-3, color="k", ls="--", lw=0.8)
    ax.axhspan(params["update_ratio_low"], params["update_ratio_high"], color="0.93", zorder=0)
    # The layers farthest from the 1e-3 guide are the ones drawn.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = [float(np.nanmax(np.abs(np.log10(r / 1e-3)))) if np.isfinite(r).any() else np.nan for r in rows]
    plot_layer_lines(ax, grid.starts, np.asarray(rows).reshape(len(rows), -1), labels, score=score, scale="log")
    ax.set_xlabel("step")
    ax.set_ylabel("|update| / |weight| (log)")
    ax.set_title(
        "Update/weight ratio per layer (guide: 1e-3)" + (f": the {min(8, len(rows))} farthest of {len(rows)}" if len(rows) > 9 else "")
    )
    return fig
