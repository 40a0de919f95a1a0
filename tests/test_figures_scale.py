"""Figures stay legible at 20, 100 and 400 layers; a 400-layer report displays in headless Chromium."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _deep_traces import DEAD, ZERO_GRAD, write_deep_trace
from test_report import needs_chromium, page_status, screenshot

import tracefmt.analyzers as ta
from tracefmt.analyzers.figures import TOP_K, pick_rows, value_scale
from tracefmt.analyzers.render import write_report

FIGURES = (("activations", "telemetry"), ("activations", "colorful_dimension"), ("gradients", "gradient_rms"), ("gradients", "depth"),
           ("dead", "dead_fraction"))  # fmt: skip


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """Deep traces by layer count, written once per module (the 400-layer one serves two tests)."""
    made = {}

    def get(layers: int):
        if layers not in made:
            made[layers] = write_deep_trace(tmp_path_factory.mktemp("deep") / f"deep{layers}.trace", layers, steps=5)
        return made[layers]

    return get


def _legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def test_scale_helpers():
    assert (
        value_scale([1e-3, 1.0, 10.0]) == "log" and value_scale([-1e3, 1e-2, 5.0]) == "symlog" and value_scale([0.5, 2.0, 0.0]) == "linear"
    )
    keep, rest = pick_rows([0.1, 0.9, np.nan, 0.5, 0.2], 3)
    assert keep == [1, 3] and rest == [0, 2, 4]


@pytest.mark.parametrize("layers", [20, 100, 400])
def test_figures_are_labelled_bounded_and_log_scaled(layers, deep):
    trace = deep(layers)
    report = ta.run(trace, names=["activations", "dead", "gradients"])
    figs = {(a, f): report.results[a].figure(f) for a, f in FIGURES}
    for fig in figs.values():
        w, h = fig.get_size_inches()
        assert w <= 16 and h <= 14, (w, h)  # bounded, whatever the depth
    # Telemetry: the std panel is on a log scale (the blow-up spans six decades), labelled, top-k plus the rest.
    ax_m, ax_s = figs[("activations", "telemetry")].axes[:2]
    assert ax_s.get_yscale() == "log"
    texts = _legend_texts(ax_m)
    assert texts and len(texts) <= TOP_K + 2
    if layers > TOP_K + 1:
        assert any(t.startswith(f"other {layers - TOP_K} layers") for t in texts)
    blow = f"blocks.{(layers - 2) // 2}.fc"
    assert any(blow in t for t in texts)  # the exploding layer is among the drawn ones
    # Gradient RMS: always a legend; never more than top-k lines plus the summary.
    rms = figs[("gradients", "gradient_rms")].axes[0]
    assert rms.get_yscale() == "log" and 0 < len(_legend_texts(rms)) <= TOP_K + 2
    # Depth: the zero-gradient layer is shown (log axes cannot draw a 0 bar) and labelled.
    depth = figs[("gradients", "depth")].axes[0]
    assert any("exactly 0" in t for t in _legend_texts(depth))
    labels = [t.get_text() for t in depth.get_xticklabels()]
    assert f"blocks.{ZERO_GRAD // 2}.fc" in labels and len(labels) <= 52
    # Dead fraction: the dead layer is a row; at most 40 rows, the rest summarised.
    dead_ax = figs[("dead", "dead_fraction")].axes[0]
    rows = [t.get_text() for t in dead_ax.get_yticklabels()]
    assert f"blocks.{DEAD // 2}.act" in rows and len(rows) <= 40
    assert (layers > 40) == any(r.startswith("other ") for r in rows)
    # Colorful dimension: zero is labelled 0; a subset is said to be one.
    cd = figs[("activations", "colorful_dimension")]
    assert all("0" in [t.get_text() for t in ax.get_yticklabels()] for ax in cd.axes if ax.get_visible() and ax.images)
    assert (layers > 16) == (f"of {layers} layers" in cd._suptitle.get_text())
    if layers == 400:  # drawing costs CPU; the largest case is the one that could fail
        for fig in figs.values():
            fig.savefig(io.BytesIO(), format="png", dpi=60)


def test_single_step_activation_plot_is_not_empty(tmp_path):
    trace = write_deep_trace(tmp_path / "one.trace", 6, steps=1)
    fig = ta.run(trace, names=["activations"]).results["activations"].figure("telemetry")
    lines = [ln for ln in fig.axes[1].get_lines() if len(ln.get_xdata())]
    assert lines and all(ln.get_marker() == "o" for ln in lines)


@needs_chromium
@pytest.mark.slow
def test_400_layer_report_displays_in_chromium(tmp_path, deep):
    from PIL import Image

    trace = deep(400)
    info = write_report(trace, tmp_path / "report.html", analyzers=["activations", "dead", "gradients", "loss"])
    for key, png in info.images.items():
        w, h = Image.open(io.BytesIO(png)).size
        assert w <= 2000 and h <= 2000, (key, w, h)
    assert "detours" not in " ".join(info.figures)
    status, console = page_status(info.path, tmp_path)
    assert status["data-errors"] == "0" and status["data-broken-images"] == "0", (status, console)
    assert int(status["data-images"]) == len(info.images) and int(status["data-svgs"]) >= 1
    shot = screenshot(info.path, tmp_path, height=3000)
    assert (shot.std(axis=(0, 1)) > 10).all()  # drawn content, not a blank page


def test_layout_choice_counts_edges_and_never_ran_modules_are_not_drawn(tmp_path):
    import tracefmt
    from tracefmt.analyzers.render import drawn_node_ids, render_graph
    from tracefmt.analyzers.render.graph import LARGE_GRAPH

    small = render_graph(write_deep_trace(tmp_path / "a.trace", 100, steps=1))
    assert not small.info.large
    # 320 drawn nodes (fewer than LARGE_GRAPH) with 319 edges: nodes + edges decide.
    big = render_graph(write_deep_trace(tmp_path / "b.trace", 320, steps=1))
    assert big.info.drawn < LARGE_GRAPH < big.info.drawn + 319 and big.info.large
    # A module that never ran (order null, no edge) next to modules that did is left out.
    path = write_deep_trace(tmp_path / "c.trace", 6, steps=1)
    rows = tracefmt.open(path).nodes.to_pylist()
    rows.append({**rows[1], "node_id": 99, "name": "unused.head", "scope": "unused", "inputs": [], "outputs": [], "order": None})
    with tracefmt.TraceWriter(path, mode="append") as w:
        w.write_nodes(rows)
    drawn = drawn_node_ids(render_graph(path).source)
    assert "n99" not in drawn and "n1" in drawn
