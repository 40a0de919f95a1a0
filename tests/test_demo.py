"""`tracefmt demo`: a real end-to-end run (torch training, ONNX export, ORT, analyzers, reports).

One demo run, in the configuration `make demo` runs, is shared by the module's tests (the
quick mode saves little: model export, ONNX Runtime, analyzers and reports cost the same).
The broken configuration is broken by construction (a BatchNorm shift of -10 before ``layer1.act1``, a learning rate growing to
100): the analyzers must find exactly that, and nothing alarming in the healthy run.
"""

from __future__ import annotations

import io
import re

import pytest
from test_report import CHROMIUM, page_status

import tracefmt
from tracefmt.analyzers.render import drawn_node_ids, render_graph
from tracefmt.demo import DEAD_LAYER, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stream = io.StringIO()
    result = run_demo(out, stream=stream, progress=False)
    return result, stream.getvalue()


def _alarms(findings):
    return [f for f in findings if f["severity"] in ("warning", "error")]


def test_healthy_run_has_no_warnings_or_errors(demo):
    result, _ = demo
    alarms = _alarms(result.runs["healthy"].findings)
    assert alarms == [], "\n".join(f"{f['analyzer']}/{f['code']} {f['node']}: {f['message']}" for f in alarms)
    assert result.runs["healthy"].final["val_accuracy"] > 0.9


def test_broken_run_shows_the_dead_layer_and_the_divergence(demo):
    result, _ = demo
    findings = result.runs["broken"].findings
    dead = [f for f in findings if f["code"] == "dead-layer" and f["severity"] == "error"]
    # The layer killed by construction is reported dead from the first step on.
    assert any(f["node"] == DEAD_LAYER and f["step_first"] == 0 for f in dead)
    assert any(f["analyzer"] == "loss" and f["code"] == "divergence" and f["severity"] == "error" for f in findings)
    # Healthy layers upstream of the dead one are not reported dead.
    assert not any(f["node"] in ("stem.0", "layer1.conv1") for f in dead)
    # Nothing is called "downstream" of a layer that died after it did.
    assert not any(f["node"] == DEAD_LAYER and "downstream" in f["message"] for f in findings)


def test_verdicts_name_the_true_root_cause(demo):
    result, printed = demo
    assert result.runs["healthy"].verdict == "No problems found."
    verdict = result.runs["broken"].verdict
    assert verdict.startswith(f"Root cause: '{DEAD_LAYER}' at step 0 (dead-layer)"), verdict
    # The divergence is linked to the learning rate, which rose before it.
    assert "Also: the learning rate ('lr') rose" in verdict
    assert verdict in printed
    # The same line heads each HTML report.
    from tracefmt.analyzers.render.html import escape

    assert escape(verdict) in result.runs["broken"].report.read_text()
    assert "No problems found." in result.runs["healthy"].report.read_text()


def test_onnx_runtime_agrees_with_pytorch(demo):
    result, _ = demo
    assert result.diff["divergent"] is False
    assert result.diff["compared"] >= 10


def test_outputs_written_and_traces_valid(demo):
    result, printed = demo
    for name in ("healthy", "broken", "onnx-vs-torch"):
        run = result.runs[name]
        assert run.report.is_file() and run.report.stat().st_size > 10_000
        assert str(run.report) in printed
        assert all(p.is_file() for p in run.graphs)
        assert tracefmt.validate(run.trace).valid
        # Findings are written into each trace.
        assert tracefmt.open(run.trace).findings is not None
    assert re.search(r"broken\s+\d+ error", printed)
    names = {p.name for p in result.figures}
    assert "healthy-activations-colorful_dimension.png" in names
    assert (result.out / "summary.json").is_file()


@pytest.mark.parametrize("name", ["healthy", "onnx-vs-torch"])
def test_render_pytorch_and_onnx_traces_draw_every_node(demo, name):
    result, _ = demo
    trace = tracefmt.open(result.runs[name].trace)
    leaves = [n for n, c in zip(trace.nodes.column("node_id").to_pylist(), trace.nodes.column("container").to_pylist()) if not c]
    g = render_graph(trace)
    assert sorted(drawn_node_ids(g.source)) == sorted(f"n{n}" for n in leaves)
    svg = g.pipe(format="svg").decode()
    titles = re.findall(r'<g id="[^"]*" class="node">\s*<title>(n\d+)</title>', svg)
    assert len(titles) == len(leaves)
    # Every traced node has a value at the last step (PyTorch: train; ONNX Runtime: eval).
    assert len(g.info.overlay.values) >= 0.9 * len(leaves)


def test_render_cli_colours_the_onnx_graph_by_diff_error(demo, tmp_path, capsys):
    from tracefmt.cli import main

    result, _ = demo
    out = tmp_path / "diff.dot"
    onnx_trace = result.runs["onnx-vs-torch"].trace
    assert main(["render", str(onnx_trace), "--compare", str(result.out / "healthy-eval.trace"), "-o", str(out)]) == 0
    assert "diff_error of activation" in capsys.readouterr().out
    dot = out.read_text()
    # Within tolerance everywhere: no node reaches the top of the 0..1 (x tolerance) scale.
    assert "err " in dot and "[error]" not in dot


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_broken_report_in_chromium_shows_its_figures(demo, tmp_path):
    result, _ = demo
    attrs, console = page_status(result.runs["broken"].report, tmp_path)
    assert attrs["data-loaded"] == "1" and attrs["data-errors"] == "0" and console == []
    assert int(attrs["data-images"]) >= 8 and attrs["data-broken-images"] == "0"
    assert int(attrs["data-svgs"]) >= 3


def test_summary_is_clean_full_and_counts_what_the_reports_show(demo):
    result, text = demo
    assert "\r" not in text and "step/s" not in text  # no progress bars when not on a terminal
    flat = " ".join(text.split())
    for name, run in result.runs.items():
        shown = [f for f in run.findings if f["severity"] in ("error", "warning")][:8]
        for f in shown:
            assert " ".join(f["message"].split()) in flat  # whole messages, wrapped at word boundaries
        html = run.report.read_text()
        m = re.search(r"(\d+) finding\(s\)", html)
        assert m and int(m.group(1)) == len(run.findings) == sum(result.counts(name).values())
