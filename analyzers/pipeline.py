"""The analysis pipeline: select analyzers, check their needs, run them, gather a report.

:func:`run` accepts a trace path, a :class:`tracefmt.Trace`, or a list of them. With
several traces, single-run analyzers run on each trace and ``multi_run`` analyzers receive
them all at once. An analyzer whose needs a trace lacks is skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

import tracefmt
from tracefmt import Trace
from tracefmt.enums import Severity
from tracefmt.errors import UsageError
from tracefmt.findings import Finding, findings_table, worst_severity

from . import registry
from .base import Analyzer, AnalyzerResult, Needs, NotApplicable, RecordConsumer, StreamingAnalyzer
from .params import resolve_params
from .scan import column_has_values, profile, progress_to, shared_pass

__all__ = ["Report", "Skipped", "run", "unmet_need", "open_traces"]


@dataclass(frozen=True)
class Skipped:
    """An analyzer that did not run on a trace, and why."""

    analyzer: str
    reason: str
    trace: str | None = None


@dataclass
class Report:
    """Everything one pipeline run produced.

    Attributes:
        traces: The traces analyzed.
        findings_list: Every finding, as :class:`tracefmt.findings.Finding` objects.
        results: Analyzer name -> result. With one trace every analyzer that ran is here;
            with several, the ``multi_run`` analyzers are (see ``per_trace``).
        per_trace: For each trace (same order as ``traces``), analyzer name -> result of
            the single-run analyzers.
        skipped_list: Analyzers that did not run, with their reasons.
        params: The parameters each analyzer ran with (defaults filled in).
    """

    traces: list[Trace]
    findings_list: list[Finding] = field(default_factory=list)
    results: dict[str, AnalyzerResult] = field(default_factory=dict)
    per_trace: list[dict[str, AnalyzerResult]] = field(default_factory=list)
    skipped_list: list[Skipped] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def findings(self) -> pa.Table:
        """The findings as an Arrow table (schema ``tracefmt.schema.FINDINGS``), most severe first."""
        return findings_table(self.findings_list)

    @property
    def skipped(self) -> dict[str, str]:
        """Analyzer name -> reason it was skipped (reasons of several traces joined by '; ')."""
        out: dict[str, str] = {}
        for s in self.skipped_list:
            text = f"{s.trace}: {s.reason}" if s.trace and len(self.traces) > 1 else s.reason
            out[s.analyzer] = f"{out[s.analyzer]}; {text}" if s.analyzer in out else text
        return out

    @property
    def worst(self) -> Severity | None:
        """The most serious finding's severity, or None."""
        return worst_severity(self.findings_list)

    @property
    def verdict(self) -> str:
        """One line: ``'Root cause: ... at step ... because ...'`` or ``'No problems found.'``."""
        from .verdict import verdict

        return verdict(self.findings_list, self.traces[0] if len(self.traces) == 1 else None)

    @property
    def grouped(self) -> list[Finding]:
        """The findings, most severe first, with many of one kind shown as one (see :func:`~tracefmt.analyzers.verdict.group_findings`)."""
        from .verdict import group_findings, root_cause

        root = root_cause(self.findings_list, self.traces[0] if len(self.traces) == 1 else None)
        ordered = sorted(self.findings_list, key=lambda f: (f is not root, -f.severity.rank))
        return group_findings(ordered)

    @property
    def has_errors(self) -> bool:
        """True if any finding has severity error."""
        return self.worst is Severity.ERROR

    def iter_figures(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        """``(result label, figure name, factory)`` for every figure of every result."""
        for name, res in self.results.items():
            for fig_name, factory in res.figures.items():
                yield name, fig_name, factory
        if len(self.traces) > 1:
            for trace, results in zip(self.traces, self.per_trace):
                for name, res in results.items():
                    if name in self.results:
                        continue
                    for fig_name, factory in res.figures.items():
                        yield f"{name}@{trace.path.name}", fig_name, factory

    def save_figures(self, directory: str | Path, *, formats: Sequence[str] = ("png",)) -> list[Path]:
        """Build every figure and save it as ``<directory>/<analyzer>-<figure>.<fmt>``.

        Args:
            directory: Output directory (created if missing).
            formats: File formats, any of 'png', 'svg', 'pdf'. Defaults to ('png',).

        Returns:
            The files written.
        """
        from .figures import save_figure

        out: list[Path] = []
        for label, fig_name, factory in self.iter_figures():
            fig = factory()
            out.extend(save_figure(fig, Path(directory) / f"{label}-{fig_name}", formats=formats))
        return out

    def _repr_html_(self) -> str:
        """Notebook view: verdict, findings table, figures inline."""
        from .notebook import report_html

        return report_html(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: findings rows, skipped analyzers, parameters."""
        return {
            "verdict": self.verdict,
            "traces": [str(t.path) for t in self.traces],
            "findings": self.findings.to_pylist(),
            "grouped": findings_table(self.grouped).to_pylist(),
            "skipped": [{"analyzer": s.analyzer, "trace": s.trace, "reason": s.reason} for s in self.skipped_list],
            "ran": sorted({*self.results, *(n for r in self.per_trace for n in r)}),
            "params": self.params,
        }


def open_traces(trace_or_traces: Any) -> list[Trace]:
    """Normalise a path, a Trace, or a list of them to a list of open traces."""
    if isinstance(trace_or_traces, (str, os.PathLike, Trace)):
        items = [trace_or_traces]
    else:
        items = list(trace_or_traces)
    if not items:
        raise UsageError("no trace given")
    return [t if isinstance(t, Trace) else tracefmt.open(t) for t in items]


def _selected(names: str | Sequence[str] | None) -> tuple[list[str], bool]:
    available = registry.names()
    if names is None:
        return available, False
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    wanted = [n for n in dict.fromkeys(wanted) if n]
    if not wanted:
        # An empty selection would run nothing and report success: refuse it.
        raise UsageError(f"empty analyzer selection; name at least one of: {', '.join(available) or '(none)'}")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise UsageError(f"unknown analyzer {', '.join(repr(u) for u in unknown)}; available: {', '.join(available) or '(none)'}")
    return wanted, True


def unmet_need(trace: Trace, needs: Needs, *, kinds: bool = True) -> str | None:
    """Why ``trace`` cannot satisfy ``needs``, or None if it can (``kinds=False``: all but the kinds)."""
    prof = profile(trace)
    for table in needs.tables:
        if table == "records" and not prof.num_records:
            return "the trace has no records"
        if table == "scalars" and not prof.scalar_names:
            return "the trace has no scalars table"
        if table == "predictions" and not prof.num_predictions:
            return "the trace has no predictions table"
        if table == "nodes" and not trace.has("nodes"):
            return "the trace has no nodes table"
    if needs.kinds and kinds:
        present = prof.kinds
        missing = [k for k in needs.kinds if k not in present]
        if (needs.any_kind and len(missing) == len(needs.kinds)) or (not needs.any_kind and missing):
            joined = " or ".join(missing) if needs.any_kind else ", ".join(missing)
            return f"the trace has no records of kind {joined} (present: {', '.join(sorted(present)) or 'none'})"
    for col in needs.columns:
        if not column_has_values(trace, col):
            return f"records column '{col}' has no values in this trace"
    if needs.scalars and not any(s in prof.scalar_names for s in needs.scalars):
        have = ", ".join(sorted(prof.scalar_names)) or "none"
        return f"no scalar series named {' or '.join(needs.scalars)} (present: {have})"
    return None


def _label(trace: Trace) -> str:
    return trace.path.name or str(trace.path)


def _tag(findings: list[Finding], label: str | None) -> list[Finding]:
    if label is None:
        return findings
    from dataclasses import replace

    return [replace(f, message=f"[{label}] {f.message}") for f in findings]


def run(
    trace_or_traces: Any,
    names: str | Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Run analyzers over one or several traces.

    Args:
        trace_or_traces: A trace directory path, a :class:`tracefmt.Trace`, or a list of them.
        names: Analyzers to run (list or comma-separated string). Defaults to every registered one.
        params: Parameter settings, flat ``{'dead.threshold': 0.9}`` or nested
            ``{'dead': {'threshold': 0.9}}``. Defaults to each analyzer's defaults.
        progress: Called with the number of records of every batch scanned.

    Returns:
        A :class:`Report` (findings table, per-analyzer results, skipped analyzers).

    Raises:
        UsageError: An unknown analyzer or parameter name, or a bad value.
        PluginLoadError: An explicitly selected analyzer cannot be loaded.
    """
    traces = open_traces(trace_or_traces)
    wanted, explicit = _selected(names)
    report = Report(traces=traces, per_trace=[{} for _ in traces])
    classes: dict[str, type[Analyzer]] = {}
    for name in wanted:
        try:
            classes[name] = registry.get(name)
        except registry.PluginLoadError as exc:
            if explicit:
                raise
            report.skipped_list.append(Skipped(name, str(exc)))
    report.params = resolve_params(classes, params, known=registry.names())
    several = len(traces) > 1
    analyzers = {name: cls() for name, cls in classes.items()}
    with progress_to(progress):
        for i, trace in enumerate(traces):
            label = _label(trace) if several else None
            results = _run_single(trace, {n: a for n, a in analyzers.items() if not a.multi_run}, report)
            for name, result in results.items():
                report.per_trace[i][name] = result
                if not several:
                    report.results[name] = result
                report.findings_list.extend(_tag(_fill(result.findings, name), label))
        for name, analyzer in analyzers.items():
            if not analyzer.multi_run:
                continue
            usable = []
            for trace in traces:
                reason = unmet_need(trace, analyzer.needs)
                if reason is None:
                    usable.append(trace)
                else:
                    report.skipped_list.append(Skipped(name, reason, _label(trace)))
            if not usable:
                continue
            try:
                result = analyzer.analyze_runs(usable, dict(report.params[name]))
            except NotApplicable as exc:
                report.skipped_list.append(Skipped(name, str(exc)))
                continue
            report.results[name] = result
            report.findings_list.extend(_fill(result.findings, name))
    return report


def _run_single(trace: Trace, analyzers: dict[str, Analyzer], report: Report) -> dict[str, AnalyzerResult]:
    """Run single-run analyzers on one trace; streaming ones share one pass over the records."""
    consumers: dict[str, RecordConsumer] = {}
    direct: list[str] = []
    for name, analyzer in analyzers.items():
        streaming = isinstance(analyzer, StreamingAnalyzer)
        # The kinds a trace holds are counted by the shared pass itself: streaming analyzers
        # are checked for them after it, so no separate scan of the kind column is needed.
        reason = unmet_need(trace, analyzer.needs, kinds=not streaming)
        if reason is None and streaming:
            try:
                consumers[name] = analyzer.consumer(trace, dict(report.params[name]))
            except NotApplicable as exc:
                reason = str(exc)
        elif reason is None:
            direct.append(name)
        if reason is not None:
            report.skipped_list.append(Skipped(name, reason, _label(trace)))
    shared_pass(trace, list(consumers.values()))
    for name in list(consumers):
        reason = unmet_need(trace, analyzers[name].needs)
        if reason is not None:
            del consumers[name]
            report.skipped_list.append(Skipped(name, reason, _label(trace)))
    out: dict[str, AnalyzerResult] = {}
    _note_inferred_classes(trace, consumers, report)
    for name in analyzers:
        try:
            if name in consumers:
                out[name] = consumers[name].finish()
            elif name in direct:
                out[name] = analyzers[name].analyze(trace, dict(report.params[name]))
        except NotApplicable as exc:
            report.skipped_list.append(Skipped(name, str(exc), _label(trace)))
    return out


def _note_inferred_classes(trace: Trace, consumers: dict[str, RecordConsumer], report: Report) -> None:
    """An info finding when analyzers judged nodes by op classes inferred from op_type names."""
    if not consumers or not trace.has("nodes"):
        return
    from .scan import node_table

    inferred = int(node_table(trace)["op_class_inferred"])
    if inferred:
        label = _label(trace) if len(report.traces) > 1 else None
        msg = (f"{inferred} node(s) have no op_class (a trace written before format 1.1, or by a producer that does not fill it): "
               "their classes were inferred from op_type names, which may misjudge custom ops.")  # fmt: skip
        report.findings_list.extend(_tag([Finding("tracefmt", "op-class-inferred", "info", msg, metric="nodes", value=float(inferred))], label))


def _fill(findings: list[Finding], name: str) -> list[Finding]:
    """Findings with the analyzer field set to the registered name when left empty."""
    from dataclasses import replace

    return [f if f.analyzer else replace(f, analyzer=name) for f in findings]
