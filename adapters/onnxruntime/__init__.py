"""ONNX Runtime adapter: trace every intermediate tensor of an ONNX model.

:func:`trace_onnx` runs a model (a path, preferred, or a ModelProto) on one or more input
batches with ONNX Runtime and writes a trace: the ``nodes`` table from the ONNX graph
(scopes recovered from the PyTorch exporters' naming, so the trace joins a PyTorch trace
of the same model) and one ``activation`` record per node output and step.
"""

from .graph import GraphInfo, load_graph
from .inputs import random_feed, read_array
from .scopes import recover_scopes
from .session import Optimization
from .tracer import ADAPTER_NAME, DEFAULT_CHUNK_OUTPUTS, trace_onnx

__all__ = [
    "trace_onnx",
    "Optimization",
    "DEFAULT_CHUNK_OUTPUTS",
    "ADAPTER_NAME",
    "GraphInfo",
    "load_graph",
    "random_feed",
    "read_array",
    "recover_scopes",
]
