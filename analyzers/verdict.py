"""One line that says what went wrong first, and findings of one kind grouped.

The root cause is the earliest claim about the run, not the loudest: a loss that diverges
is a symptom of what happened to the network before it, and a layer "downstream of" a
dead one is explained by it. Candidates are every finding above info that is not a
symptom, plus the learning rate when it rose :data:`~tracefmt.analyzers.causes.LR_RISE_FACTOR`
x before a divergence or a gradient explosion (dated at the step it passed that factor).
The root is the earliest candidate (then the more severe, then the NaN origin); without
candidates, the earliest symptom.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tracefmt.findings import Finding

from .causes import lr_rise_before

__all__ = ["verdict", "root_cause", "group_findings", "SYMPTOMS", "GROUP_AFTER"]

#: Codes that describe consequences (the loss curve), never a cause on their own.
SYMPTOMS = frozenset({"divergence", "loss-spike", "no-progress", "plateau", "noisy-loss", "train-val-gap", "overfitting"})
#: Codes that a learning-rate rise before them explains.
_LR_EFFECTS = frozenset({"divergence", "exploding-gradient", "nan-origin", "update-too-large"})
#: More findings than this of one (analyzer, code, severity) are shown as one group.
GROUP_AFTER = 3
_NEVER = 1 << 62


def _key(f: Finding, lr: Finding | None = None) -> tuple:
    # With a learning-rate rise on record, what it explains is its consequence.
    symptom = f.code in SYMPTOMS or "downstream of" in f.message or (lr is not None and f.code in _LR_EFFECTS)
    return (symptom, f.step_first if f.step_first is not None else _NEVER, -f.severity.rank, f.code != "nan-origin")


def _lr_cause(alarms: list[Finding], trace: Any) -> Finding | None:
    """A finding that stands for the learning rate, if it rose before what it explains."""
    if trace is None:
        return None
    hit = [f for f in alarms if f.code in _LR_EFFECTS and f.step_first is not None]
    for f in sorted(hit, key=lambda f: f.step_first):
        rise = lr_rise_before(trace, int(f.step_first))
        if rise is not None:
            what = {"divergence": "the loss diverges", "exploding-gradient": "the gradients explode", "nan-origin": "NaN appears"}.get(
                f.code, "the updates outgrow the weights"
            )
            return Finding(
                "loss",
                "learning-rate-rise",
                f.severity,
                f"{rise.describe()}; then {what} from step {f.step_first}.",
                step_first=rise.step,
                step_last=f.step_first,
                metric="lr_growth",
                value=rise.factor,
            )
    return None


def root_cause(findings: list[Finding], trace: Any = None) -> Finding | None:
    """The finding that explains the others (see the module docstring), or None when none is above info.

    Args:
        findings: The findings of one run.
        trace: Its trace, to link a divergence to a learning-rate rise. Defaults to None.
    """
    alarms = [f for f in findings if f.severity.rank > 0]
    if not alarms:
        return None
    lr = _lr_cause(alarms, trace)
    return min([*alarms, lr] if lr is not None else alarms, key=lambda f: _key(f, lr))


def verdict(findings: list[Finding], trace: Any = None) -> str:
    """``'Root cause: ... at step ... because ...'``, or ``'No problems found.'`` (see :func:`root_cause`)."""
    f = root_cause(findings, trace)
    if f is None:
        return "No problems found."
    where = f"'{f.node}'" if f.node else ("the learning rate" if f.code == "learning-rate-rise" else f"the run ({f.analyzer})")
    step = f" at step {f.step_first}" if f.step_first is not None else ""
    line = f"Root cause: {where}{step} ({f.code}) because {f.message[0].lower()}{f.message[1:]}"
    lr = _lr_cause([a for a in findings if a.severity.rank > 0], trace)
    if lr is not None and f.code != "learning-rate-rise":
        line += f" Also: {lr.message[0].lower()}{lr.message[1:]}"
    return line


def group_findings(findings: list[Finding], *, after: int = GROUP_AFTER) -> list[Finding]:
    """Findings with every run of more than ``after`` of one (analyzer, code, severity) kept as
    its first member, whose message then lists how many more there are and where.
    """
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.analyzer, f.code, f.severity), []).append(f)
    out: list[Finding] = []
    for f in findings:
        members = groups[(f.analyzer, f.code, f.severity)]
        if len(members) <= after:
            out.append(f)
        elif f is members[0]:
            rest = members[1:]
            names = ", ".join(f"'{m.node}'" for m in rest[:5] if m.node) or "the same run"
            more = " ..." if len(rest) > 5 else ""
            out.append(replace(f, message=f"{f.message} [and {len(rest)} more {f.code} findings: {names}{more}]"))
    return out
