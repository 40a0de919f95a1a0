"""Annotated computation graphs: a trace's nodes drawn with Graphviz, coloured by a metric.

Every non-container node of the trace becomes one Graphviz node ``n<node_id>`` (or is folded
into its collapsed cluster ``c<index>`` with ``depth``); the module hierarchy becomes nested
clusters; data-flow edges come from :meth:`tracefmt.Trace.edges`. A node's fill shows the
chosen metric on the scale of :mod:`.colors` (legend included), its label shows name, op
type, output shape and the value, its border shows the most severe finding about it, and
a node whose tensor holds NaN or Inf is filled magenta with a double border.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tracefmt.enums import Kind, Phase, Severity, coerce
from tracefmt.errors import MissingDependencyError, UsageError
from tracefmt.findings import Finding, findings_table
from tracefmt.safe_io import write_atomic

from ..escaping import dot_lines, dot_text
from .colors import NO_DATA_FILL, NONFINITE_FILL, SEVERITY_COLORS, ColorScale, format_value, legend_label, scale_for, text_color
from .hierarchy import build_hierarchy
from .metrics import METRICS, Metric, NodeValues, node_values, values_from_findings

if TYPE_CHECKING:
    import graphviz

    from tracefmt import Trace

__all__ = ["render_graph", "save", "pipe", "describe", "suggested_depth", "GraphInfo", "LARGE_GRAPH", "FORMATS", "drawn_node_ids", "read_findings_file"]

#: Above this many drawn nodes plus drawn edges the layout switches to cheaper settings
#: (straight edges, bounded network-simplex and crossing-minimisation passes). dot's
#: crossing minimisation grows with edges and clusters, not nodes alone: densenet121 drawn
#: as 432 nodes and 965 edges took 5-8 minutes with the defaults, 10 s with these settings.
LARGE_GRAPH = 600
#: Output formats of :func:`save`.
FORMATS = ("svg", "png", "pdf", "dot")
_NAME_CHARS = 36


@dataclass
class GraphInfo:
    """What a rendered graph shows (attached to the Digraph as ``graph.info``).

    Attributes:
        overlay: The per-node values and where they come from.
        scale: The colour scale (None for metric ``none`` or no values).
        drawn: Number of Graphviz nodes drawn for trace nodes (legend excluded).
        collapsed: Number of collapsed clusters among them.
        large: True when the cheaper large-graph layout was chosen.
        marked: node_id -> worst severity of its warning and error findings (info
            findings appear in tooltips only).
    """

    overlay: NodeValues
    scale: ColorScale | None
    drawn: int
    collapsed: int
    large: bool
    marked: dict[int, Severity] = field(default_factory=dict)


def _findings_rows(trace: Trace, findings: Any) -> list[dict[str, Any]]:
    if findings is False:
        return []
    if findings is None or findings is True:
        table = trace.findings
        return table.to_pylist() if table is not None else []
    if isinstance(findings, pa.Table):
        return findings.to_pylist()
    if isinstance(findings, Sequence) and all(isinstance(f, Finding) for f in findings):
        return findings_table(list(findings)).to_pylist()
    raise UsageError("findings must be a findings table, a list of Finding, True/None (the trace's own) or False")


def _locate(row: Mapping[str, Any], by_name: Mapping[str, int], ids: set[int]) -> int | None:
    """The node a finding is about: by name first (findings may come from another trace)."""
    name = row.get("node")
    if name and name in by_name:
        return by_name[name]
    nid = row.get("node_id")
    return nid if nid in ids and not name else None


def _lines(lines: list[str], limit: int | None = None) -> Any:
    """Lines joined with DOT's centred line break, as plain text (see :mod:`tracefmt.analyzers.escaping`)."""
    return dot_lines(lines, limit=limit)


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else "…" + name[-(_NAME_CHARS - 1) :]


def _shape_text(shape: list[int] | None) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]" if shape is not None else ""


def read_findings_file(path: str | Path) -> pa.Table:
    """Read a findings Arrow file (IPC file or stream, as ``tracefmt analyze --format arrow`` writes).

    Raises:
        TraceNotFoundError: No such file.
        TraceFormatError: Not Arrow, or a required findings column is missing.
    """
    import pyarrow.ipc as ipc

    from tracefmt.errors import TraceFormatError, TraceNotFoundError
    from tracefmt.schema import FINDINGS

    p = Path(path)
    if not p.is_file():
        raise TraceNotFoundError(f"{p}: no such findings file")
    try:
        table = ipc.open_file(str(p)).read_all()
    except (pa.ArrowInvalid, OSError):
        try:
            table = ipc.open_stream(str(p)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise TraceFormatError(f"{p}: not an Arrow IPC file or stream ({exc})") from None
    missing = [c.name for c in FINDINGS.columns if not c.nullable and c.name not in table.column_names]
    if missing:
        raise TraceFormatError(f"{p}: table 'findings' lacks column(s) {', '.join(missing)}")
    return table


def drawn_node_ids(dot_source: str) -> list[str]:
    """Ids of the trace nodes in a DOT text written by :func:`render_graph` (legend excluded)."""
    import re

    return re.findall(r"^\s*([nc]\d+) \[", dot_source, flags=re.M)


def render_graph(
    trace: Trace | str | Path,
    *,
    metric: Metric | str = Metric.DEAD_FRACTION,
    kind: Kind | str | None = None,
    step: int | str | None = None,
    phase: Phase | str | None = None,
    depth: int | None = None,
    findings: Any = None,
    values: Mapping[int, float] | None = None,
    title: str | None = None,
    legend: bool = True,
    layout: str = "auto",
) -> graphviz.Digraph:
    """Draw the trace's computation graph coloured by a metric.

    Args:
        trace: The trace or its path (PyTorch, ONNX Runtime or any conforming producer).
        metric: What the fill shows (see :class:`Metric`). Defaults to the dead fraction.
        kind: Record kind the metric is computed from. Defaults to ``activation``.
        step: Step number, or None / ``'last'`` for the last step with records.
        phase: Phase. Defaults to train when present, else the first phase present.
        depth: Collapse clusters nested ``depth`` levels deep into single nodes (0 folds
            every top-level module). Defaults to None: nothing collapsed.
        findings: Findings to mark: a findings table or list of :class:`Finding`; None
            (default) marks the trace's own ``findings/`` table if present; False marks none.
        values: node_id -> value overriding the metric (e.g. a diff's per-node error);
            with ``metric='diff_error'`` and no ``values``, the values of the findings are used.
        title: Graph title. Defaults to the model name, metric, kind and step.
        legend: Draw the colour legend. Defaults to True.
        layout: ``'auto'`` (cheaper settings above :data:`LARGE_GRAPH` drawn nodes plus
            edges), ``'full'`` or ``'fast'``. Defaults to ``'auto'``.

    Returns:
        A :class:`graphviz.Digraph`; ``graph.info`` is a :class:`GraphInfo`.

    Raises:
        UsageError: Unknown metric, kind, phase or step, or ``depth`` < 0.
        MissingDependencyError: The ``graphviz`` Python package is missing.
    """
    try:
        import graphviz
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("graphviz", "analyzers", "graph rendering") from None
    import tracefmt

    if not isinstance(trace, tracefmt.Trace):
        trace = tracefmt.open(trace)
    metric = coerce(Metric, metric, what="metric")
    if depth is not None and depth < 0:
        raise UsageError(f"depth must be >= 0, got {depth}")
    if layout not in ("auto", "full", "fast"):
        raise UsageError(f"unknown layout {layout!r}; available: auto, full, fast")
    rows = trace.nodes.to_pylist()
    edges = trace.edges()
    leaves = _ran_leaves(rows, edges)
    hier = build_hierarchy(rows)
    collapsed_keys = {k for k, c in hier.clusters.items() if depth is not None and c.depth == depth}
    cluster_index = {k: i for i, k in enumerate(hier.clusters)}
    drawn_of: dict[int, str] = {}
    for r in leaves:
        key = hier.collapsed_at(r["node_id"], depth)
        drawn_of[r["node_id"]] = f"c{cluster_index[key]}" if key is not None else f"n{r['node_id']}"
    groups = {nid: d for nid, d in drawn_of.items()}
    overlay = node_values(trace, metric=Metric.NONE if metric is Metric.DIFF_ERROR else metric, kind=kind, step=step, phase=phase, groups=groups)
    overlay.metric = metric
    by_name = {r["name"]: r["node_id"] for r in rows}
    ids = set(by_name.values())
    frows = _findings_rows(trace, findings)
    drawn_values: dict[str, float] = dict(overlay.values)
    if values is None and metric is Metric.DIFF_ERROR:
        if not frows:
            raise UsageError("metric 'diff_error' needs the findings of a trace diff (render --compare OTHER, or --findings FILE)")
        values = values_from_findings(pa.Table.from_pylist(frows), node_ids=by_name)
    if values is not None:
        drawn_values = {}
        for nid, v in values.items():
            d = drawn_of.get(int(nid))
            if d is not None:
                drawn_values[d] = v if d not in drawn_values else max(drawn_values[d], v)
    spec = METRICS[metric]
    scale = None
    if metric is not Metric.NONE and drawn_values:
        label = f"{spec.text} ({overlay.kind.value})" if metric is not Metric.DIFF_ERROR else spec.text
        scale = scale_for(spec.family, drawn_values.values(), fixed=spec.fixed, label=label)

    marks: dict[str, list[dict[str, Any]]] = {}
    marked: dict[int, Severity] = {}
    for f in frows:
        nid = _locate(f, by_name, ids)
        if nid is None or nid not in drawn_of:
            continue
        marks.setdefault(drawn_of[nid], []).append(f)
        sev = coerce(Severity, f["severity"], what="severity")
        if sev is not Severity.INFO and (nid not in marked or sev.rank > marked[nid].rank):
            marked[nid] = sev

    n_drawn = len(set(drawn_of.values()))
    drawn_edges: list[tuple[str, str]] = []
    for src, dst, _tensor in edges:
        a, b = drawn_of.get(src), drawn_of.get(dst)
        if a is not None and b is not None and a != b:
            drawn_edges.append((a, b))
    drawn_edges = list(dict.fromkeys(drawn_edges))
    large = layout == "fast" or (layout == "auto" and n_drawn + len(drawn_edges) > LARGE_GRAPH)
    model = trace.manifest.get("model") or (hier.root.label if hier.root else "") or trace.path.name
    if title is None:
        where = f"{overlay.phase.value} step {overlay.step}" if overlay.step is not None else "no records"
        title = f"{model} — {scale.label if scale else 'graph'} — {where}" if metric is not Metric.NONE else f"{model}"
    g = graphviz.Digraph(name="tracefmt", engine="dot")
    g.attr(rankdir="TB", fontname="Helvetica", fontsize="14", label=dot_text(title), labelloc="t", newrank="true", ranksep="0.3", nodesep="0.25")
    if large:
        # Straight edges and bounded optimisation passes: the dot layout of ~2,000 nodes
        # stays at seconds instead of minutes, at the cost of a few more edge crossings.
        g.attr(splines="line", nslimit="2", nslimit1="2", mclimit="0.3", remincross="false")
    g.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="10", margin="0.08,0.04", height="0.3")
    g.attr("edge", color="#555555", arrowsize="0.6")

    def node_attrs(drawn: str, label_lines: list[str], tooltip: list[str]) -> dict[str, str]:
        v = drawn_values.get(drawn)
        nf = overlay.nonfinite.get(drawn)
        attrs: dict[str, str] = {}
        if scale is not None and v is not None:
            label_lines.append(f"{_metric_abbrev(metric)} {format_value(v)}")
            tooltip.append(f"{scale.label}: {format_value(v)}")
        if nf is not None:
            fill = NONFINITE_FILL
            label_lines.append(f"NaN {nf[0]}  Inf {nf[1]}")
            tooltip.append(f"non-finite elements: NaN {nf[0]}, Inf {nf[1]}")
            attrs.update(peripheries="2", penwidth="2.5", color="#000000", fontname="Helvetica-Bold")
        elif scale is not None and v is not None:
            fill = scale.color(v)
        else:
            fill = NO_DATA_FILL
            attrs["style"] = "rounded,filled,dashed" if scale is not None else "rounded,filled"
        found = marks.get(drawn, [])
        tooltip.extend(f"[{f['severity']}] {f['code']}: {f['message']}" for f in found)
        # Info findings (context, e.g. a diff's "within tolerance" on every node) stay in
        # the tooltip; only warnings and errors mark the drawing.
        alarms = [f for f in found if f["severity"] != Severity.INFO.value]
        if alarms:
            worst = max((coerce(Severity, f["severity"]) for f in alarms), key=lambda s: s.rank)
            codes = sorted({f["code"] for f in alarms})
            label_lines.append(f"[{worst.value}] " + ", ".join(codes)[:40])
            if nf is None:
                attrs.update(color=SEVERITY_COLORS[worst], penwidth="4" if worst is Severity.ERROR else "3")
        attrs.update(fillcolor=fill, fontcolor=text_color(fill), label=_lines(label_lines), tooltip=_lines(tooltip, limit=1500))
        return attrs

    leaf_by_drawn: dict[str, list[dict[str, Any]]] = {}
    for r in leaves:
        leaf_by_drawn.setdefault(drawn_of[r["node_id"]], []).append(r)

    def emit_leaf(target: Any, r: dict[str, Any]) -> None:
        nid = r["node_id"]
        lines = [_short(r["name"] or str(nid)), r["op_type"]]
        shape = overlay.shapes.get(f"n{nid}")
        if shape is not None:
            lines.append(_shape_text(shape))
        tip = [f"{r['name']} ({r['op_type']})", f"node_id {nid}", f"scope {r['scope'] or '-'}", f"parameters {r['param_count']}"]
        if shape is not None:
            tip.append(f"output shape {_shape_text(shape)}")
        if r.get("note"):
            tip.append(str(r["note"]))
        target.node(f"n{nid}", **node_attrs(f"n{nid}", lines, tip))

    def emit_collapsed(target: Any, key: str) -> None:
        c = hier.clusters[key]
        drawn = f"c{cluster_index[key]}"
        members = leaf_by_drawn.get(drawn, [])
        lines = [_short(c.label), f"{c.op_type or 'module'} ⊞ {len(members)} nodes"]
        tip = [f"{c.label}: {len(members)} nodes collapsed"]
        attrs = node_attrs(drawn, lines, tip)
        attrs["shape"] = "box3d"
        attrs["style"] = attrs.get("style", "filled").replace("rounded,", "")
        target.node(drawn, **attrs)

    top_leaves = [r for r in leaves if r["node_id"] not in hier.member_of]
    children_leaves: dict[str, list[dict[str, Any]]] = {}
    for r in leaves:
        key = hier.member_of.get(r["node_id"])
        if key is not None:
            children_leaves.setdefault(key, []).append(r)

    def emit_cluster(target: Any, key: str) -> None:
        if key in collapsed_keys:
            emit_collapsed(target, key)
            return
        c = hier.clusters[key]
        with target.subgraph(name=f"cluster_{cluster_index[key]}") as sub:
            sub.attr(label=dot_text(_short(c.label) + (f" ({c.op_type})" if c.op_type else "")), style="rounded", color="#9a9a9a", fontsize="11", fontcolor="#444444")
            for r in children_leaves.get(key, []):
                emit_leaf(sub, r)
            for child in c.children:
                if child in hier.clusters:
                    emit_cluster(sub, child)

    for r in top_leaves:
        emit_leaf(g, r)
    for key, c in hier.clusters.items():
        if c.parent is None:
            emit_cluster(g, key)

    for a, b in drawn_edges:
        g.edge(a, b)

    if legend and (scale is not None or marked or overlay.nonfinite):
        extras = [(NONFINITE_FILL, "NaN / Inf present")]
        if scale is not None:
            extras.append((NO_DATA_FILL, "no record at this step"))
        extras += [(SEVERITY_COLORS[s], f"border: {s.value} finding") for s in (Severity.ERROR, Severity.WARNING)]
        where = f"{overlay.phase.value} step {overlay.step}" if overlay.step is not None else ""
        g.node("legend", label="<" + legend_label(scale, title=(scale.label if scale else "markers") + (f", {where}" if where else ""), extras=extras) + ">", shape="plain", style="")
    g.info = GraphInfo(overlay=overlay, scale=scale, drawn=n_drawn, collapsed=len(collapsed_keys), large=large, marked=marked)  # type: ignore[attr-defined]
    return g


def _ran_leaves(rows: list[dict[str, Any]], edges: list[tuple[int, int, str]]) -> list[dict[str, Any]]:
    """Leaf nodes to draw: those that ran, when the trace knows which did.

    A module that never ran (``order`` null, no edge) has no rank in the data flow; dot
    would put it at the top of its cluster and stretch the cluster to the full height.
    """
    leaves = [r for r in rows if not r["container"]]
    if not any(r.get("order") is not None for r in leaves):
        return leaves
    linked = {n for e in edges for n in e[:2]}
    return [r for r in leaves if r.get("order") is not None or r["node_id"] in linked]


def suggested_depth(trace: Trace, *, max_nodes: int = 250) -> int | None:
    """The deepest collapse depth that keeps at most ``max_nodes`` drawn nodes.

    Returns None (collapse nothing) when the whole graph fits or the trace has no module
    hierarchy to collapse; 0 when even the top-level modules are too many.
    """
    rows = trace.nodes.to_pylist()
    leaves = [r["node_id"] for r in rows if not r["container"]]
    if len(leaves) <= max_nodes:
        return None
    hier = build_hierarchy(rows)
    if not hier.clusters:
        return None
    for depth in range(hier.max_depth, -1, -1):
        drawn = {hier.collapsed_at(n, depth) or n for n in leaves}
        if len(drawn) <= max_nodes:
            return depth
    return 0


def _metric_abbrev(metric: Metric) -> str:
    return {Metric.DEAD_FRACTION: "dead", Metric.NONFINITE: "nonfinite", Metric.ABS_MEAN: "|x|", Metric.DIFF_ERROR: "err"}.get(metric, metric.value)


def save(graph: graphviz.Digraph, path: str | Path, *, format: str | None = None) -> Path:  # noqa: A002 - the CLI option's name
    """Lay out ``graph`` with the ``dot`` program and write it to ``path``.

    Args:
        graph: A graph from :func:`render_graph`.
        path: Output file.
        format: ``svg``, ``png``, ``pdf`` or ``dot`` (the DOT text, no layout). Defaults to
            the file's suffix.

    Returns:
        The path written.

    Raises:
        UsageError: Unknown format.
        MissingDependencyError: The Graphviz ``dot`` program is not installed.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown graph format {fmt!r}; available: {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, graph.source if fmt == "dot" else pipe(graph, fmt))


def pipe(graph: graphviz.Digraph, fmt: str = "svg") -> bytes:
    """Run ``dot`` on ``graph`` and return the rendered bytes (``graph.layout_seconds`` is set)."""
    if shutil.which(graph.engine) is None:
        raise MissingDependencyError("graphviz", "analyzers", f"rendering a graph ({graph.engine!r} program not found; apt-get install graphviz)")
    info = getattr(graph, "info", None)
    if fmt == "png" and info is not None and info.drawn > LARGE_GRAPH:
        # A 2,000-node graph at the default 96 dpi is a bitmap of hundreds of megapixels.
        graph = graph.copy()
        graph.attr(dpi="36")
    t0 = time.perf_counter()
    data = graph.pipe(format=fmt)
    graph.layout_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return data


def describe(graph: graphviz.Digraph) -> dict[str, Any]:
    """A JSON-friendly summary of what a rendered graph shows."""
    info: GraphInfo = graph.info  # type: ignore[attr-defined]
    ov = info.overlay
    finite = [v for v in ov.values.values() if math.isfinite(v)]
    return json.loads(json.dumps({
        "metric": ov.metric.value, "kind": ov.kind.value, "phase": ov.phase.value if ov.phase else None, "step": ov.step,
        "nodes_drawn": info.drawn, "clusters_collapsed": info.collapsed, "large_layout": info.large,
        "nonfinite_nodes": len(ov.nonfinite), "marked_nodes": len(info.marked),
        "value_min": min(finite) if finite else None, "value_max": max(finite) if finite else None,
    }))  # fmt: skip
