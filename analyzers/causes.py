"""Links between findings and the run's own controls: did the learning rate rise first.

A divergence or a gradient explosion that follows a rise of the learning rate is most
likely caused by it (an update too large for the curvature of the loss: LeCun, Bottou, Orr
& Mueller, "Efficient BackProp", 1998, section 4.4 - beyond twice the optimal rate, plain
gradient descent diverges). The learning rate is read from the scalars table (any series
called ``lr``, ``learning_rate`` or starting with ``lr/``, ``lr-`` or ``lr_``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from tracefmt import Trace

__all__ = ["LrRise", "lr_series", "lr_rise_before", "lr_rise_note", "LR_RISE_FACTOR"]

#: A rise of at least one decade over the rate training started with (the usual step of a
#: learning-rate search, e.g. Smith 2015, "Cyclical Learning Rates", section 3.3).
LR_RISE_FACTOR = 10.0


def _is_lr(name: str) -> bool:
    low = name.lower()
    return low in ("lr", "learning_rate", "learning-rate") or low.startswith(("lr/", "lr-", "lr_", "learning_rate/"))


@dataclass(frozen=True)
class LrRise:
    """The learning rate rose ``factor`` x from ``start_value`` (at ``start_step``) to ``value`` (at ``step``)."""

    name: str
    start_step: int
    start_value: float
    step: int
    value: float

    def describe(self) -> str:
        """``"The learning rate ('lr') rose 1e4 x, from ... at step ... to ... (past 10 x at step ...)"``."""
        return (f"The learning rate ('{self.name}') rose {self.factor:.3g} x, from {self.start_value:.3g} at step {self.start_step}"
                f" to {self.value:.3g} (past {LR_RISE_FACTOR:g} x at step {self.step})")  # fmt: skip

    @property
    def factor(self) -> float:
        """How many times the rate grew."""
        return self.value / self.start_value if self.start_value > 0 else float("inf")


def lr_series(trace: Trace) -> tuple[str, np.ndarray, np.ndarray] | None:
    """The first learning-rate series of the trace's training phase (name, steps, values), or None."""
    if not trace.has("scalars"):
        return None
    scalars = trace.scalars
    names = [n for n in pc.unique(scalars.column("name")).to_pylist() if n is not None and _is_lr(n)]
    for name in sorted(names):
        t = scalars.filter(pc.equal(scalars.column("name"), name))
        if "phase" in t.schema.names and pc.any(pc.equal(t.column("phase"), "train")).as_py():
            t = t.filter(pc.equal(t.column("phase"), "train"))
        steps = t.column("step").to_numpy()
        vals = t.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.argsort(steps, kind="stable")
        steps, vals = steps[order], vals[order]
        ok = np.isfinite(vals)
        if ok.sum():
            return name, steps[ok], vals[ok]
    return None


def lr_rise_before(trace: Trace, step: int, *, factor: float = LR_RISE_FACTOR) -> LrRise | None:
    """The learning-rate rise of at least ``factor`` x over its initial value reached at or before ``step``."""
    found = lr_series(trace)
    if found is None:
        return None
    name, steps, vals = found
    keep = steps <= step
    if keep.sum() < 2 or vals[0] <= 0:
        return None
    s, v = steps[keep], vals[keep]
    over = np.flatnonzero(v >= factor * v[0])
    if not len(over):
        return None
    top = int(np.argmax(v))
    return LrRise(name, int(s[0]), float(v[0]), int(s[int(over[0])]), float(v[top]))


def lr_rise_note(trace: Trace) -> Callable[[int], str]:
    """``step -> ' The learning rate ... rose ... before it.'`` (empty when it did not rise)."""

    def note(step: int) -> str:
        rise = lr_rise_before(trace, step)
        if rise is None:
            return ""
        return f" {rise.describe()} before it."

    return note
