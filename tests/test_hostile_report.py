"""A trace whose every string is hostile renders, reports, and runs no script in a browser.

Every string field of the trace (model, run id, node names, scopes, op types, tensor
names, scalar names, stored findings) holds markup meant to break out of Graphviz labels
or HTML: HTML-like Graphviz labels with ``javascript:`` links, ``<script>``, event
handlers, NUL and control characters, trailing backslashes. Each payload that runs marks
the document (``data-pwned``); the report is loaded in headless Chromium and the DOM it
leaves is checked for that mark, for event-handler attributes, for ``javascript:`` URLs
and for scripts other than the report's own.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from _render_traces import LEAVES, node_rows
from test_report import CHROMIUM, chromium

import tracefmt
from tracefmt.analyzers.render import render_graph
from tracefmt.cli import main
from tracefmt.findings import Finding, findings_table, write_findings
from tracefmt.stats import tensor_stats

MARK = "document.documentElement.setAttribute('data-pwned','{}')"
PAYLOADS = [
    f'<<TABLE><TR><TD HREF="javascript:{MARK.format(1)}">click</TD></TR></TABLE>>',
    f"<script>{MARK.format(2)}</script>",
    f'<img src=x onerror="{MARK.format(3)}">',
    f'"><svg onload="{MARK.format(4)}">',
    f"</title><script>{MARK.format(5)}</script>",
    f"javascript:{MARK.format(6)}",
    '"]; evil [label="x" URL="javascript:alert(7)"]; "',
    "trailing backslash \\",
    "nul\x00 and \x1b[31m control \x07 chars\r\n",
    f"<a href='javascript:{MARK.format(8)}'>x</a>",
    f"]]></text><script>{MARK.format(9)}</script>",
]


def _hostile(i: int) -> str:
    """Payload ``i``: exact for the first ones (a whole label must be able to look like markup), numbered after."""
    return PAYLOADS[i] if i < len(PAYLOADS) else PAYLOADS[i % len(PAYLOADS)] + f" #{i}"


def write_hostile_trace(path: Path) -> Path:
    """The render tests' toy network with every string replaced by a payload."""
    rows = node_rows()
    for i, r in enumerate(rows):
        r.update(name=_hostile(i), scope=_hostile(i + 3), op_type=_hostile(i + 5))
    rng = np.random.default_rng(0)
    with tracefmt.TraceWriter(path, model=_hostile(0), run_id=_hostile(2), flush_interval=0, producer={"adapter": _hostile(4)},
                              metadata={_hostile(1): _hostile(6)}) as w:  # fmt: skip
        w.write_nodes(rows)
        records = []
        for step in range(3):
            for seq, (nid, *_rest) in enumerate(LEAVES):
                x = rng.normal(size=(4, 8)) * (0.0 if nid == 4 else 1.0)
                records.append(
                    {
                        "step": step,
                        "phase": "train",
                        "node_id": nid,
                        "kind": "activation",
                        "slot": "0",
                        "call": 0,
                        "seq": seq,
                        **tensor_stats(x),
                    }
                )
            w.log_scalar(_hostile(step), 1.0 / (step + 1), step=step)
            w.log_scalar("loss", 1.0 / (step + 1), step=step)
        w.write_records(records)
    findings = [
        Finding(_hostile(7), _hostile(8), "error", _hostile(9), node_id=4, node=_hostile(4), metric=_hostile(10), value=1.0),
        Finding(_hostile(1), _hostile(2), "warning", _hostile(3), node_id=5, node=_hostile(5)),
    ]
    write_findings(path, findings_table(findings))
    return path


class _Dom(HTMLParser):
    """Collects what could run script: event-handler attributes, javascript: URLs, script elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.handlers: list[str] = []
        self.js_urls: list[str] = []
        self.scripts = 0
        self.pwned = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name == "data-pwned":
                self.pwned = True
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}>")
            if (
                name in ("href", "xlink:href", "src", "action", "formaction")
                and value
                and "".join(value.split()).lower().startswith("javascript:")
            ):
                self.js_urls.append(f"<{tag} {name}={value[:40]}>")


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory) -> Path:
    return write_hostile_trace(tmp_path_factory.mktemp("hostile") / "hostile.trace")


def test_hostile_strings_render_as_plain_text(hostile_trace):
    g = render_graph(hostile_trace, metric="none")  # the title is then the model name alone
    # No label is HTML-like except the legend, which is built from escaped text.
    html_like = [line for line in g.source.splitlines() if "label=<" in line and "legend" not in line]
    assert html_like == []
    svg = g.pipe(format="svg").decode("utf-8")
    dom = _Dom()
    dom.feed(svg)
    assert dom.handlers == [] and dom.js_urls == [] and dom.scripts == 0
    assert "\x00" not in g.source


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_hostile_report_runs_no_script_in_chromium(hostile_trace, tmp_path, capsys):
    out = tmp_path / "report.html"
    code = main(["report", str(hostile_trace), "-o", str(out)])
    assert code in (0, 1), capsys.readouterr().err
    html = out.read_text(encoding="utf-8")
    static = _Dom()
    static.feed(html)
    assert static.handlers == [] and static.js_urls == [], (static.handlers, static.js_urls)
    own_scripts = static.scripts  # the report's error hook and status script
    proc = chromium(out, tmp_path, "--dump-dom", "--virtual-time-budget=3000")
    assert 'id="page-status"' in proc.stdout, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    assert not dom.pwned, "a payload from the trace ran as script"
    assert dom.handlers == [] and dom.js_urls == [], (dom.handlers, dom.js_urls)
    assert dom.scripts == own_scripts
    assert "alert" not in "".join(line for line in proc.stderr.splitlines() if "CONSOLE" in line)
    # Every payload is visible as text (escaped, not dropped): the model name appears in the page.
    assert "javascript:" in proc.stdout and "&lt;script&gt;" in proc.stdout


def test_hostile_trace_through_every_command(hostile_trace, tmp_path, capsys):
    """info, validate, analyze, render end with a verdict or a one-line error, never an internal error."""
    for argv in (["info", str(hostile_trace)], ["validate", str(hostile_trace)], ["analyze", str(hostile_trace), "--format", "json"],
                 ["render", str(hostile_trace), "-o", str(tmp_path / "g.svg")]):  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1), (argv, code, err)
    assert json.loads(json.dumps(tracefmt.open(hostile_trace).manifest))["model"] == _hostile(0)
