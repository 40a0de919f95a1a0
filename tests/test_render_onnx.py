"""Rendering ONNX Runtime traces: every model of onnx's backend/test/data/light/ folder.

Each model's graph is traced by the ONNX Runtime adapter (its nodes table; no inference for
the large ones, which costs minutes and adds nothing to the drawing) and drawn with the
real ``dot``: the drawing has exactly one Graphviz node per trace node. One small model is
also run on an input, so its drawing carries values.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

import tracefmt
from tracefmt.adapters.onnxruntime import load_graph, random_feed, trace_onnx
from tracefmt.analyzers.render import LARGE_GRAPH, drawn_node_ids, render_graph, save

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(LIGHT.glob("light_*.onnx"))


def svg_node_titles(svg: str) -> list[str]:
    return re.findall(r'<g id="[^"]*" class="node">\s*<title>([^<]*)</title>', svg)


def test_the_light_folder_is_there():
    assert len(MODELS) == 9, f"expected the 9 light models in {LIGHT}"


@pytest.mark.parametrize("model", MODELS, ids=[m.stem for m in MODELS])
def test_light_model_renders_every_node(model, tmp_path):
    path = trace_onnx(model, [], tmp_path / f"{model.stem}.trace")
    trace = tracefmt.open(path)
    n_nodes = trace.nodes.num_rows
    assert n_nodes == len(onnx.load(str(model), load_external_data=False).graph.node)
    g = render_graph(trace, metric="none")
    assert len(drawn_node_ids(g.source)) == n_nodes
    n_edges = len({(a, b) for a, b, _ in trace.edges() if a != b})
    assert g.info.large == (n_nodes + n_edges > LARGE_GRAPH)  # the layout's cost follows nodes and edges
    svg = save(g, tmp_path / "g.svg").read_text()
    titles = [t for t in svg_node_titles(svg) if t != "legend"]
    assert len(titles) == n_nodes and len(set(titles)) == n_nodes
    # Edges follow the tensors: every non-first node of these feed-forward graphs has one in.
    assert svg.count('class="edge"') >= n_nodes - 1


def test_onnx_trace_with_values_is_coloured(tmp_path):
    model = LIGHT / "light_squeezenet.onnx"
    path = trace_onnx(model, random_feed(load_graph(model)), tmp_path / "sq.trace")
    trace = tracefmt.open(path)
    g = render_graph(trace, metric="std")
    ov = g.info.overlay
    assert ov.phase.value == "infer" and ov.step == 0
    assert len(ov.values) == trace.nodes.num_rows
    assert g.info.scale is not None and g.info.scale.family == "magnitude"
    # Every node's fill comes from the scale (none is left grey for lack of data).
    assert "dashed" not in g.source
    # Exact zeros come from the rectifiers, not from the convolutions feeding them.
    dead = render_graph(trace, metric="dead_fraction").info.overlay.values
    ops = dict(zip((f"n{n}" for n in trace.nodes.column("node_id").to_pylist()), trace.nodes.column("op_type").to_pylist()))
    assert max(v for k, v in dead.items() if ops[k] == "Relu") > 0.1
    assert max(v for k, v in dead.items() if ops[k] == "Conv") < 0.01
