"""Producers of traces: one sub-package per framework (``torch``, ``onnxruntime``).

Each adapter depends on tracefmt's core and its own framework only, and never on the
analyzers.
"""
