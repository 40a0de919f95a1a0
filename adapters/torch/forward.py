"""Trace a single evaluation forward pass (used to compare PyTorch with ONNX Runtime).

Tracing leaves outputs as they are untraced, with one stated exception: modules that
refuse their fused fast path whenever a hook is attached (``nn.TransformerEncoderLayer``)
run their unfused path, whose output may differ by float rounding. Such modules are
listed in the manifest's metadata under ``fast_path_off``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph import HOOKS_BLOCK_FAST_PATH
from .tracer import TorchTracer

__all__ = ["trace_forward"]


def trace_forward(model: nn.Module, inputs: Any, path: str | Path, **options: Any) -> Any:
    """Run one forward pass in eval mode under ``torch.no_grad()`` and write its trace.

    Records activations (phase 'eval', step 0) of every traced module; gradients and
    weight kinds are off unless asked for. ``model.training`` is restored afterwards.
    Outputs equal the untraced ones (``nn.MultiheadAttention`` keeps its fused path)
    except for the modules the manifest lists under ``fast_path_off`` (see module doc).

    Args:
        model: The module.
        inputs: A tensor, a tuple of positional tensors, or a mapping of keyword tensors.
        path: The trace directory to create.
        **options: Any :class:`TorchTracer` option (e.g. ``raw='*'`` for exact diffs).

    Returns:
        The model's output.
    """
    opts: dict[str, Any] = {"phase": "eval", "gradients": False, "weights": False, "weight_grads": False}
    opts.update(options)
    blocked = [name for name, m in model.named_modules() if isinstance(m, HOOKS_BLOCK_FAST_PATH)]
    if blocked:
        note = {"modules": blocked, "reason": "forward hooks switch off the fused eval fast path of these modules; their "
                "unfused path may differ from an untraced run by float rounding"}  # fmt: skip
        opts["metadata"] = {**(opts.get("metadata") or {}), "fast_path_off": note}
    was_training = model.training
    model.eval()
    try:
        with TorchTracer(model, path, **opts), torch.no_grad():
            if isinstance(inputs, Mapping):
                return model(**inputs)
            if isinstance(inputs, tuple):
                return model(*inputs)
            return model(inputs)
    finally:
        model.train(was_training)
