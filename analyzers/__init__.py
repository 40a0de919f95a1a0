"""Consumers of traces: the analyzer plugins, the pipeline, rendering and reports.

Analyzers need nothing but a conforming trace: they never import torch or onnx. Every
analyzer, built-in or third-party, is registered in the entry-point group
``tracefmt.analyzers`` and imported only when it is used.

Example:
    >>> import tracefmt.analyzers as ta
    >>> report = ta.run("run.trace", names=["dead", "gradients"], params={"dead.threshold": 0.95})
    >>> report.findings            # pyarrow.Table, schema tracefmt.schema.FINDINGS
    >>> report.results["dead"].figure("dead_fraction")
"""

from .base import Analyzer, AnalyzerResult, Needs, NotApplicable, Param, RecordConsumer, StreamingAnalyzer
from .pipeline import Report, Skipped, run
from .registry import GROUP, PluginLoadError, entries, get, names, refresh

__all__ = [
    "run",
    "Report",
    "Skipped",
    "Analyzer",
    "StreamingAnalyzer",
    "RecordConsumer",
    "AnalyzerResult",
    "Needs",
    "NotApplicable",
    "Param",
    "GROUP",
    "PluginLoadError",
    "entries",
    "get",
    "names",
    "refresh",
]
