"""Where NaN or Inf first appear in a trace: the earliest node in execution order at the first bad step.

A NaN spreads: once one tensor holds it, everything computed from it does too, so "a
NaN somewhere" says little. The origin is the first step (then phase: train before eval
before infer) at which any record counts a NaN or Inf, and within that step the record
that was computed first. Execution order is the record's ``seq`` when the producer wrote
it; otherwise the forward pass (inputs, then activations in node ``order``) precedes the
backward pass (gradients in reverse node order, then parameter gradients), and the
parameter values and updates come last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracefmt import Trace

from .scan import node_table

__all__ = ["NanOrigin", "NanTracker", "find_nan_origin", "PHASE_ORDER", "KIND_ORDER"]

#: Phases in the order they run within a step.
PHASE_ORDER = {"train": 0, "eval": 1, "infer": 2}
#: Fallback execution order of kinds within a step when ``seq`` is missing.
KIND_ORDER = {"input": 0, "activation": 1, "gradient": 2, "weight_grad": 3, "weight_update": 4, "weight": 5}
_BACKWARD = {"gradient", "weight_grad"}
_COLUMNS = ["step", "phase", "node_id", "kind", "slot", "call", "seq", "nan_count", "inf_count"]


@dataclass(frozen=True)
class NanOrigin:
    """The first non-finite observation.

    Attributes:
        step: First step with a NaN or Inf anywhere.
        phase: Its phase.
        node_id: The node computed first among the bad records of that step.
        kind: The record's kind (activation, gradient, ...).
        slot: The record's slot.
        nan_count: NaN elements in that record.
        inf_count: Inf elements in that record.
        bad_records: How many records of that step hold NaN or Inf.
        bad_nodes: How many distinct nodes they cover.
        last_step: Last step with a NaN or Inf anywhere.
    """

    step: int
    phase: str
    node_id: int
    kind: str
    slot: str
    nan_count: int
    inf_count: int
    bad_records: int
    bad_nodes: int
    last_step: int


class NanTracker:
    """Streaming search for the NaN/Inf origin: keeps only the bad records of the first bad step."""

    columns = ("nan_count", "inf_count", "call", "seq")

    def __init__(self) -> None:
        self.best: int | None = None  # step * 4 + phase rank
        self.rows: list[dict] = []
        self.last_step: int | None = None

    def consume(self, view: object) -> None:
        """Look at one record view (see :class:`tracefmt.analyzers.scan.RecordView`)."""
        bad = (view.f64("nan_count") > 0) | (view.f64("inf_count") > 0)
        if not bad.any():
            return
        idx = np.flatnonzero(bad)
        batch = view.batch.take(idx)
        steps = view.steps[idx]
        phase_rank = np.array([PHASE_ORDER.get(p, 3) for p in batch.column("phase").to_pylist()], dtype=np.int64)
        self.last_step = int(steps.max()) if self.last_step is None else max(self.last_step, int(steps.max()))
        key = steps * 4 + phase_rank
        kmin = int(key.min())
        if self.best is not None and kmin > self.best:
            return
        if self.best is None or kmin < self.best:
            self.best, self.rows = kmin, []
        self.rows.extend(batch.filter(key == kmin).select(_COLUMNS).to_pylist())

    def origin(self, trace: Trace) -> NanOrigin | None:
        """The origin found, ordered by execution within its step, or None."""
        if self.best is None:
            return None
        return _earliest(self.rows, node_table(trace), int(self.last_step))


def find_nan_origin(trace: Trace) -> NanOrigin | None:
    """Find the NaN/Inf origin of ``trace`` (one scan of every kind and phase), or None."""
    from .scan import shared_pass

    tracker = NanTracker()
    shared_pass(trace, [tracker])
    return tracker.origin(trace)


def _earliest(rows: list[dict], nodes: dict, last_step: int) -> NanOrigin:
    order = nodes["order"]
    size = len(order)

    def node_rank(nid: int) -> int:
        return int(order[nid]) if 0 <= nid < size and order[nid] >= 0 else nid

    use_seq = all(r["seq"] is not None for r in rows)

    def exec_key(r: dict) -> tuple:
        if use_seq:
            return (r["seq"], node_rank(r["node_id"]), r["call"])
        rank = node_rank(r["node_id"])
        if r["kind"] in _BACKWARD:
            # Backward visits nodes in reverse of the forward order.
            return (KIND_ORDER.get(r["kind"], 6), -rank, -r["call"])
        return (KIND_ORDER.get(r["kind"], 6), rank, r["call"])

    # A container's output is computed from its children's: when a child holds the NaN too,
    # the child is where it appeared (a container is entered, and ordered, before them).
    cont = nodes["container"]
    leaves = [r for r in rows if not (0 <= r["node_id"] < size and cont[r["node_id"]])]
    first = min(leaves or rows, key=exec_key)
    return NanOrigin(
        step=int(first["step"]),
        phase=str(first["phase"]),
        node_id=int(first["node_id"]),
        kind=str(first["kind"]),
        slot=str(first["slot"]),
        nan_count=int(first["nan_count"]),
        inf_count=int(first["inf_count"]),
        bad_records=len(rows),
        bad_nodes=len({r["node_id"] for r in rows}),
        last_step=last_step,
    )
