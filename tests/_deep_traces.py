"""A deep chain of N layers written by hand (TraceWriter, no framework), for figure and report scaling.

Layer i is a Linear (even i) or a ReLU (odd i). Known by construction: the ReLU at index 3
is dead (all zeros), the Linear at index 2 has an exactly-zero gradient, and from step 3
on the activations of the last Linear grow 1e3 x per step (a blow-up spanning six decades).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tracefmt
from tracefmt.stats import tensor_stats

DEAD, ZERO_GRAD = 3, 2


def write_deep_trace(path: Path, layers: int, *, steps: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    nodes = [{"node_id": 0, "name": "", "scope": "", "op_type": "Net", "parent": None, "container": True, "inputs": [], "outputs": [],
              "param_count": 0, "order": None}]  # fmt: skip
    for i in range(layers):
        op = "Linear" if i % 2 == 0 else "ReLU"
        nodes.append({"node_id": i + 1, "name": f"blocks.{i // 2}.{'fc' if op == 'Linear' else 'act'}", "scope": f"blocks.{i // 2}", "op_type": op,
                      "parent": 0, "container": False, "inputs": [f"t{i}"], "outputs": [f"t{i + 1}"], "param_count": 80 if op == "Linear" else 0,
                      "order": i})  # fmt: skip
    blow = layers - 2 if layers % 2 == 0 else layers - 1
    with tracefmt.TraceWriter(path, model=f"deep-{layers}", mode="overwrite") as w:
        w.write_nodes(nodes)
        for step in range(steps):
            rows = []
            for i in range(layers):
                x = rng.normal(0, 1, 64)
                if i % 2 == 1:
                    x = np.maximum(x, 0)
                if i == DEAD:
                    x = np.zeros(64)
                if i == blow and step >= 3:
                    x = x * 1e3 ** (step - 2)
                g = np.zeros(64) if i == ZERO_GRAD else rng.normal(0, 1e-2 * (0.97 ** (layers - i)), 64)
                for kind, v in (("activation", x), ("gradient", g)):
                    rows.append({"step": step, "phase": "train", "node_id": i + 1, "kind": kind, "slot": "", "call": 0, **tensor_stats(v)})
            w.write_records(rows)
            w.log_scalar("loss", 2.0 / (step + 1), step=step)
    return path
