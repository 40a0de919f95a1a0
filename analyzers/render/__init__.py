"""Annotated computation graphs and the HTML report.

- :func:`render_graph` draws a trace's nodes with Graphviz, coloured by a metric
  (:class:`Metric`), with the module hierarchy as collapsible clusters, findings marked by
  severity and NaN/Inf nodes standing out; :func:`save` lays it out with ``dot``.
- :func:`build_report` / :func:`write_report` produce one self-contained HTML page with the
  run summary, findings, every applicable analyzer's figures and the annotated graph.

Nothing here imports a framework: any conforming trace (PyTorch, ONNX Runtime, written by
hand) renders.
"""

from .colors import ColorScale, scale_for
from .graph import FORMATS, LARGE_GRAPH, GraphInfo, describe, drawn_node_ids, pipe, render_graph, save, suggested_depth
from .metrics import METRICS, Metric, NodeValues, node_values
from .report import ReportInfo, build_report, run_summary, write_report

__all__ = [
    "render_graph",
    "save",
    "pipe",
    "describe",
    "drawn_node_ids",
    "suggested_depth",
    "GraphInfo",
    "FORMATS",
    "LARGE_GRAPH",
    "Metric",
    "METRICS",
    "NodeValues",
    "node_values",
    "ColorScale",
    "scale_for",
    "build_report",
    "write_report",
    "run_summary",
    "ReportInfo",
]
