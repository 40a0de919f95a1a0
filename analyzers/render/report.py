"""The HTML report of a run: summary, findings, every applicable analyzer's figures, graphs.

:func:`build_report` runs the analyzers on a trace (or takes their results), draws each
figure as an inline PNG and the annotated computation graph as inline SVG, and returns one
self-contained HTML page (:mod:`.html`). With ``compare``, the page adds the diff of the
two traces (:mod:`tracefmt.analyzers.diff`) and the graph coloured by the diff's error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tracefmt.enums import Kind, Severity
from tracefmt.errors import MissingDependencyError
from tracefmt.findings import Finding
from tracefmt.safe_io import write_atomic
from tracefmt.schema import FINDINGS

from . import html as H
from .graph import pipe, render_graph, suggested_depth
from .metrics import Metric

if TYPE_CHECKING:
    from tracefmt import Trace

__all__ = ["ReportInfo", "build_report", "write_report", "run_summary", "figure_png"]

#: Graphs drawn in a report: (metric, kind), each when the trace has records of the kind.
REPORT_GRAPHS: tuple[tuple[Metric, Kind], ...] = (
    (Metric.DEAD_FRACTION, Kind.ACTIVATION),
    (Metric.STD, Kind.ACTIVATION),
    (Metric.L2, Kind.GRADIENT),
)
_FINDING_COLUMNS = ["severity", "analyzer", "code", "node", "step_first", "step_last", "metric", "value", "threshold", "message"]


@dataclass
class ReportInfo:
    """What a written report contains (for callers and tests).

    Attributes:
        path: The HTML file (None when only built in memory).
        findings: The findings shown (Arrow table with the findings schema).
        figures: ``analyzer/figure`` names drawn.
        images: ``analyzer/figure`` -> the PNG bytes shown in the page.
        figure_errors: ``analyzer/figure`` -> error text for figures that failed to draw.
        skipped: Analyzer name -> reason it did not apply.
        graphs: Titles of the graphs drawn.
        html: The page.
    """

    path: Path | None
    findings: pa.Table
    figures: list[str] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    figure_errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    graphs: list[str] = field(default_factory=list)
    html: str = ""


def _open(trace: Any) -> Trace:
    import tracefmt

    return trace if isinstance(trace, tracefmt.Trace) else tracefmt.open(trace)


def figure_png(fig: Any, *, dpi: int = 90) -> bytes:
    """A matplotlib Figure as PNG bytes; the figure is closed afterwards."""
    buf = io.BytesIO()
    # No bbox_inches='tight': the analyzers' figures use constrained layout already, and a
    # tight bounding box draws every figure twice.
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except ImportError:  # pragma: no cover - matplotlib without pyplot
        pass
    return buf.getvalue()


def run_summary(trace: Trace) -> list[dict[str, Any]]:
    """``(field, value)`` rows describing a run: model, producer, size, steps, last scalars."""
    m = trace.manifest
    prod = m.get("producer", {})
    nodes = trace.nodes
    containers = int(pc.sum(nodes.column("container")).as_py() or 0)
    rows: list[dict[str, Any]] = [
        {"field": "model", "value": m.get("model") or "-"},
        {"field": "run id", "value": trace.run_id},
        {"field": "created", "value": m.get("created")},
        {"field": "producer", "value": " ".join(str(prod.get(k, "")) for k in ("adapter", "framework", "framework_version")).strip() or "-"},
        {"field": "complete", "value": "yes" if trace.complete else "no (writer did not close)"},
        {"field": "nodes", "value": f"{nodes.num_rows - containers} operations, {containers} containers"},
    ]
    if trace.has("records"):
        steps = trace.read("records", columns=["step", "phase", "kind"])
        rows.append({"field": "records", "value": f"{steps.num_rows:,}"})
        # Nulls (a nonconforming trace) are left out: the summary shows what is there.
        for phase in sorted(set(steps.column("phase").drop_null().to_pylist())):
            sel = steps.filter(pc.equal(steps.column("phase"), phase))
            kinds = ", ".join(sorted(set(sel.column("kind").drop_null().to_pylist())))
            lo, hi = pc.min(sel.column("step")).as_py(), pc.max(sel.column("step")).as_py()
            rows.append({"field": f"{phase} steps", "value": f"{lo}–{hi} ({kinds})"})
    if trace.has("scalars"):
        s = trace.scalars
        for name in sorted(set(s.column("name").drop_null().to_pylist())):
            for phase in sorted(set(s.filter(pc.equal(s.column("name"), name)).column("phase").drop_null().to_pylist())):
                sel = s.filter(pc.and_(pc.equal(s.column("name"), name), pc.equal(s.column("phase"), phase)))
                if not sel.num_rows:
                    continue
                last = sel.column("value")[-1].as_py()
                rows.append({"field": f"{name} ({phase}), last of {sel.num_rows}", "value": last})
    meta = m.get("metadata")
    meta = meta if isinstance(meta, dict) else {}  # a nonconforming manifest: show no metadata
    for k, v in list(meta.items())[:12]:
        if isinstance(v, (str, int, float, bool)):
            rows.append({"field": f"metadata.{k}", "value": v})
    return rows


def _analyze(trace: Trace, names: list[str] | None, params: dict[str, Any] | None, analysis: Any = None) -> tuple[pa.Table, dict[str, Any], dict[str, str]]:
    """Run the analyzer pipeline (unless given its result): findings, results, skipped analyzers."""
    from tracefmt import analyzers

    result = analysis if analysis is not None else analyzers.run(trace, names=names, params=params)
    findings = result.findings
    stored = trace.findings
    if stored is not None and stored.num_rows:
        # Findings written into the trace by analyzers that did not run now (a diff, a
        # third-party analyzer) are shown too; those of analyzers that ran are superseded.
        keep = pc.invert(pc.is_in(stored.column("analyzer"), pa.array(list(result.results), pa.string())))
        extra = stored.filter(keep).select(FINDINGS.names).cast(FINDINGS.schema)
        findings = pa.concat_tables([findings, extra]) if extra.num_rows else findings
    return findings, dict(result.results), dict(result.skipped)


def _findings_section(findings: pa.Table) -> str:
    if not findings.num_rows:
        return '<p>No findings: every analyzer that applies found nothing to report.</p>'
    sev = findings.column("severity").to_pylist()
    counts = " ".join(H.severity_badge(s.value, f"{sev.count(s.value)} {s.value}") for s in (Severity.ERROR, Severity.WARNING, Severity.INFO))
    rows = findings.to_pylist()
    for r in rows:
        r["severity_text"] = r["severity"]
        r["severity"] = H.severity_badge(r["severity"])
    alarms = [r for r in rows if r["severity_text"] != Severity.INFO.value]
    infos = [r for r in rows if r["severity_text"] == Severity.INFO.value]
    body = f"<p>{counts}</p>"
    if alarms:
        body += H.table(alarms, _FINDING_COLUMNS, raw=["severity"])
    else:
        body += "<p>No warnings or errors.</p>"
    if infos:
        # Informational findings (context, not problems) stay folded so the problems lead.
        body += f"<details><summary>{len(infos)} informational finding(s)</summary>{H.table(infos, _FINDING_COLUMNS, raw=['severity'])}</details>"
    return body


def _figures_section(results: dict[str, Any], skipped: dict[str, str], info: ReportInfo) -> str:
    parts = []
    for name, res in results.items():
        figs = []
        for fig_name, build in (getattr(res, "figures", None) or {}).items():
            key = f"{name}/{fig_name}"
            try:
                png = figure_png(build())
            except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the whole report
                info.figure_errors[key] = f"{type(exc).__name__}: {exc}"
                figs.append(f'<p class="error-note">figure {H.escape(key)} could not be drawn: {H.escape(info.figure_errors[key])}</p>')
                continue
            info.figures.append(key)
            info.images[key] = png
            figs.append(H.png_img(png, alt=key, caption=key))
        if figs:
            parts.append(f'<h3>{H.escape(name)}</h3><div class="figures">{"".join(figs)}</div>')
    if not parts:
        parts.append('<p class="note">No analyzer produced a figure for this trace.</p>')
    if skipped:
        rows = [{"analyzer": k, "reason": v} for k, v in skipped.items()]
        parts.append("<h3>Analyzers that do not apply</h3>" + H.table(rows, ["analyzer", "reason"]))
    return "".join(parts)


def _has_kind(trace: Trace, kind: Kind) -> bool:
    return trace.has("records") and trace.read("records", columns=["kind"], kinds=[kind.value]).num_rows > 0


def _graph_html(graph: Any, prefix: str, note: str) -> str:
    svg = pipe(graph, "svg")
    return f'<p class="note">{H.escape(note)}</p><div class="graph">{H.inline_svg(svg, prefix=prefix)}</div>'


def _graphs_section(trace: Trace, findings: pa.Table, info: ReportInfo, *, depth: int | None) -> str:
    depth = suggested_depth(trace) if depth is None else depth
    parts = []
    for i, (metric, kind) in enumerate(REPORT_GRAPHS):
        if not _has_kind(trace, kind):
            continue
        g = render_graph(trace, metric=metric, kind=kind, findings=findings, depth=depth)
        title = g.info.scale.label if g.info.scale else metric.value
        info.graphs.append(title)
        note = "Fill: " + title + "; border: most severe finding; magenta with a double border: NaN/Inf present."
        if depth is not None:
            note += f" Modules nested deeper than {depth} level(s) are collapsed (tracefmt render --depth)."
        body = _graph_html(g, f"g{i}_", note)
        parts.append(f"<details{' open' if not parts else ''}><summary>{H.escape(title)}</summary>{body}</details>")
    if not parts:
        g = render_graph(trace, metric=Metric.NONE, findings=findings, depth=depth)
        info.graphs.append("structure")
        parts.append(_graph_html(g, "g_", "The trace has no activation records: the graph's structure only."))
    return "".join(parts)


def _compare_sections(trace: Trace, other: Trace, info: ReportInfo, *, depth: int | None) -> list[tuple[str, str, str]]:
    try:
        from tracefmt.analyzers.diff import diff_traces
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise MissingDependencyError("tracefmt.analyzers.diff", "analyzers", f"report --compare ({exc})") from None
    diff = diff_traces(trace, other)
    findings = diff.findings if isinstance(diff.findings, pa.Table) else _to_table(diff.findings)
    a, b = run_summary(trace), run_summary(other)
    keys = list(dict.fromkeys([r["field"] for r in a] + [r["field"] for r in b]))
    av, bv = {r["field"]: r["value"] for r in a}, {r["field"]: r["value"] for r in b}
    side = H.table([{"field": k, "this run": av.get(k), "compared run": bv.get(k)} for k in keys], ["field", "this run", "compared run"])
    verdict = f'<p class="{"error-note" if diff.verdict != "agree" else "note"}"><b>{H.escape(diff.verdict_line())}</b></p>'
    sections = [("compare", f"Compared with {other.path.name}", side + "<h3>Diff</h3>" + verdict + _findings_section(findings))]
    if any(r.get("value") is not None for r in findings.to_pylist()):
        g = render_graph(trace, metric=Metric.DIFF_ERROR, findings=findings, depth=depth if depth is not None else suggested_depth(trace))
        info.graphs.append("diff error")
        sections.append(("diff-graph", "Graph coloured by diff error", _graph_html(g, "gd_", "Fill: largest diff error reported for the node.")))
    return sections


def _to_table(findings: Any) -> pa.Table:
    from tracefmt.findings import findings_table

    return findings_table(list(findings)) if findings else FINDINGS.schema.empty_table()


def build_report(
    trace: Any,
    *,
    compare: Any = None,
    analyzers: list[str] | None = None,
    params: dict[str, Any] | None = None,
    depth: int | None = None,
    title: str | None = None,
    analysis: Any = None,
) -> ReportInfo:
    """Build the HTML report of ``trace``.

    Args:
        trace: A :class:`tracefmt.Trace` or a trace path.
        compare: A second trace (or path) to diff against. Defaults to None.
        analyzers: Analyzer names to run. Defaults to every registered analyzer that applies.
        params: Analyzer parameters (``{'dead': {'threshold': 0.9}}``) passed to the pipeline.
        depth: Collapse graph clusters deeper than this. Defaults to an automatic depth
            that keeps large graphs readable (nothing collapsed for small ones).
        title: Page title. Defaults to ``'tracefmt report: <model>'``.
        analysis: The result of :func:`tracefmt.analyzers.run` on this trace, when the caller
            already has it (the analyzers are not run again). Defaults to None.

    Returns:
        The report (``info.html`` holds the page).
    """
    trace = _open(trace)
    other = _open(compare) if compare is not None else None
    findings, results, skipped = _analyze(trace, analyzers, params, analysis)
    if other is not None:
        # A diff stored in the trace is shown, recomputed, in the comparison section: once.
        findings = findings.filter(pc.not_equal(findings.column("analyzer"), "diff"))
    info = ReportInfo(path=None, findings=findings, skipped=skipped)
    model = trace.manifest.get("model") or trace.path.name
    summary = H.table(run_summary(trace), ["field", "value"])
    sections = [
        ("summary", "Run summary", summary),
        ("findings", "Findings", _findings_section(findings)),
        ("figures", "Analyzer figures", _figures_section(results, skipped, info)),
        ("graph", "Annotated computation graph", _graphs_section(trace, findings, info, depth=depth)),
    ]
    if other is not None:
        sections += _compare_sections(trace, other, info, depth=depth)
    worst = max((Severity(s) for s in findings.column("severity").to_pylist()), key=lambda s: s.rank, default=None)
    verdict = f"worst finding: {worst.value}" if worst is not None else "no findings"
    from ..verdict import verdict as root_verdict

    line = root_verdict([Finding.from_row(r) for r in findings.to_pylist()], trace)
    subtitle = f"{line} · {trace.path} · {findings.num_rows} finding(s), {verdict} · {len(info.figures)} figure(s)"
    info.html = H.page(title or f"tracefmt report: {model}", subtitle, sections)
    return info


def write_report(trace: Any, path: str | Path, **options: Any) -> ReportInfo:
    """Build the report (see :func:`build_report`) and write it to ``path``.

    Returns:
        The report info, with ``path`` set.
    """
    info = build_report(trace, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, info.html)
    info.path = path
    return info
