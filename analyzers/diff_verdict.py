"""The verdict of a trace diff: which steps and phases were compared, how much, and what it means.

* Steps: every step number both traces have; with none in common, the steps in rank
  order. Steps of one trace only, or a pairing in rank order, are stated in the notes.
* Phases: a training phase against an inference phase (eval, infer) is refused unless
  both phases were named; two different inference phases are stated.
* Coverage: module vs op, the fraction of the module-level side's leaf modules compared
  (and accounted for as fused, folded or identity), and of the op-level side's observed
  nodes compared directly or inside a compared module; same granularity, the fraction of
  each side's observed nodes matched.
* Verdict: ``divergent`` when an origin of divergence exists; ``inconclusive`` when no
  tensor was compared or the coverage fraction is below :data:`MIN_COVERAGE`; else
  ``agree``.
"""

from __future__ import annotations

from typing import Any

from tracefmt.errors import UsageError

from .diff_match import Unmatched
from .diff_sides import Side

__all__ = ["MIN_COVERAGE", "step_pairs", "check_phases", "coverage", "verdict"]

#: Below this fraction of leaf modules (or of nodes) compared, the verdict is inconclusive.
MIN_COVERAGE = 0.5
#: Phases of one forward pass in inference mode (comparable with each other).
_INFERENCE_PHASES = ("eval", "infer")


def step_pairs(a: Side, b: Side, notes: list[str]) -> list[tuple[int, int]]:
    """The (step of A, step of B) pairs to compare; anything but equal numbers is stated in ``notes``."""
    common = sorted(set(a.steps) & set(b.steps))
    if common:
        only = sorted(set(a.steps) ^ set(b.steps))
        if only:
            notes.append(f"steps {_steps_text(only)} are in one trace only and were not compared")
        return [(s, s) for s in common]
    # Different step numbering (e.g. a training step vs an inference run): compare in rank order.
    pairs = list(zip(a.steps, b.steps))
    if pairs:
        notes.append(f"no step number in common: A's steps {_steps_text([p[0] for p in pairs])} compared with B's steps "
                     f"{_steps_text([p[1] for p in pairs])} in rank order")  # fmt: skip
    return pairs


def _steps_text(steps: list[int]) -> str:
    return ", ".join(str(s) for s in steps[:6]) + (f" ... ({len(steps)} in all)" if len(steps) > 6 else "")


def check_phases(sa: Side, sb: Side, explicit: bool, notes: list[str]) -> None:
    """Refuse a training phase against an inference phase unless both phases were named."""
    if sa.phase == sb.phase:
        return
    inference = sa.phase in _INFERENCE_PHASES and sb.phase in _INFERENCE_PHASES
    if not inference and not explicit:
        raise UsageError(
            f"trace A's activations are phase {sa.phase!r} and trace B's {sb.phase!r}: a training pass (dropout on, batch "
            "statistics) and an inference pass differ by design; name both phases (phase_a/phase_b, --phase-a/--phase-b) "
            "to compare them anyway"
        )
    notes.append(f"phases differ: A {sa.phase!r} vs B {sb.phase!r}")


def verdict(compared: list[Any], first: Any, coverage: dict[str, Any], steps: list) -> tuple[str, list[str]]:
    """'divergent' when an origin exists, 'inconclusive' (with reasons) when too little was compared, else 'agree'."""
    if first is not None:
        return "divergent", []
    reasons = []
    if not steps:
        reasons.append("the traces have no step to compare")
    if not compared:
        reasons.append("no tensor was compared (nothing matched between the traces)")
    fraction = coverage.get("fraction")
    if compared and fraction is not None and fraction < MIN_COVERAGE:
        reasons.append(f"only {fraction:.0%} of the {coverage['of']} were compared (below {MIN_COVERAGE:.0%})")
    return ("inconclusive", reasons) if reasons else ("agree", [])


def coverage(sa: Side, sb: Side, compared: list[Any], ua: list[Unmatched], ub: list[Unmatched]) -> dict[str, Any]:
    """How much was compared.

    Module vs op: leaf modules of the module-level side matched (compared) and matched or
    accounted for (fused/folded/identity), and the op-level side's observed nodes
    compared directly or covered by a matched module's op group. Same granularity: the
    observed nodes of each side that were matched. ``fraction`` (what the verdict
    judges) is the leaf-module fraction, or the smaller node fraction of the two sides.
    """
    if sa.op_level == sb.op_level:
        nodes_a, nodes_b = {o[0] for o in sa.records}, {o[0] for o in sb.records}
        matched_a, matched_b = {c.a_node_id for c in compared}, {c.b_node_id for c in compared}
        fa = len(matched_a) / len(nodes_a) if nodes_a else 0.0
        fb = len(matched_b) / len(nodes_b) if nodes_b else 0.0
        return {"side": None, "matched_nodes_a": len(matched_a), "nodes_a": len(nodes_a), "matched_nodes_b": len(matched_b),
                "nodes_b": len(nodes_b), "fraction": min(fa, fb), "of": "observed nodes"}  # fmt: skip
    module, label, unmatched = (sa, "a", ua) if not sa.op_level else (sb, "b", ub)
    ops = sb if label == "a" else sa
    leaves = {o[0] for o in module.records if not module.nodes[o[0]].container}
    matched = {(c.a_node_id if label == "a" else c.b_node_id) for c in compared} & leaves
    accounted = {u.node_id for u in unmatched if u.reason.startswith(("fused", "folded", "identity", "constant"))} & leaves
    op_nodes = {o[0] for o in ops.records}
    op_compared = {(c.b_node_id if label == "a" else c.a_node_id) for c in compared} & op_nodes
    op_covered = set().union(*[c.pair.group for c in compared if c.pair is not None and c.key]) & op_nodes if compared else set()
    op_covered |= op_compared
    return {
        "side": label,
        "leaf_modules": len(leaves),
        "matched": len(matched),
        "matched_fraction": len(matched) / len(leaves) if leaves else 0.0,
        "accounted": len(matched | accounted),
        "accounted_fraction": len(matched | accounted) / len(leaves) if leaves else 0.0,
        "unaccounted": sorted(module.nodes[n].name for n in leaves - matched - accounted),
        "op_nodes": len(op_nodes),
        "op_nodes_compared": len(op_compared),
        "op_nodes_compared_fraction": len(op_compared) / len(op_nodes) if op_nodes else 0.0,
        "op_nodes_covered": len(op_covered),
        "op_nodes_covered_fraction": len(op_covered) / len(op_nodes) if op_nodes else 0.0,
        "fraction": len(matched) / len(leaves) if leaves else 0.0,
        "of": "leaf modules",
    }
