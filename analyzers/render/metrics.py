"""Per-node values that colour an annotated graph (the overlay metrics).

A metric is computed from the records of one kind, phase and step. A node may have several
records at a step (several output slots, several calls of a module, or, for a collapsed
cluster, every record of its descendants); they are combined exactly: counts add up, L2
norms add in quadrature, means are weighted by the number of finite elements and standard
deviations are pooled with the parallel-variance formula (Chan, Golub & LeVeque, 1979:
``N var = sum n_i (var_i + (mean_i - mean)^2)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tracefmt.enums import Kind, Phase, coerce
from tracefmt.errors import UsageError

if TYPE_CHECKING:
    from tracefmt import Trace

__all__ = ["Metric", "MetricSpec", "METRICS", "NodeValues", "node_values", "combine", "resolve_step", "values_from_findings"]


class Metric(StrEnum):
    """What an annotated graph's fill colour shows."""

    DEAD_FRACTION = "dead_fraction"  #: zero_count / numel
    NONFINITE = "nonfinite"  #: (nan_count + inf_count) / numel
    STD = "std"  #: pooled standard deviation of the finite elements
    MEAN = "mean"  #: mean of the finite elements
    ABS_MEAN = "abs_mean"  #: mean |x| of the finite elements
    L2 = "l2"  #: Euclidean norm (e.g. the gradient norm with kind=gradient)
    MIN = "min"  #: smallest finite element
    MAX = "max"  #: largest finite element
    DIFF_ERROR = "diff_error"  #: error of a trace diff, from the diff's findings
    NONE = "none"  #: no fill: the graph's structure only


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is drawn: its scale family, a fixed range and a legend text."""

    family: str
    text: str
    fixed: tuple[float, float] | None = None
    #: The record kind used when the caller names none.
    default_kind: Kind = Kind.ACTIVATION


METRICS: dict[Metric, MetricSpec] = {
    # A healthy rectifier outputs zeros for about half its inputs, so the colour starts at
    # one half: a ReLU at 0.5 is drawn as healthy, one near the dead analyzer's 0.9 as bad.
    Metric.DEAD_FRACTION: MetricSpec("badness", "dead fraction (zeros / numel; up to 0.5 is normal for a rectifier)", (0.5, 1.0)),
    Metric.NONFINITE: MetricSpec("badness", "NaN+Inf fraction", (0.0, 1.0)),
    Metric.STD: MetricSpec("magnitude", "std"),
    Metric.MEAN: MetricSpec("signed", "mean"),
    Metric.ABS_MEAN: MetricSpec("magnitude", "mean |x|"),
    Metric.L2: MetricSpec("magnitude", "L2 norm"),
    Metric.MIN: MetricSpec("signed", "min"),
    Metric.MAX: MetricSpec("signed", "max"),
    # A diff's error is in units of its tolerance: 1 is the limit, so the scale is fixed
    # there and everything out of tolerance gets the darkest colour.
    Metric.DIFF_ERROR: MetricSpec("badness", "diff error (x tolerance)", (0.0, 1.0)),
    Metric.NONE: MetricSpec("badness", ""),
}

_COLUMNS = ["node_id", "slot", "call", "shape", "numel", "nan_count", "inf_count", "zero_count", "mean", "std", "min", "max", "abs_mean", "l2"]


@dataclass
class NodeValues:
    """The overlay of one graph: per-node metric values and what they were computed from.

    Attributes:
        metric: The metric.
        kind: Record kind the values come from.
        phase: Phase the values come from (None when the trace had no such records).
        step: Step the values come from (None when the trace had no such records).
        values: node_id -> metric value (NaN when undefined, e.g. no finite element).
        shapes: node_id -> shape of the node's first output at that step.
        nonfinite: node_id -> (NaN count, Inf count), only for nodes that have any.
    """

    metric: Metric
    kind: Kind
    phase: Phase | None
    step: int | None
    values: dict[int, float] = field(default_factory=dict)
    shapes: dict[int, list[int]] = field(default_factory=dict)
    nonfinite: dict[int, tuple[int, int]] = field(default_factory=dict)


def _square(x: float) -> float:
    # ``x ** 2`` raises OverflowError on a Python float past 1.3e154; a product gives inf.
    return x * x


def combine(metric: Metric, rows: list[Mapping[str, Any]]) -> float:
    """Combine the records ``rows`` (of one node, or one collapsed group) into one value.

    Args:
        metric: The metric.
        rows: Record rows (dicts with the statistics columns).

    Returns:
        The metric value; NaN when it is undefined (no element, no finite element).
    """
    numel = sum(int(r["numel"] or 0) for r in rows)
    if metric is Metric.DEAD_FRACTION:
        return sum(int(r["zero_count"] or 0) for r in rows) / numel if numel else math.nan
    if metric is Metric.NONFINITE:
        return sum(int(r["nan_count"] or 0) + int(r["inf_count"] or 0) for r in rows) / numel if numel else math.nan
    if metric is Metric.L2:
        return math.sqrt(sum(_square(float(r["l2"] or 0.0)) for r in rows))
    if metric in (Metric.MIN, Metric.MAX):
        vals = [float(r[metric.value]) for r in rows if r[metric.value] is not None]
        if not vals:
            return math.nan
        return min(vals) if metric is Metric.MIN else max(vals)
    # Weighted by the number of finite elements: mean, abs_mean and std are over those only.
    weighted = [(int(r["numel"]) - int(r["nan_count"]) - int(r["inf_count"]), r) for r in rows if r["mean"] is not None]
    n = sum(w for w, _ in weighted)
    if n <= 0:
        return math.nan
    if metric is Metric.ABS_MEAN:
        return sum(w * float(r["abs_mean"]) for w, r in weighted) / n
    mean = sum(w * float(r["mean"]) for w, r in weighted) / n
    if metric is Metric.MEAN:
        return mean
    if metric is Metric.STD:
        var = sum(w * (_square(float(r["std"] or 0.0)) + _square(float(r["mean"]) - mean)) for w, r in weighted) / n
        return math.sqrt(max(var, 0.0))
    raise UsageError(f"metric {metric.value!r} is not computed from records")


def _phases_present(trace: Trace, kind: Kind) -> list[str]:
    table = trace.read("records", columns=["phase"], kinds=[kind.value])
    return sorted(set(table.column("phase").unique().to_pylist())) if table.num_rows else []


def resolve_step(trace: Trace, *, kind: Kind, phase: Phase | None, step: int | str | None) -> tuple[Phase | None, int | None]:
    """Pick the phase and step an overlay is computed at.

    The phase defaults to ``train`` when the trace has training records of ``kind``, else
    the first phase present; ``step`` None or ``'last'`` means the last step with records.

    Raises:
        UsageError: The requested step or phase has no records of ``kind``.
    """
    present = _phases_present(trace, kind)
    if phase is None:
        if not present:
            return None, None
        phase = Phase.TRAIN if Phase.TRAIN.value in present else coerce(Phase, present[0])
    elif phase.value not in present:
        raise UsageError(f"{trace.path}: no '{kind.value}' records in phase {phase.value!r}; phases with such records: {', '.join(present) or 'none'}")
    steps = trace.read("records", columns=["step"], kinds=[kind.value], phases=[phase.value]).column("step")
    if step is None or step == "last":
        return phase, int(pc.max(steps).as_py())
    step = int(step)
    if not pc.any(pc.equal(steps, step)).as_py():
        uniq = pc.unique(steps).to_pylist()
        shown = ", ".join(str(s) for s in sorted(uniq)[:12]) + (" ..." if len(uniq) > 12 else "")
        raise UsageError(f"{trace.path}: no '{kind.value}' records at step {step} (phase {phase.value}); steps with records: {shown}")
    return phase, step


def node_values(
    trace: Trace,
    *,
    metric: Metric | str = Metric.DEAD_FRACTION,
    kind: Kind | str | None = None,
    step: int | str | None = None,
    phase: Phase | str | None = None,
    groups: Mapping[int, int] | None = None,
) -> NodeValues:
    """Compute ``metric`` per node from the trace's records at one step.

    Args:
        trace: The trace.
        metric: The metric. Defaults to the dead fraction.
        kind: Record kind. Defaults to the metric's default kind (activation).
        step: A step number, or None / ``'last'`` for the last step with records.
        phase: The phase. Defaults to train when present, else the first phase present.
        groups: node_id -> id of the drawn node it is folded into (collapsed clusters);
            the records of a group are combined into one value. Defaults to no folding.

    Returns:
        The per-node values (keyed by drawn node id).
    """
    metric = coerce(Metric, metric, what="metric")
    spec = METRICS[metric]
    kind = coerce(Kind, kind, what="kind") if kind is not None else spec.default_kind
    phase = coerce(Phase, phase, what="phase") if phase is not None else None
    phase, step = resolve_step(trace, kind=kind, phase=phase, step=step)
    out = NodeValues(metric=metric, kind=kind, phase=phase, step=step)
    if step is None:
        return out
    table = trace.read("records", columns=_COLUMNS, kinds=[kind.value], phases=[phase.value], steps=(step, step))
    # Aggregate records ('all:weight', ...) summarise the whole model at its root container.
    table = table.filter(pc.invert(pc.starts_with(table.column("slot"), "all:")))
    by_node: dict[int, list[dict[str, Any]]] = {}
    for row in _sorted_rows(table):
        nid = int(row["node_id"])
        target = groups.get(nid, nid) if groups else nid
        by_node.setdefault(target, []).append(row)
        if target not in out.shapes:
            out.shapes[target] = list(row["shape"] or [])
    for nid, rows in by_node.items():
        nan = sum(int(r["nan_count"]) for r in rows)
        inf = sum(int(r["inf_count"]) for r in rows)
        if nan or inf:
            out.nonfinite[nid] = (nan, inf)
        if metric not in (Metric.NONE, Metric.DIFF_ERROR):
            out.values[nid] = combine(metric, rows)
    return out


def _sorted_rows(table: pa.Table) -> Iterable[dict[str, Any]]:
    """Rows ordered by node, call and slot, so a node's first output comes first."""
    if not table.num_rows:
        return []
    return table.sort_by([("node_id", "ascending"), ("call", "ascending"), ("slot", "ascending")]).to_pylist()


def values_from_findings(findings: pa.Table, *, node_ids: Mapping[str, int], metric: str | None = None) -> dict[int, float]:
    """Per-node values taken from findings (e.g. a diff's per-node error): the largest per node.

    Args:
        findings: A findings table.
        node_ids: node name -> node_id of the graph being drawn (findings are joined by name
            first, since a diff's findings may carry the other trace's node ids).
        metric: Keep only findings whose ``metric`` column equals this. Defaults to all
            findings that carry a value.

    Returns:
        node_id -> value.
    """
    out: dict[int, float] = {}
    for row in findings.to_pylist():
        if row.get("value") is None or (metric is not None and row.get("metric") != metric):
            continue
        nid = node_ids.get(row.get("node") or "")
        if nid is None:
            continue
        v = float(row["value"])
        out[nid] = v if nid not in out or not math.isfinite(v) else max(out[nid], v)
    return out
