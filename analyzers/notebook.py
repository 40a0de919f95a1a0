"""HTML for notebooks: ``_repr_html_`` of analysis reports and diff results, inline figures.

Every string from a trace is escaped (``html.escape``). Figures are embedded as PNG
(base64); :func:`register_inline_figures` makes a bare matplotlib ``Figure`` display as a
PNG in IPython without ``%matplotlib inline`` (the analyzers build figures without pyplot).
"""

from __future__ import annotations

import base64
import html
import io
import sys
from typing import Any

__all__ = ["report_html", "diff_html", "findings_html", "figure_png", "register_inline_figures"]

#: Figures embedded by a report's ``_repr_html_`` (the rest are named, built on demand).
MAX_INLINE_FIGURES = 12
_STYLE = "border-collapse:collapse;font-size:12px"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top"
_COLOURS = {"error": "#b00020", "warning": "#b36b00", "info": "#555"}


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def register_inline_figures() -> None:
    """Display matplotlib Figures as PNG in a running IPython (no-op elsewhere; idempotent)."""
    if "IPython" not in sys.modules:
        return
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["image/png"]
    if Figure not in formatter.type_printers:
        formatter.for_type(Figure, figure_png)


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th style='{_CELL}'>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='{_CELL}'>{_e(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table style='{_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def findings_html(findings: list[Any]) -> str:
    """A findings table (severity coloured), most severe first."""
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings:
        steps = "" if f.step_first is None else (f"{f.step_first}" if f.step_first == f.step_last else f"{f.step_first}-{f.step_last}")
        rows.append(
            {
                "severity": f.severity.value,
                "analyzer": f.analyzer,
                "code": f.code,
                "node": f.node or "",
                "steps": steps,
                "message": f.message,
            }
        )
    out = _table(rows, ["severity", "analyzer", "code", "node", "steps", "message"])
    for sev, colour in _COLOURS.items():  # colour the severity cells; the text is our own vocabulary
        out = out.replace(f">{sev}</td>", f"><b style='color:{colour}'>{sev}</b></td>")
    return out


def _verdict(findings: list[Any]) -> str:
    n = {s: sum(1 for f in findings if f.severity.value == s) for s in ("error", "warning", "info")}
    word = "problems found" if n["error"] else ("warnings" if n["warning"] else "healthy")
    colour = _COLOURS["error"] if n["error"] else (_COLOURS["warning"] if n["warning"] else "#1b7f3b")
    return f"<p><b style='color:{colour}'>{word}</b>: {n['error']} error(s), {n['warning']} warning(s), {n['info']} info</p>"


def report_html(report: Any) -> str:
    """The ``_repr_html_`` of an analysis report: verdict, findings, skipped analyzers, figures."""
    parts = [f"<div><h4>tracefmt analysis of {_e(', '.join(t.path.name for t in report.traces))}</h4>", _verdict(report.findings_list),
             findings_html(report.findings_list)]  # fmt: skip
    if report.skipped:
        parts.append("<p>Skipped: " + "; ".join(f"{_e(k)} ({_e(v)})" for k, v in report.skipped.items()) + "</p>")
    figures = list(report.iter_figures())
    for label, name, factory in figures[:MAX_INLINE_FIGURES]:
        try:
            png = base64.b64encode(figure_png(factory())).decode()
        except Exception as exc:  # noqa: BLE001 - one broken figure must not hide the report
            parts.append(f"<p>{_e(label)} / {_e(name)}: figure failed ({_e(exc)})</p>")
            continue
        parts.append(
            f"<figure><img src='data:image/png;base64,{png}' style='max-width:100%'/><figcaption>{_e(label)}: {_e(name)}</figcaption></figure>"
        )
    if len(figures) > MAX_INLINE_FIGURES:
        rest = ", ".join(f"{label}.{name}" for label, name, _ in figures[MAX_INLINE_FIGURES:])
        parts.append(f"<p>More figures (report.results[...].figure(name)): {_e(rest)}</p>")
    return "".join(parts) + "</div>"


def diff_html(result: Any) -> str:
    """The ``_repr_html_`` of a diff result: the same verdict line as ``tracefmt diff``, then the pairs around it."""
    first = result.first_divergence
    if result.verdict == "inconclusive":
        head = f"<p><b style='color:{_COLOURS['warning']}'>inconclusive</b>: {_e('; '.join(result.reasons))}</p>"
    elif first is None:
        head = (
            f"<p><b style='color:#1b7f3b'>no divergence</b>: {len(result.compared)} tensors compared, all within tolerance or inherited</p>"
        )
    else:
        head = (f"<p><b style='color:{_COLOURS['error']}'>first divergence</b>: {_e(first.key or first.a_node)} (call {first.call}) "
                f"A {_e(first.a_node)} vs B {_e(first.b_node)}: {_e(first.metric)} error {first.error:.3g}x tolerance</p>")  # fmt: skip
    rows = [c.as_dict() for c in result.compared]
    if first is not None:
        i = result.compared.index(first)
        rows = rows[max(0, i - 10) : i + 10]
    else:
        rows = rows[:20]
    cols = [c for c in ("key", "call", "a_node", "b_node", "metric", "error", "status") if not rows or c in rows[0]]
    unmatched = f"<p>unmatched: {len(result.unmatched_a)} in A, {len(result.unmatched_b)} in B</p>"
    return f"<div><h4>tracefmt diff {_e(result.trace_a)} vs {_e(result.trace_b)}</h4>{head}{_table(rows, cols)}{unmatched}</div>"
