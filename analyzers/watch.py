"""Following a live trace: new findings as they appear, and a per-layer status.

:class:`Watcher` re-opens the trace through the public reader (``tracefmt.open``: the
segments a running writer has made visible) whenever it grew, runs the selected analyzers
on what is there and reports each finding (analyzer, code, node) the first time it shows,
with the last step visible at that moment. :func:`watch` is the same as an iterator that
ends when the trace is complete; ``TorchTracer.findings()`` and ``tracefmt watch`` use it.

Each look is one pass of the analyzers over the visible records; the streaming analyzers
keep at most ``max_buckets`` step buckets per layer, so a look costs what a run of that
many steps costs, however long the run grows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracefmt.enums import Severity
from tracefmt.errors import TraceError
from tracefmt.findings import Finding

__all__ = ["Watcher", "WatchUpdate", "NewFinding", "watch", "DEFAULT_WATCH_ANALYZERS"]

#: Analyzers a watch runs by default: the streaming ones and the loss (the dynamics HMM
#: and the confusion matrix judge a whole run).
DEFAULT_WATCH_ANALYZERS = ("activations", "dead", "gradients", "loss")


@dataclass(frozen=True)
class NewFinding:
    """A finding the first time it is seen, with the last step visible then."""

    finding: Finding
    seen_at_step: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the finding's columns plus ``seen_at_step``."""
        return {**self.finding.as_row(), "seen_at_step": self.seen_at_step}


@dataclass
class WatchUpdate:
    """What one look at the trace found.

    Attributes:
        step: The last step visible (records or scalars); -1 before any.
        new: Findings seen for the first time, most severe first.
        layers: Layer name -> worst severity of its findings so far ('ok' if none).
        complete: True once every writer closed the trace.
    """

    step: int
    new: list[NewFinding] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)
    complete: bool = False

    def status_line(self, width: int = 100) -> str:
        """A compact per-layer status: counts by state and the worst layers."""
        counts = {s: 0 for s in ("ok", "info", "warning", "error")}
        for s in self.layers.values():
            counts[s] = counts.get(s, 0) + 1
        bad = [n for n, s in self.layers.items() if s == "error"] + [n for n, s in self.layers.items() if s == "warning"]
        text = f"step {self.step}: {len(self.layers)} layers, {counts['ok'] + counts['info']} ok, {counts['warning']} warning, {counts['error']} error"
        if bad:
            text += " | " + ", ".join(bad)
        return text if len(text) <= width else text[: width - 3] + "..."


class Watcher:
    """Look at a live trace again and again; report what is new each time.

    Args:
        path: The trace directory (it may not exist yet).
        names: Analyzers to run. Defaults to :data:`DEFAULT_WATCH_ANALYZERS`.
        params: Analyzer parameters, as for :func:`tracefmt.analyzers.run`.
    """

    def __init__(self, path: str | Path, *, names: Sequence[str] | None = None, params: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.names = list(names) if names else list(DEFAULT_WATCH_ANALYZERS)
        self.params = dict(params or {})
        self.seen: dict[tuple, NewFinding] = {}
        self.layers: dict[str, str] = {}
        self._last: tuple | None = None

    @property
    def findings(self) -> list[NewFinding]:
        """Every finding seen so far, in the order seen."""
        return list(self.seen.values())

    @property
    def has_errors(self) -> bool:
        """True if any finding seen so far is an error (``tracefmt analyze``'s exit code 1)."""
        return any(n.finding.severity is Severity.ERROR for n in self.seen.values())

    def poll(self) -> WatchUpdate:
        """Look once: re-open the trace, analyze it if it grew, return what is new."""
        import tracefmt

        from .pipeline import run

        try:
            trace = tracefmt.open(self.path)
            step = _last_step(trace)
        except TraceError:
            return WatchUpdate(step=-1, layers=dict(self.layers))
        state = (step, trace.complete, _visible_rows(trace))
        if state == self._last:
            return WatchUpdate(step=step, layers=dict(self.layers), complete=trace.complete)
        self._last = state
        update = WatchUpdate(step=step, complete=trace.complete)
        if step < 0:
            return update
        report = run(trace, names=[n for n in self.names if n in _available()], params=self.params)
        for f in report.findings_list:
            key = (f.analyzer, f.code, f.node_id)
            if key not in self.seen:
                self.seen[key] = NewFinding(f, step)
                update.new.append(self.seen[key])
            if f.node and f.severity is not Severity.INFO:
                old = self.layers.get(f.node, "ok")
                self.layers[f.node] = f.severity.value if _rank(f.severity.value) > _rank(old) else old
        for name in _layer_names(trace):
            self.layers.setdefault(name, "ok")
        update.layers = dict(self.layers)
        return update


def _rank(state: str) -> int:
    return {"ok": 0, "info": 0, "warning": 1, "error": 2}.get(state, 0)


def _available() -> set[str]:
    from . import registry

    return set(registry.names())


def _visible_rows(trace: Any) -> int:
    n = trace.records.count_rows() if trace.has("records") else 0
    return n + (trace.scalars.num_rows if trace.has("scalars") else 0)


def _last_step(trace: Any) -> int:
    import pyarrow.compute as pc

    last = -1
    if trace.has("scalars") and trace.scalars.num_rows:
        last = max(last, int(pc.max(trace.scalars.column("step")).as_py()))
    if trace.has("records"):
        for batch in trace.scan("records", columns=["step"]):
            if batch.num_rows:
                last = max(last, int(pc.max(batch.column("step")).as_py()))
    return last


def _layer_names(trace: Any) -> list[str]:
    if not trace.has("records"):
        return []
    import pyarrow.compute as pc

    ids: set[int] = set()
    for batch in trace.scan("records", columns=["node_id"], kinds=["activation"]):
        ids.update(pc.unique(batch.column("node_id")).to_pylist())
    names = trace.node_names
    return [names.get(i, str(i)) for i in sorted(ids)]


def watch(
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    interval: float = 2.0,
    timeout: float | None = None,
) -> Iterator[WatchUpdate]:
    """Follow a live trace until it is complete: one :class:`WatchUpdate` per look that saw a change.

    Args:
        path: The trace directory.
        names: Analyzers to run. Defaults to :data:`DEFAULT_WATCH_ANALYZERS`.
        params: Analyzer parameters.
        interval: Seconds between looks. Defaults to 2.
        timeout: Stop after this many seconds even if the trace is not complete. Defaults to never.

    Yields:
        Updates (the last one has ``complete=True`` unless the timeout ended the watch).
    """
    w = Watcher(path, names=names, params=params)
    start = time.monotonic()
    last_step = None
    while True:
        update = w.poll()
        if update.new or update.step != last_step or update.complete:
            last_step = update.step
            yield update
        if update.complete or (timeout is not None and time.monotonic() - start >= timeout):
            return
        time.sleep(interval)
