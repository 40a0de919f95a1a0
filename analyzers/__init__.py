"""Consumers of traces: the analyzer plugins, the pipeline, rendering and reports.

Analyzers need nothing but a conforming trace: they never import torch or onnx.
"""
