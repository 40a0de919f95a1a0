"""Shared fixtures (kept minimal: area-specific helpers live in the area's own test files)."""

from __future__ import annotations

import os
from pathlib import Path

# pytest-xdist runs one worker per core: one intra-op thread each avoids oversubscription
# (set before any test module imports torch, which reads it once).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

import tracefmt
from tracefmt.stats import channel_stats, matrix_stats, tensor_stats

TINY_NODES = [
    dict(node_id=0, name="", scope="", op_type="Net", parent=None, container=True, inputs=[], outputs=[], param_count=0, order=0),
    dict(node_id=1, name="fc1", scope="fc1", op_type="Linear", parent=0, container=False, inputs=["x"], outputs=["h"], param_count=40, order=1),
    dict(node_id=2, name="relu", scope="relu", op_type="ReLU", parent=0, container=False, inputs=["h"], outputs=["a"], param_count=0, order=2),
    dict(node_id=3, name="fc2", scope="fc2", op_type="Linear", parent=0, container=False, inputs=["a"], outputs=["y"], param_count=9, order=3),
]


def write_tiny_trace(path: Path, *, steps: int = 4, seed: int = 0, **writer_options) -> Path:
    """A small trace of a 2-layer MLP written with TraceWriter and the reference statistics.

    Segments are IPC files (``segment_format='arrow'``) unless ``options`` says otherwise:
    the tests that cut or rewrite segment bytes work on the IPC framing.
    """
    writer_options.setdefault("options", tracefmt.WriterOptions(segment_format="arrow"))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    with tracefmt.TraceWriter(path, model="tiny-mlp", producer={"adapter": "tests"}, **writer_options) as tw:
        tw.write_nodes(TINY_NODES)
        for step in range(steps):
            x = rng.standard_normal((4, 5)).astype(np.float32)
            h = x @ w.T
            a = np.maximum(h, 0)
            rows = []
            for seq, (nid, t) in enumerate([(1, h), (2, a), (3, a[:, :3])]):
                rows.append(dict(step=step, phase="train", node_id=nid, kind="activation", slot="0", call=0, seq=seq,
                                 **tensor_stats(t), **(channel_stats(t) or {})))  # fmt: skip
            rows.append(dict(step=step, phase="train", node_id=1, kind="weight", slot="weight", call=0, seq=3, **tensor_stats(w), **(matrix_stats(w) or {})))
            tw.write_records(rows)
            tw.log_scalar("loss", 1.0 / (step + 1), step=step)
    return path


@pytest.fixture
def tiny_trace(tmp_path: Path) -> Path:
    """Path of a freshly written, complete 4-step trace of a 2-layer MLP (16 records)."""
    return write_tiny_trace(tmp_path / "tiny.trace")
