"""One line that says what went wrong first, and findings of one kind grouped.

The root cause is the earliest claim about the run, not the loudest: a loss that diverges
is a symptom of what happened to the network before it; a layer "downstream of" a dead
one is explained by it. Order: a learning-rate rise that a divergence or explosion names
as its cause; else the earliest non-symptom finding above info (by first step, then
severity, then the NaN origin before other codes); else the earliest symptom.
"""

from __future__ import annotations

from dataclasses import replace

from tracefmt.findings import Finding

__all__ = ["verdict", "root_cause", "group_findings", "SYMPTOMS", "GROUP_AFTER"]

#: Codes that describe consequences (the loss curve), never a cause on their own.
SYMPTOMS = frozenset({"divergence", "loss-spike", "no-progress", "plateau", "noisy-loss", "train-val-gap", "overfitting"})
#: More findings than this of one (analyzer, code, severity) are shown as one group.
GROUP_AFTER = 3
_LR_MARK = "Root cause: the learning rate"


def _alarms(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity.rank > 0]


def root_cause(findings: list[Finding]) -> Finding | None:
    """The finding that explains the others (see the module docstring), or None when none is above info."""
    alarms = _alarms(findings)
    if not alarms:
        return None
    lr = [f for f in alarms if _LR_MARK in f.message]
    if lr:
        return min(lr, key=lambda f: f.step_first if f.step_first is not None else 1 << 62)

    def key(f: Finding) -> tuple:
        step = f.step_first if f.step_first is not None else 1 << 62
        return (f.code in SYMPTOMS or "downstream of" in f.message, step, -f.severity.rank, f.code != "nan-origin")

    return min(alarms, key=key)


def verdict(findings: list[Finding]) -> str:
    """``'Root cause: ... at step ... because ...'``, or ``'No problems found'``."""
    f = root_cause(findings)
    if f is None:
        return "No problems found."
    if _LR_MARK in f.message:
        why = f.message[f.message.index(_LR_MARK) + len("Root cause: ") :]
        return f"Root cause: the learning rate, before step {f.step_first}, because {why[0].lower()}{why[1:]} What followed: {f.message[: f.message.index(_LR_MARK)].strip()}"
    where = f"'{f.node}'" if f.node else f"the run ({f.analyzer})"
    step = f" at step {f.step_first}" if f.step_first is not None else ""
    return f"Root cause: {where}{step} ({f.code}) because {f.message[0].lower()}{f.message[1:]}"


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
