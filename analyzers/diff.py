"""Trace diff: join two traces node by node and find where they first part ways.

Typical uses: a PyTorch eval trace against the ONNX Runtime trace of the exported model
(same input), or two PyTorch runs (fp32 vs bf16, before vs after a change), or two ONNX
traces. The join is described in :mod:`tracefmt.analyzers.diff_match`, the tolerance and
the elementwise rule ``|a - b| <= atol + rtol * |b|`` in
:mod:`tracefmt.analyzers.diff_compare`.

One rule judges every compared tensor, whether raw values or statistics were compared:
its *error* (see :mod:`tracefmt.analyzers.diff_compare`) is out of tolerance above 1,
and a tensor out of tolerance is an **origin** of divergence only when its error also
exceeds ``growth`` times the worst error among the compared tensors feeding it. A tensor
out of tolerance that did not grow the error that much is ``drift`` (its inputs were
within tolerance: accumulated rounding, e.g. input at 0.5x and output at 1.005x) or
``divergent`` (inherited: an input was already out of tolerance). The **first
divergence** is the earliest origin in execution order. What feeds what comes from the
data-flow graph of the op-level side (tensor names); between two module-level traces the
previous compared tensor in execution order stands in.

The **verdict** is ``divergent`` when an origin exists, ``inconclusive`` when too little
was compared to conclude (no tensor at all, or fewer than :data:`MIN_COVERAGE` of the
module-level side's leaf modules, or of the observed nodes between two traces of one
granularity), else ``agree``. Traces of a training phase and an inference phase
(eval/infer) are not compared unless both phases are named; steps paired other than by
equal number are stated in ``notes``.

Two facts of real exports are handled. The exporter's optimiser folds Conv+BatchNorm
into one Conv: a fused node is matched to the *last* PyTorch module of the fused group
(the dynamo exporter names it after the BatchNorm; with the TorchScript exporter, named
after the Conv, the match moves to the next, otherwise unmatched, module when that one
agrees), and modules folded away (the Conv, eval-mode Dropout) are listed as unmatched
with the reason, never as divergent. A module called several times per forward matches
its op groups call by call in execution order.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from tracefmt.findings import Finding, findings_table

from .diff_compare import Comparison, compare_stats, compare_values, tolerance_for
from .diff_match import Obs, Pair, Unmatched, match_sides
from .diff_sides import Side, load_side
from .diff_verdict import MIN_COVERAGE, check_phases, coverage, step_pairs, verdict

__all__ = ["diff_traces", "DiffResult", "Compared", "DEFAULT_GROWTH", "ANALYZER_NAME", "MIN_COVERAGE"]

#: A node whose error exceeds this factor times its worst input's error is a divergence origin.
DEFAULT_GROWTH = 10.0
#: The ``analyzer`` column of diff findings.
ANALYZER_NAME = "diff"
_MAX_WALK = 20000


@dataclass
class Compared:
    """One joined pair of observations and how they compare.

    Attributes:
        key: Join key (scope or name).
        call: Call index (module side).
        a_node_id: Node of trace A.
        a_node: Its name.
        a_slot: Slot on side A.
        b_node_id: Node of trace B.
        b_node: Its name.
        b_slot: Slot on side B.
        dtype: Element types as 'A/B' when they differ, else the one type.
        shape: Shape on side B.
        error: Tolerance-normalised error (> 1: out of tolerance), worst over the steps.
        metric: Statistic (or 'values') behind the error.
        abs_diff: Absolute difference of that statistic.
        method: 'stats' or 'values'.
        step: Step (of A) with the worst error.
        atol: Absolute tolerance used.
        rtol: Relative tolerance used.
        input_error: Worst error among the compared tensors feeding this one.
        status: 'ok', 'drift' (out of tolerance, inputs within, error grown less than
            ``growth`` times), 'divergent' (inherited from its inputs) or 'origin'.
        match: 'identity' or 'inferred' (output slot told apart by statistics signature).
    """

    key: str
    call: int
    a_node_id: int
    a_node: str
    a_slot: str
    b_node_id: int
    b_node: str
    b_slot: str
    dtype: str
    shape: list[int]
    error: float
    metric: str
    abs_diff: float
    method: str
    step: int
    atol: float
    rtol: float
    input_error: float = 0.0
    status: str = "ok"
    match: str = "identity"
    pair: Pair | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {k: v for k, v in self.__dict__.items() if k != "pair"}


@dataclass
class DiffResult:
    """Outcome of :func:`diff_traces`.

    Attributes:
        compared: Every joined pair, in execution order.
        unmatched_a: Observations of A with no counterpart (reason given).
        unmatched_b: Observations of B with no counterpart.
        first_divergence: The first divergent node, or None when the traces agree.
        steps: The (step of A, step of B) pairs compared.
        coverage: How much was compared: leaf modules of the module-level side and
            nodes of the op-level side (module vs op), or nodes of each side.
        trace_a: Path of trace A.
        trace_b: Path of trace B.
        verdict: 'agree', 'divergent' or 'inconclusive'.
        reasons: Why the verdict is inconclusive (empty otherwise).
        notes: What was compared that a reader must know (phases, step pairing, drift,
            inferred output matches).
        phases: (phase of A, phase of B) compared.
    """

    compared: list[Compared]
    unmatched_a: list[Unmatched]
    unmatched_b: list[Unmatched]
    first_divergence: Compared | None
    steps: list[tuple[int, int]]
    coverage: dict[str, Any]
    trace_a: str = ""
    trace_b: str = ""
    verdict: str = "agree"
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: tuple[str, str] = ("", "")

    @property
    def conclusive(self) -> bool:
        """False when too little was compared to say the traces agree."""
        return self.verdict != "inconclusive"

    @property
    def divergent(self) -> bool:
        """True when a first divergence was found."""
        return self.first_divergence is not None

    @property
    def curve(self) -> list[dict[str, Any]]:
        """Error growth along execution order: one point per compared tensor."""
        return [{"position": i, "key": c.key, "call": c.call, "a_node": c.a_node, "b_node": c.b_node, "error": c.error, "status": c.status}
                for i, c in enumerate(self.compared)]  # fmt: skip

    def findings_for(self, side: str = "a") -> list[Finding]:
        """Findings on the nodes of trace ``side`` ('a' or 'b'), for colouring a graph by diff error.

        One finding per compared node (code ``diff-ok``, ``diff-divergent`` or
        ``first-divergence``; metric ``diff_error``, threshold 1) and one per unmatched
        node of that side (code ``diff-unmatched``).
        """
        out = []
        for c in self.compared:
            node_id, node = (c.a_node_id, c.a_node) if side == "a" else (c.b_node_id, c.b_node)
            if c is self.first_divergence:
                code, severity = "first-divergence", "error"
                msg = f"first divergence: {c.key or c.a_node} (call {c.call}) differs by {c.metric} error {c.error:.3g}x tolerance while its inputs agree (worst input {c.input_error:.3g})"
            elif c.status == "divergent":
                code, severity = "diff-divergent", "warning"
                msg = f"{c.key or c.a_node} (call {c.call}) out of tolerance ({c.metric} error {c.error:.3g}x), inherited from its inputs"
            elif c.status == "drift":
                code, severity = "diff-drift", "info"
                msg = (f"{c.key or c.a_node} (call {c.call}) slightly out of tolerance ({c.metric} error {c.error:.3g}x) with its inputs "
                       f"within (worst {c.input_error:.3g}x): accumulated rounding, not an origin")  # fmt: skip
            else:
                code, severity = "diff-ok", "info"
                msg = f"{c.key or c.a_node} (call {c.call}) within tolerance (error {c.error:.3g}x)"
            out.append(Finding(ANALYZER_NAME, code, severity, msg, node_id=node_id, node=node, step_first=c.step, step_last=c.step,
                               metric="diff_error", value=c.error, threshold=1.0))  # fmt: skip
        for u in self.unmatched_a if side == "a" else self.unmatched_b:
            out.append(Finding(ANALYZER_NAME, "diff-unmatched", "info", f"{u.name} (slot {u.slot}, call {u.call}) not matched: {u.reason}",
                               node_id=u.node_id, node=u.name, metric="diff_error"))  # fmt: skip
        return out

    @property
    def findings(self) -> list[Finding]:
        """Findings on trace A's nodes (see :meth:`findings_for`)."""
        return self.findings_for("a")

    def findings_table(self, side: str = "a") -> pa.Table:
        """The findings as an Arrow table with the spec's findings schema."""
        return findings_table(self.findings_for(side))

    def verdict_line(self) -> str:
        """The one-line verdict ``tracefmt diff`` prints (the report and notebooks show the same)."""
        from tracefmt.cli._output import fmt_value

        first = self.first_divergence
        if self.verdict == "inconclusive":
            return f"inconclusive: {'; '.join(self.reasons)} ({len(self.compared)} tensors compared)"
        if first is None:
            return f"no divergence: {len(self.compared)} tensors compared, all within tolerance or drift below the growth factor"
        return (
            f"first divergence: {first.key or first.a_node} (call {first.call}) A {first.a_node} vs B {first.b_node}: "
            f"{first.metric} error {fmt_value(first.error)}x tolerance (atol {first.atol:g}, rtol {first.rtol:g}), worst input {fmt_value(first.input_error)}x"
        )

    def _repr_html_(self) -> str:
        """Notebook view: the verdict line ``tracefmt diff`` prints, and the pairs around the divergence."""
        from .notebook import diff_html

        return diff_html(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary and details."""
        return {
            "trace_a": self.trace_a,
            "trace_b": self.trace_b,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "notes": self.notes,
            "phases": list(self.phases),
            "divergent": self.divergent,
            "first_divergence": self.first_divergence.as_dict() if self.first_divergence else None,
            "steps": [list(s) for s in self.steps],
            "coverage": self.coverage,
            "compared": [c.as_dict() for c in self.compared],
            "unmatched_a": [u.__dict__ for u in self.unmatched_a],
            "unmatched_b": [u.__dict__ for u in self.unmatched_b],
        }


def _open(trace: Any) -> Any:
    if isinstance(trace, (str, Path)):
        import tracefmt

        return tracefmt.open(trace)
    return trace


def _compare(
    a: Side, b: Side, oa: Obs, ob: Obs, steps: list[tuple[int, int]], atol: float | None, rtol: float | None
) -> tuple[Comparison, int, Any, Any]:
    worst: tuple[Comparison, int, Any, Any] | None = None
    for sa, sb in steps:
        ra, rb = a.records.get(oa, {}).get(sa), b.records.get(ob, {}).get(sb)
        if ra is None or rb is None:
            continue
        tol = tolerance_for(str(ra.get("dtype")), str(rb.get("dtype")), atol=atol, rtol=rtol)
        va, vb = a.values(oa[0], oa[1], oa[2], sa), b.values(ob[0], ob[1], ob[2], sb)
        cmp = compare_values(va, vb, tol) if va is not None and vb is not None else compare_stats(ra, rb, tol)
        if worst is None or cmp.error > worst[0].error:
            worst = (cmp, sa, (ra, rb), tol)
    if worst is None:
        return Comparison(math.inf, "missing step", math.inf, "stats"), steps[0][0] if steps else 0, (None, None), tolerance_for("", "")
    return worst


def _make(a: Side, b: Side, pair: Pair, steps: list[tuple[int, int]], atol: float | None, rtol: float | None) -> Compared:
    cmp, step, (ra, rb), tol = _compare(a, b, pair.a, pair.b, steps, atol, rtol)
    da, db = str((ra or {}).get("dtype")), str((rb or {}).get("dtype"))
    return Compared(
        key=pair.key, call=pair.call,
        a_node_id=pair.a[0], a_node=a.nodes[pair.a[0]].name, a_slot=pair.a[1],
        b_node_id=pair.b[0], b_node=b.nodes[pair.b[0]].name, b_slot=pair.b[1],
        dtype=da if da == db else f"{da}/{db}", shape=list((rb or {}).get("shape") or []),
        error=cmp.error, metric=cmp.metric, abs_diff=cmp.abs_diff, method=cmp.method, step=step,
        atol=tol.atol, rtol=tol.rtol, match=pair.match, pair=pair,
    )  # fmt: skip


def diff_traces(
    a: Any,
    b: Any,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    by: str = "scope",
    growth: float = DEFAULT_GROWTH,
    phase_a: str | None = None,
    phase_b: str | None = None,
    steps: list[int] | None = None,
) -> DiffResult:
    """Compare two traces node by node and find the first divergent node.

    Args:
        a: Trace A (a path or an opened :class:`tracefmt.Trace`): the one under test.
        b: Trace B: the reference of the rule ``|a - b| <= atol + rtol * |b|``.
        atol: Absolute tolerance for floating tensors. Defaults per dtype (fp32 1e-5,
            fp16 1e-3, bf16 1e-2, fp64 1e-7).
        rtol: Relative tolerance. Defaults per dtype (fp32 1e-4, fp16 1e-2, bf16 5e-2,
            fp64 1e-6).
        by: Primary join key, 'scope' (joins frameworks) or 'name'. Defaults to 'scope'.
        growth: Error amplification factor that makes a node an origin although its
            inputs already differ. Defaults to 10.
        phase_a: Phase of A to compare. Defaults to eval, else infer, else train.
        phase_b: Phase of B to compare. Same default. A training phase against an
            inference phase is refused (:class:`UsageError`) unless both are given.
        steps: Steps to compare. Defaults to every step both traces have (or, when they
            share none, their steps in rank order).

    Returns:
        The :class:`DiffResult` (its ``verdict`` is 'agree', 'divergent' or 'inconclusive').
    """
    ta, tb = _open(a), _open(b)
    sa = load_side(ta, "a", phase=phase_a, steps=steps)
    sb = load_side(tb, "b", phase=phase_b, steps=steps)
    if sa.op_level != sb.op_level:
        # A module with children records its own outputs; an operator graph has no node
        # for it, so a scope join would pair it with whichever operator of that scope comes
        # last. Against an operator graph, leaf modules (and modules recorded as one unit,
        # which have data-flow outputs) carry the comparison.
        for side in (sa, sb):
            if not side.op_level:
                side.records = {k: v for k, v in side.records.items() if not (k[0] in side.nodes and side.nodes[k[0]].container and not side.nodes[k[0]].outputs)}
    notes: list[str] = []
    check_phases(sa, sb, phase_a is not None and phase_b is not None, notes)
    pairs_of_steps = step_pairs(sa, sb, notes)
    pairs, ua, ub = match_sides(sa, sb, by=by)
    compared = [_make(sa, sb, p, pairs_of_steps, atol, rtol) for p in pairs]
    if sa.op_level != sb.op_level:
        module, label = (sa, "a") if not sa.op_level else (sb, "b")
        compared, unmatched = _refold(sa, sb, module, label, compared, ua if label == "a" else ub, pairs_of_steps, atol, rtol)
        if label == "a":
            ua = unmatched
        else:
            ub = unmatched
    compared.sort(key=lambda c: c.pair.order)
    _mark_origins(sa, sb, compared, growth)
    first = next((c for c in compared if c.status == "origin"), None)
    cov = coverage(sa, sb, compared, ua, ub)
    outcome, reasons = verdict(compared, first, cov, pairs_of_steps)
    drift = [c for c in compared if c.status == "drift"]
    if drift:
        worst = max(drift, key=lambda c: c.error)
        notes.append(f"{len(drift)} tensor(s) slightly out of tolerance with their inputs within (worst {worst.key or worst.a_node} "
                     f"at {worst.error:.3g}x): error grew less than {growth:g}x, judged accumulated rounding")  # fmt: skip
    inferred = sum(c.match == "inferred" for c in compared)
    if inferred:
        notes.append(f"{inferred} output slot(s) of multi-output modules matched by statistics signature (inferred)")
    return DiffResult(compared, ua, ub, first, pairs_of_steps, cov, str(ta.path), str(tb.path), outcome, reasons, notes,
                      (sa.phase, sb.phase))  # fmt: skip


def _module_order(module: Side) -> list[Obs]:
    def seq(o: Obs) -> int:
        rec = module.records[o][min(module.records[o])]
        return int(rec["seq"]) if rec.get("seq") is not None else module.nodes[o[0]].order

    return sorted(module.records, key=seq)


def _refold(sa: Side, sb: Side, module: Side, label: str, compared: list[Compared], unmatched: list[Unmatched],
            steps: list[tuple[int, int]], atol: float | None, rtol: float | None) -> tuple[list[Compared], list[Unmatched]]:  # fmt: skip
    """Move fused matches to the last module of the fused group; explain modules folded away."""
    order = _module_order(module)
    position = {o: i for i, o in enumerate(order)}
    missing = {(u.node_id, u.slot, u.call): u for u in unmatched if u.reason == "no ONNX node with this scope"}
    out = []
    for c in compared:
        own = c.pair.a if label == "a" else c.pair.b
        if c.error > 1 and own in position:
            # A TorchScript-style fused node is named after the first module of the group:
            # try the next modules that have no op node of their own.
            for nxt in order[position[own] + 1 : position[own] + 3]:
                if nxt not in missing or module.nodes[nxt[0]].container:
                    break
                pair = Pair(module.nodes[nxt[0]].scope, nxt[2], nxt if label == "a" else c.pair.a, c.pair.b if label == "a" else nxt,
                            c.pair.order, c.pair.group, c.pair.op_side)  # fmt: skip
                moved = _make(sa, sb, pair, steps, atol, rtol)
                if moved.error <= 1:
                    node = module.nodes[own[0]]
                    missing.pop(nxt)
                    unmatched = [u for u in unmatched if (u.node_id, u.slot, u.call) != nxt]
                    unmatched.append(Unmatched(label, own[0], node.name, node.scope, own[2], own[1],
                                               f"fused: its ONNX node {c.b_node if label == 'a' else c.a_node} computes it together with the next module", node.op_type, not node.container))  # fmt: skip
                    c = moved
                    break
        out.append(c)
    matched = {c.pair.a if label == "a" else c.pair.b: c for c in out}
    refined = []
    for u in unmatched:
        key = (u.node_id, u.slot, u.call)
        if u.reason == "no ONNX node with this scope" and key in position:
            i = position[key]
            prev = order[i - 1] if i > 0 else None
            nxt = next((o for o in order[i + 1 :] if o in matched), None)
            node = module.nodes[key[0]]
            if prev is not None and _agrees(module, key, prev, steps, label, atol, rtol):
                u.reason = "identity: equals the previous module's output; no ONNX node (removed by the exporter)"
            elif module.phase != "train" and (node.op_class == "dropout" or node.op_type == "Identity"):
                u.reason = f"identity: {node.op_type} is the identity outside training; no ONNX node (removed by the exporter)"
            elif node.outputs and not node.inputs:
                # Its recorded inputs derive from no model input (a position table, an arange).
                u.reason = "constant: its output does not depend on the model's inputs; the exporter computed it ahead of time"
            elif nxt is not None and order.index(nxt) == i + 1 and _feeds(module, key, nxt):
                other = matched[nxt]
                u.reason = f"folded: no ONNX node of its own; folded into {other.b_node if label == 'a' else other.a_node} (matched to {other.key})"
        refined.append(u)
    return out, refined


def _feeds(module: Side, x: Obs, y: Obs) -> bool:
    """True when module ``x``'s output is read by module ``y`` (or the trace has no data flow to tell)."""
    outs, ins = module.nodes[x[0]].outputs, module.nodes[y[0]].inputs
    if not outs or not ins:
        return not any(n.outputs for n in module.nodes.values())
    return bool(set(outs) & set(ins))


def _agrees(module: Side, x: Obs, y: Obs, steps: list[tuple[int, int]], label: str, atol: float | None, rtol: float | None) -> bool:
    for sa, sb in steps:
        s = sa if label == "a" else sb
        rx, ry = module.records[x].get(s), module.records[y].get(s)
        if rx is None or ry is None:
            return False
        tol = tolerance_for(str(rx.get("dtype")), str(ry.get("dtype")), atol=atol, rtol=rtol)
        if compare_stats(rx, ry, tol).error > 1:
            return False
    return True


def _op_tensor(side: Side, obs: Obs) -> str:
    outs = side.nodes[obs[0]].outputs
    return outs[int(obs[1])] if obs[1].isdigit() and int(obs[1]) < len(outs) else ""


def _mark_origins(sa: Side, sb: Side, compared: list[Compared], growth: float) -> None:
    """Set ``input_error`` and ``status`` of every compared pair (in execution order)."""
    tensors: dict[str, list[str]] = {}
    by_tensor: dict[str, dict[str, list[int]]] = {"a": {}, "b": {}}
    for label, side in (("a", sa), ("b", sb)):
        names = [_op_tensor(side, c.pair.a if label == "a" else c.pair.b) if side.op_level else "" for c in compared]
        tensors[label] = names
        for j, t in enumerate(names):
            if t:
                by_tensor[label].setdefault(t, []).append(j)
    for i, c in enumerate(compared):
        feeding = _feeding(sa, sb, compared, i, tensors, by_tensor)
        c.input_error = max((compared[j].error for j in feeding), default=0.0)
        if c.error <= 1:
            c.status = "ok"
        elif c.error > growth * c.input_error:
            c.status = "origin"
        else:
            c.status = "divergent" if c.input_error > 1 else "drift"


def _feeding(
    sa: Side, sb: Side, compared: list[Compared], i: int, tensors: dict[str, list[str]], by_tensor: dict[str, dict[str, list[int]]]
) -> list[int]:
    """Indices of the earlier compared pairs whose tensors feed pair ``i``."""
    c = compared[i]
    label = c.pair.op_side
    if label is None:
        return [i - 1] if i > 0 else []
    side = sa if label == "a" else sb
    index = by_tensor[label]
    mine = tensors[label][i]
    # Pairs sharing this tensor (a block and its last ReLU) feed it directly.
    found = {j for j in index.get(mine, []) if j < i}
    start = side.nodes[(c.pair.a if label == "a" else c.pair.b)[0]]
    queue = deque(start.inputs)
    seen: set[str] = set()
    while queue and len(seen) < _MAX_WALK:
        t = queue.popleft()
        if not t or t in seen:
            continue
        seen.add(t)
        hits = [j for j in index.get(t, []) if j < i and t != mine]
        if hits:
            found.update(hits)
            continue
        producer = side.producer(t)
        if producer is not None:
            queue.extend(side.nodes[producer].inputs)
    return sorted(found)
