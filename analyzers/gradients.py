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
from tracefmt.op_classes import OpClass

from .base import AnalyzerResult, Needs, Param, RecordConsumer, StreamingAnalyzer
from .causes import lr_rise_note
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
        Param(
            "vanishing_ratio",
            1e-3,
            "the layers from the input side whose typical gradient norm (or |dL/dW|/|W|) is below this fraction of the output-side layer's: vanishing",
            low=0,
            low_open=True,
        ),
        Param(
            "exploding_ratio",
            1e3,
            "the layers from the input side whose typical gradient norm exceeds the output-side layer's by this factor: exploding across depth",
            low=0,
            low_open=True,
        ),
        Param(
            "growth_factor",
            100.0,
            "the norm of all gradients growing by this factor over its value at the start of training is exploding",
            low=1,
        ),
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
        result.findings += _growth_findings(series, nodes, params, lr_rise_note(self.trace))
        ratios = _update_ratios(series)
        result.data["update_ratio"] = {
            f"{nodes['name'][n]}.{s}": float(np.nanmedian(r)) if np.isfinite(r).any() else None for (n, s), (r, _) in ratios.items()
        }
        peak = series.extreme("rms", "max") if series.keys else None
        grads = {
            (n, sl): float(np.nanmax(peak[i]))
            for i, (n, k, sl) in enumerate(series.keys)
            if k == "weight_grad" and np.isfinite(peak[i]).any()
        }
        result.findings += _ratio_findings(ratios, nodes, params, grid, grads)
        result.findings += _frozen_findings(series, nodes, ratios, grads, grid)
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
    of = {
        "activation": "output",
        "gradient": "output gradient",
        "input": "input",
        "weight": "parameter",
        "weight_grad": "parameter gradient",
        "weight_update": "parameter update",
    }.get(o.kind, o.kind)
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
    """Typical gradient size per layer (median over step buckets), in forward order.

    With output-gradient records the size is the L2 norm of dL/d(output): the norm of the
    whole tensor does not shrink when the same gradient spreads over more elements (a wider
    layer, a larger image, a longer sequence), unlike the per-element RMS. Without them it
    is the relative weight gradient ``|dL/dW| / |W|``, free of the weights' own scale.
    """
    keys = series.keys
    kinds_present = {k for _, k, _ in keys}
    kind = "gradient" if "gradient" in kinds_present else "weight_grad"
    if not keys:
        return []
    l2 = series.mean("l2")
    peak = series.extreme("rms", "max")
    weight_l2 = {(n, s): nanmedian_rows(l2[i : i + 1])[0] for i, (n, k, s) in enumerate(keys) if k == "weight"}
    per_node: dict[int, tuple[float, float]] = {}
    for i, (nid, k, slot) in enumerate(keys):
        if k != kind or (kind == "weight_grad" and not _is_weight_slot(slot)):
            continue
        if nid >= len(nodes["op_class"]) or nodes["op_class"][nid] == OpClass.CONTAINER:
            continue
        size = float(nanmedian_rows(l2[i : i + 1])[0])
        if kind == "weight_grad":
            w = weight_l2.get((nid, slot), np.nan)
            size = size / w if np.isfinite(w) and w > 0 else np.nan
        if not np.isfinite(size):
            continue
        prev = per_node.get(nid, (0.0, 0.0))
        per_node[nid] = (max(prev[0], size), max(prev[1], float(np.nanmax(peak[i])) if np.isfinite(peak[i]).any() else 0.0))
    with_params = [n for n in per_node if n < len(nodes["param_count"]) and nodes["param_count"][n] > 0]
    chosen = with_params if len(with_params) >= 2 else list(per_node)
    chosen.sort(key=lambda n: _order_key(nodes, n))
    metric = "gradient_l2" if kind == "gradient" else "relative_weight_grad"
    return [
        {"node_id": int(n), "node": _node_name(nodes, n), "kind": kind, "metric": metric, "size": per_node[n][0], "peak": per_node[n][1]}
        for n in chosen
    ]


def _input_side_run(ratios: list[float], below: bool, limit: float) -> int:
    """How many layers, counted from the input, all lie beyond ``limit`` (below or above it)."""
    n = 0
    for r in ratios:
        if (r < limit) if below else (r > limit):
            n += 1
        else:
            break
    return n


def _depth_findings(depth: list[dict[str, Any]], nodes: dict[str, np.ndarray], params: dict[str, Any], grid: StepGrid) -> list[Finding]:
    """Vanishing or exploding gradients across depth (Glorot & Bengio 2010).

    The gradient vanishes when it fades on its way from the loss to the input: every layer
    from the input up to some depth receives less than ``vanishing_ratio`` x the gradient
    of the output-side layer. One small layer between normal ones is not that: a gated
    branch (LayerScale at 1e-6, an attention query at initialisation) receives a small
    gradient by design while the layers before it, on the residual path, receive the full
    one. So the criterion is the run of layers from the input side, reported once at its
    deepest layer.
    """
    out: list[Finding] = []
    for d in depth:
        if d["peak"] == 0.0 and d["size"] == 0.0:
            out.append(
                Finding(
                    "gradients",
                    "zero-gradient",
                    "warning",
                    f"No gradient reaches '{d['node']}': its {d['kind']} is exactly zero throughout.",
                    node_id=d["node_id"],
                    node=d["node"],
                    step_first=grid.first,
                    step_last=grid.last,
                    metric=d["metric"],
                    value=0.0,
                    threshold=0.0,
                )
            )
    live = [d for d in depth if d["size"] > 0]
    if len(live) < 2:
        return out
    ref = live[-1]
    ratios = [d["size"] / ref["size"] for d in live[:-1]]
    what = "gradient norm" if ref["kind"] == "gradient" else "relative weight gradient |dL/dW|/|W|"
    for below, code, sev, limit in (
        (True, "vanishing-gradient", "warning", params["vanishing_ratio"]),
        (False, "exploding-gradient-depth", "warning", params["exploding_ratio"]),
    ):
        n = _input_side_run(ratios, below, limit)
        if not n:
            continue
        d, first = live[n - 1], live[0]
        ratio = ratios[n - 1]
        verb = "fades" if below else "grows"
        layers = (
            f"all {n} layers from the input side ('{first['node']}') up to '{d['node']}' receive"
            if n > 1
            else f"the input-side layer '{d['node']}' receives"
        )
        out.append(Finding(
            "gradients", code, sev,
            f"The gradient {verb} towards the input: {layers} {'less' if below else 'more'} than {limit:g} x the {what} of the output-side layer '{ref['node']}' (at '{d['node']}': {ratio:.2g} x).",
            node_id=d["node_id"], node=d["node"], step_first=grid.first, step_last=grid.last,
            metric=f"{d['metric']}_ratio_to_last", value=ratio, threshold=limit,
        ))  # fmt: skip
    return out


def _global_norm(series: LayerSeries) -> tuple[np.ndarray, list[int]]:
    """Per bucket, the norm of all parameter gradients together (or all output gradients), and the series used."""
    keys = series.keys
    kind = "weight_grad" if any(k == "weight_grad" for _, k, _ in keys) else "gradient"
    rows = [i for i, (_, k, _) in enumerate(keys) if k == kind]
    if not rows:
        return np.zeros(0), []
    l2 = series.mean("l2")[rows]
    with np.errstate(invalid="ignore"):
        total = np.sqrt(np.nansum(l2**2, axis=0))
    total[~np.isfinite(l2).any(axis=0)] = np.nan
    return total, rows


def _growth_findings(series: LayerSeries, nodes: dict[str, np.ndarray], params: dict[str, Any], lr_note: Any = None) -> list[Finding]:
    """Exploding gradients over time (Pascanu et al. 2013): the global gradient norm grows
    ``growth_factor`` x over its value at the start of training, or a gradient overflows.

    The global norm (every parameter gradient together, what gradient clipping bounds) is
    far above the float noise floor, unlike one tensor's gradient that is zero in exact
    arithmetic (a bias before a normalisation) or gated by design (LayerScale at 1e-6),
    whose growth from rounding noise or from its gate opening is no explosion. The layer
    named is the one whose own gradient grew most among those carrying at least
    ``1/sqrt(layers)`` of the global norm at that step.
    """
    keys = series.keys
    if not keys:
        return []
    grid = series.grid
    overflow = series.mean("overflow")
    total, rows = _global_norm(series)
    l2 = series.mean("l2")
    inf_rows = [i for i, (_, k, _) in enumerate(keys) if k in _GRAD_KINDS and (np.nan_to_num(overflow[i], nan=0.0) > 0).any()]
    hit_b, growth, base = None, np.nan, np.nan
    if len(rows) and np.isfinite(total).sum() >= 2:
        ok = np.flatnonzero(np.isfinite(total) & (total > 0))
        if len(ok):
            base = float(np.median(total[ok[: max(1, len(ok) // 20)]]))
            with np.errstate(invalid="ignore", divide="ignore"):
                g = total / base
            over = np.flatnonzero(np.isfinite(g) & (g >= params["growth_factor"]))
            if len(over):
                hit_b, growth = int(over[0]), float(np.nanmax(g))
    first_inf = None
    for i in inf_rows:
        b = int(np.flatnonzero(np.nan_to_num(overflow[i], nan=0.0) > 0)[0])
        if (
            first_inf is None
            or b < first_inf[0]
            or (b == first_inf[0] and _order_key(nodes, keys[i][0]) < _order_key(nodes, keys[first_inf[1]][0]))
        ):
            first_inf = (b, i)
    if first_inf is not None and (hit_b is None or first_inf[0] <= hit_b):
        b, i = first_inf
        nid, kind = keys[i][0], keys[i][1]
        name = _node_name(nodes, nid)
        note = lr_note(int(grid.start(b))) if lr_note else ""
        return [Finding(
            "gradients", "exploding-gradient", "error",
            f"Exploding gradient at '{name}': {kind} overflows to Inf, first at step {grid.start(b)}.{note}",
            node_id=nid, node=name, step_first=int(grid.start(b)), step_last=grid.last,
            metric=f"{kind}_growth", value=float("inf"), threshold=params["growth_factor"],
        )]  # fmt: skip
    if hit_b is None:
        return []
    b = hit_b
    share = 1.0 / np.sqrt(max(1, len(rows)))
    best, best_g = None, -1.0
    for i in rows:
        v = l2[i]
        if not np.isfinite(v[b]) or v[b] < share * total[b]:
            continue
        ok = np.flatnonzero(np.isfinite(v) & (v > 0))
        if not len(ok):
            continue
        own = max(float(np.median(v[ok[: max(1, len(ok) // 20)]])), FLOAT32_EPS * base)
        gi = v[b] / own
        if gi > best_g:
            best, best_g = i, gi
    nid = keys[best][0] if best is not None else None
    name = _node_name(nodes, nid) if nid is not None else None
    where = f"; it grew most at '{name}' ({best_g:.3g} x)" if name else ""
    note = lr_note(int(grid.start(b))) if lr_note else ""
    return [Finding(
        "gradients", "exploding-gradient", "error",
        f"Exploding gradient: the norm of all gradients reaches {growth:.3g} x its value at the start of training, first at step {grid.start(b)}{where}.{note}",
        node_id=nid, node=name, step_first=int(grid.start(b)), step_last=grid.last,
        metric="global_gradient_norm_growth", value=growth, threshold=params["growth_factor"],
    )]  # fmt: skip


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


def _frozen_findings(series: LayerSeries, nodes: dict[str, np.ndarray], ratios: dict, grads: dict[tuple[int, str], float], grid: StepGrid) -> list[Finding]:
    """Weights that never update while the rest of the model learns (frozen by mistake, lr 0).

    Two exact signs, each judged only when some other parameter of the model does change:
    a weight whose recorded norm never changes although its gradient is non-zero (its
    learning rate is zero, or it is not in the optimizer); and a layer with weight records
    but no weight gradient at all although the gradient flows through its output (it has
    ``requires_grad=False`` in the middle of a trained network). A table frozen by design
    and fed by nothing that learns (a sinusoidal position table) has no output gradient.
    """
    keys = series.keys
    moving = any(np.nan_to_num(r, nan=0.0).max(initial=0.0) > 0 for r, _ in ratios.values())
    if not moving or len(grid.starts) < 3:
        return []
    out = []
    for (nid, slot), (r, exact) in ratios.items():
        fin = r[np.isfinite(r)]
        if len(fin) >= 2 and not fin.any() and grads.get((nid, slot), 0.0) > 0 and not exact:
            name = _node_name(nodes, nid)
            out.append(Finding(
                "gradients", "not-updated", "warning",
                f"'{name}.{slot}' never changes although its gradient is non-zero and other layers learn: its learning rate is zero, or it is not in the optimizer.",
                node_id=nid, node=name, step_first=grid.first, step_last=grid.last, metric="update_weight_ratio", value=0.0, threshold=0.0,
            ))  # fmt: skip
    l2 = series.mean("l2")
    flows = {n for i, (n, k, _s) in enumerate(keys) if k == "gradient" and np.nan_to_num(l2[i], nan=0.0).max(initial=0.0) > 0}
    with_grad = {(n, s) for (n, k, s) in keys if k == "weight_grad"}
    seen: set[int] = set()
    for n, k, s in keys:
        if k != "weight" or not _is_weight_slot(s) or (n, s) in with_grad or n not in flows or n in seen:
            continue
        if n >= len(nodes["op_class"]) or nodes["op_class"][n] == OpClass.CONTAINER:
            continue
        seen.add(n)
        name = _node_name(nodes, n)
        out.append(Finding(
            "gradients", "frozen-in-path", "warning",
            f"'{name}' receives no parameter gradient although the gradient flows through its output and other layers learn: it is frozen (requires_grad=False) in the middle of the trained network; intended when fine-tuning, a mistake otherwise.",
            node_id=n, node=name, step_first=grid.first, step_last=grid.last, metric="weight_grad", value=0.0, threshold=0.0,
        ))  # fmt: skip
    return out


def _ratio_findings(
    ratios: dict, nodes: dict[str, np.ndarray], params: dict[str, Any], grid: StepGrid, grads: dict[tuple[int, str], float]
) -> list[Finding]:
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
            out.append(
                Finding(
                    "gradients",
                    "update-too-large",
                    "warning",
                    f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median{'' if exact else ', lower bound'}): each step replaces the weight; the learning rate is far too high (about 1e-3 is typical).",
                    threshold=params["update_ratio_ceiling"],
                    **where,
                )
            )
        elif med > params["update_ratio_high"]:
            out.append(
                Finding(
                    "gradients",
                    "update-large",
                    "info",
                    f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median{'' if exact else ', lower bound'}); about 1e-3 is typical, the learning rate may be high.",
                    threshold=params["update_ratio_high"],
                    **where,
                )
            )
        elif exact and med == 0.0 and grads.get((nid, slot), 0.0) > 0:
            out.append(
                Finding(
                    "gradients",
                    "update-too-small",
                    "warning",
                    f"'{name}.{slot}' never changes although its gradient is non-zero: every update is lost to float32 rounding (learning rate far too small, or zero).",
                    threshold=params["update_ratio_floor"],
                    **where,
                )
            )
        elif exact and med == 0.0:
            out.append(
                Finding(
                    "gradients",
                    "frozen",
                    "info",
                    f"'{name}.{slot}' never changes (update norm 0): frozen, not in the optimizer, or it receives no gradient.",
                    threshold=0.0,
                    **where,
                )
            )
        elif exact and med < params["update_ratio_floor"]:
            out.append(
                Finding(
                    "gradients",
                    "update-too-small",
                    "warning",
                    f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median), below float32 resolution: the layer does not learn.",
                    threshold=params["update_ratio_floor"],
                    **where,
                )
            )
        elif exact and med < params["update_ratio_low"]:
            out.append(
                Finding(
                    "gradients",
                    "update-small",
                    "info",
                    f"Updates of '{name}.{slot}' are {med:.3g} x its norm (median); about 1e-3 is typical, the learning rate may be low.",
                    threshold=params["update_ratio_low"],
                    **where,
                )
            )
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
    vals = np.asarray([d["size"] if d["size"] is not None else np.nan for d in depth], dtype=np.float64)
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
    ax.set_ylabel((depth[0]["metric"].replace("_", " ") if depth else "gradient") + " (log)")
    ax.set_title(f"Gradient size across depth (input -> output, {n} layers)")
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
