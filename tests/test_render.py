"""Annotated graphs: structure, colours, markers, collapsing, CLI (hand-written traces)."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from _render_traces import FINDINGS, LEAVES, write_trace

import tracefmt
from tracefmt.analyzers.render import Metric, drawn_node_ids, render_graph, save
from tracefmt.analyzers.render.colors import NONFINITE_FILL, SEVERITY_COLORS
from tracefmt.analyzers.render.metrics import combine
from tracefmt.cli import main
from tracefmt.enums import Severity
from tracefmt.findings import findings_table
from tracefmt.stats import tensor_stats


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return tracefmt.open(write_trace(tmp_path_factory.mktemp("render") / "toy.trace"))


def _attrs(source: str, node: str) -> str:
    m = re.search(rf"^\s*{node} \[(.*)\]$", source, flags=re.M)
    assert m, f"node {node} not in DOT output"
    return m.group(1)


def svg_node_titles(svg: str) -> list[str]:
    """Graphviz writes each node as <g class="node"><title>ID</title>."""
    return re.findall(r'<g id="[^"]*" class="node">\s*<title>([^<]*)</title>', svg)


def test_every_node_drawn_with_edges_and_clusters(toy):
    g = render_graph(toy)
    leaf_ids = sorted(f"n{n[0]}" for n in LEAVES)
    assert sorted(drawn_node_ids(g.source)) == leaf_ids
    # The residual edge stem -> block.add is drawn, containers are clusters, not nodes.
    assert re.search(r"^\s*n1 -> n6$", g.source, flags=re.M)
    assert g.source.count("subgraph cluster_") == 2
    svg = g.pipe(format="svg").decode()
    assert sorted(t for t in svg_node_titles(svg) if t != "legend") == leaf_ids


def test_fill_nan_and_findings_markers(toy):
    g = render_graph(toy, metric="dead_fraction")
    scale = g.info.scale
    # The dead-fraction colour starts at one half (a healthy rectifier's share of zeros).
    assert (scale.vmin, scale.vmax) == (0.5, 1.0)
    assert scale.color(0.5) == scale.color(0.0) != scale.color(0.9)
    # block.relu1 outputs only zeros: dead fraction 1, drawn with the top colour of the scale.
    relu = _attrs(g.source, "n4")
    assert f'fillcolor="{scale.color(1.0)}"' in relu and "dead 1" in relu
    assert g.info.overlay.values["n4"] == 1.0 and g.info.overlay.values["n3"] < 0.01
    # head.fc holds NaN and Inf at the last step: magenta, double border, counts in the label.
    fc = _attrs(g.source, "n9")
    assert f'fillcolor="{NONFINITE_FILL}"' in fc and "peripheries=2" in fc and "NaN 3  Inf 1" in fc
    # Stored findings mark their nodes with the severity colour.
    assert f'color="{SEVERITY_COLORS[Severity.ERROR]}"' in relu and "[error] dead-layer" in relu
    assert f'color="{SEVERITY_COLORS[Severity.WARNING]}"' in _attrs(g.source, "n5")
    assert g.info.marked == {4: Severity.ERROR, 5: Severity.WARNING}
    assert "peripheries" not in _attrs(g.source, "n8")
    assert "legend" in g.source


def test_step_selection_and_no_findings(toy):
    g = render_graph(toy, step=0, findings=False)
    assert g.info.overlay.step == 0 and not g.info.marked
    # No NaN at step 0.
    assert NONFINITE_FILL not in _attrs(g.source, "n9")
    with pytest.raises(tracefmt.UsageError, match="steps with records: 0, 1, 2"):
        render_graph(toy, step=9)


def test_collapse_to_depth_combines_records(toy):
    g = render_graph(toy, depth=0)
    assert drawn_node_ids(g.source) == ["n1", "c0", "c1"]
    assert g.info.collapsed == 2
    # 'block' folds conv1, relu1 (all zeros), conv2, add: one of four equal-size outputs is dead.
    assert g.info.overlay.values["c0"] == pytest.approx(0.25, abs=0.01)
    assert re.search(r"^\s*n1 -> c0$", g.source, flags=re.M) and re.search(r"^\s*c0 -> c1$", g.source, flags=re.M)
    # The collapsed cluster carries the worst finding of its members.
    assert f'color="{SEVERITY_COLORS[Severity.ERROR]}"' in _attrs(g.source, "c0")
    with pytest.raises(tracefmt.UsageError):
        render_graph(toy, depth=-1)


@pytest.mark.parametrize("metric", [m for m in Metric if m not in (Metric.DIFF_ERROR, Metric.NONE)])
def test_combined_records_equal_statistics_of_the_concatenation(metric):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300) * 3 + 1, np.concatenate([np.zeros(50), rng.normal(size=150)])
    b[:3] = np.nan
    rows = [tensor_stats(a), tensor_stats(b)]
    whole = tensor_stats(np.concatenate([a, b]))
    expected = {
        Metric.DEAD_FRACTION: whole["zero_count"] / whole["numel"],
        Metric.NONFINITE: (whole["nan_count"] + whole["inf_count"]) / whole["numel"],
    }.get(metric, whole.get(metric.value))
    assert combine(metric, rows) == pytest.approx(expected, rel=1e-9)


def test_diff_error_from_findings_values(toy):
    diff = findings_table([f.__class__(**{**f.__dict__, "analyzer": "diff", "metric": "max_abs_error"}) for f in FINDINGS])
    g = render_graph(toy, metric="diff_error", findings=diff)
    assert g.info.overlay.metric is Metric.DIFF_ERROR
    assert set(g.info.scale.ticks()) and g.info.scale.family == "badness"
    assert "err 1" in _attrs(g.source, "n4") and "err 0.1" in _attrs(g.source, "n5")
    with pytest.raises(tracefmt.UsageError, match="diff"):
        render_graph(toy, metric="diff_error", findings=False)


def test_metrics_on_gradients_use_a_log_scale_when_needed(toy):
    g = render_graph(toy, metric="l2", kind="gradient")
    vals = [v for v in g.info.overlay.values.values() if math.isfinite(v) and v > 0]
    assert g.info.scale.log == (max(vals) > 100 * min(vals))
    assert g.info.overlay.kind.value == "gradient"


@pytest.mark.parametrize("fmt,magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF"), ("dot", b"digraph")])
def test_save_formats_with_dot(toy, tmp_path, fmt, magic):
    path = save(render_graph(toy), tmp_path / f"g.{fmt}")
    assert path.read_bytes().startswith(magic)


def test_cli_render(toy, tmp_path, capsys):
    out = tmp_path / "g.svg"
    assert main(["render", str(toy.path), "-o", str(out), "--metric", "std", "--last", "--depth", "0"]) == 0
    assert "3 nodes (2 collapsed clusters)" in capsys.readouterr().out
    titles = svg_node_titles(out.read_text())
    assert sorted(titles) == ["c0", "c1", "legend", "n1"]
    # A findings file from elsewhere replaces the stored findings.
    f = tmp_path / "f.arrow"
    with pa.OSFile(str(f), "wb") as sink, ipc.new_file(sink, findings_table(FINDINGS[1:]).schema) as w:
        w.write_table(findings_table(FINDINGS[1:]))
    assert main(["render", str(toy.path), "-o", str(tmp_path / "g.dot"), "--findings", str(f), "--step", "1"]) == 0
    dot = (tmp_path / "g.dot").read_text()
    assert "[warning] low-std" in dot and "dead-layer" not in dot


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--step", "42"], "no 'activation' records at step 42"),
        (["--findings", "/nonexistent.arrow"], "no such findings file"),
        (["--metric", "diff_error", "--no-findings"], "diff"),
    ],
)
def test_cli_render_errors_are_one_line(toy, tmp_path, capsys, argv, needle):
    assert main(["render", str(toy.path), "-o", str(tmp_path / "g.svg"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
