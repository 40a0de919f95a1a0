"""HTML building blocks of the report: one self-contained page, no network.

Everything the page shows is inside the file: figures as ``data:image/png;base64`` images,
graphs as inline SVG, styles in a ``<style>`` element. The page carries a tiny script that
records JavaScript errors and image-loading failures into ``#page-status`` (read by tests
in a headless browser); the page needs no script to display.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tracefmt.enums import Severity

from ..escaping import html_text
from .colors import SEVERITY_COLORS, format_value

__all__ = ["escape", "table", "png_img", "inline_svg", "section", "page", "severity_badge"]

_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #23395b; color: white; padding: 14px 28px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; opacity: .85; }
main { padding: 8px 28px 40px; max-width: 1400px; }
h2 { border-bottom: 2px solid #23395b; padding-bottom: 4px; margin-top: 28px; }
h3 { margin: 18px 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; background: white; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #e8ecf2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 9px; color: white; font-size: 12px; font-weight: bold; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; background: white; border: 1px solid #ddd; padding: 6px; }
figure img { max-width: 640px; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; margin-top: 4px; }
.graph { background: white; border: 1px solid #ddd; overflow: auto; max-height: 1100px; }
.graph svg { max-width: none; height: auto; }
.zoom { margin: 4px 0; } .zoom button { font-size: 12px; margin-right: 4px; }
.note { color: #666; font-size: 13px; }
.error-note { color: #b00; font-size: 13px; }
details > summary { cursor: pointer; font-weight: bold; margin: 8px 0; }
"""

# Registered before anything else so that errors of any later script are recorded.
_ERROR_HOOK = """
window.__tracefmt = {errors: []};
window.addEventListener('error', function (e) {
  window.__tracefmt.errors.push(e.message || ('failed to load ' + (e.target && (e.target.src || e.target.tagName))));
}, true);
"""

_STATUS_SCRIPT = """
function tracefmtStatus() {
  var imgs = document.querySelectorAll('img'), bad = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++; }
  var s = document.getElementById('page-status');
  s.setAttribute('data-loaded', '1');
  s.setAttribute('data-images', String(imgs.length));
  s.setAttribute('data-broken-images', String(bad));
  s.setAttribute('data-svgs', String(document.querySelectorAll('svg').length));
  s.setAttribute('data-errors', String(window.__tracefmt.errors.length));
  s.textContent = window.__tracefmt.errors.join('\\n');
}
tracefmtStatus();
window.addEventListener('load', tracefmtStatus);
"""

# Pan (scroll bars, or drag) and zoom (buttons, ctrl + wheel) of the inline graph SVGs.
_ZOOM_SCRIPT = """
document.querySelectorAll('.graph').forEach(function (box) {
  var svg = box.querySelector('svg'); if (!svg) return;
  var base = svg.getBoundingClientRect().width || box.clientWidth, k = 1;
  function set(z) { k = Math.max(0.05, Math.min(8, z)); svg.style.width = (base * k) + 'px'; }
  function fit() { set(box.clientWidth / base); }
  var bar = document.createElement('div'); bar.className = 'zoom';
  [['+', function () { set(k * 1.25); }], ['\u2212', function () { set(k / 1.25); }], ['fit', fit], ['1:1', function () { set(1); }]]
    .forEach(function (b) { var e = document.createElement('button'); e.textContent = b[0]; e.onclick = b[1]; bar.appendChild(e); });
  box.parentNode.insertBefore(bar, box);
  box.addEventListener('wheel', function (e) { if (e.ctrlKey) { e.preventDefault(); set(k * (e.deltaY < 0 ? 1.15 : 1 / 1.15)); } }, {passive: false});
  var drag = null;
  box.addEventListener('mousedown', function (e) { drag = [e.clientX, e.clientY, box.scrollLeft, box.scrollTop]; });
  window.addEventListener('mouseup', function () { drag = null; });
  box.addEventListener('mousemove', function (e) { if (drag) { box.scrollLeft = drag[2] - (e.clientX - drag[0]); box.scrollTop = drag[3] - (e.clientY - drag[1]); } });
  if (base > box.clientWidth * 1.5) fit();
});
"""


def escape(value: Any) -> str:
    """HTML-escape ``value`` formatted for display (numbers with 4 significant digits)."""
    if isinstance(value, float):
        return html_text(format_value(value))
    return html_text("-" if value is None else value)


def severity_badge(severity: str, text: str | None = None) -> str:
    """A coloured pill for a severity, in the graph's severity colours."""
    known = {s.value: s for s in Severity}
    colour = SEVERITY_COLORS.get(known.get(severity), "#777")
    return f'<span class="badge" style="background:{colour}">{escape(text if text is not None else severity)}</span>'


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, headers: Mapping[str, str] | None = None, raw: Iterable[str] = ()) -> str:
    """An HTML table of ``rows`` (dicts) with the given columns.

    Args:
        rows: The rows.
        columns: Keys to show, in order.
        headers: Column header texts. Defaults to the keys.
        raw: Columns whose values are already HTML (not escaped).

    Returns:
        The ``<table>`` element.
    """
    headers = headers or {}
    raw = set(raw)
    head = "".join(f"<th>{escape(headers.get(c, c))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{v if c in raw else escape(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_img(data: bytes, *, alt: str, caption: str | None = None) -> str:
    """A figure element holding ``data`` (PNG bytes) inline as base64."""
    b64 = base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{b64}">{cap}</figure>'


def inline_svg(svg: bytes | str, *, prefix: str) -> str:
    """An SVG document reduced to its ``<svg>`` element, with ids prefixed by ``prefix``.

    Several Graphviz drawings on one page reuse the same ids (``graph0``, ``node1``, ...);
    prefixing keeps every id unique.
    """
    text = svg.decode("utf-8") if isinstance(svg, bytes) else svg
    start = text.find("<svg")
    text = text[start:] if start >= 0 else text
    text = re.sub(r'\bid="', f'id="{prefix}', text)
    text = text.replace("url(#", f"url(#{prefix}").replace('href="#', f'href="#{prefix}')
    return text


def section(title: str, body: str, *, anchor: str, level: int = 2) -> str:
    """A titled section with an anchor for the table of contents."""
    return f'<section id="{escape(anchor)}"><h{level}>{escape(title)}</h{level}>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole HTML document.

    Args:
        title: Page and header title.
        subtitle: Line under the title.
        sections: ``(anchor, title, body html)`` in order; a table of contents links them.

    Returns:
        The HTML text.
    """
    toc = " · ".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(t, b, anchor=a) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style><script>{_ERROR_HOOK}</script></head><body>"
        f"<header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>"
        f"<main><p class=\"note\">{toc}</p>{body}"
        '<pre id="page-status" class="error-note" data-loaded="0"></pre></main>'
        f"<script>{_STATUS_SCRIPT}</script><script>{_ZOOM_SCRIPT}</script></body></html>\n"
    )
