"""Hand-written traces for the render and report tests (plain TraceWriter, no framework).

A small residual network whose structure and statistics are known by construction:
``block.relu1`` is dead (all zeros), ``head.fc`` holds NaN at the last step, and the
stored findings mark ``block.relu1`` (error) and ``block.conv2`` (warning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tracefmt
from tracefmt.findings import Finding, findings_table, write_findings
from tracefmt.stats import tensor_stats

# (node_id, name, op_type, parent, container, inputs, outputs)
NODES = [
    (0, "", "Net", None, True, [], []),
    (1, "stem", "Conv2d", 0, False, ["x"], ["t1"]),
    (2, "block", "Block", 0, True, [], []),
    (3, "block.conv1", "Conv2d", 2, False, ["t1"], ["t2"]),
    (4, "block.relu1", "ReLU", 2, False, ["t2"], ["t3"]),
    (5, "block.conv2", "Conv2d", 2, False, ["t3"], ["t4"]),
    (6, "block.add", "add", 2, False, ["t4", "t1"], ["t5"]),
    (7, "head", "Head", 0, True, [], []),
    (8, "head.pool", "AdaptiveAvgPool2d", 7, False, ["t5"], ["t6"]),
    (9, "head.fc", "Linear", 7, False, ["t6"], ["y"]),
]
LEAVES = [n for n in NODES if not n[4]]


def node_rows() -> list[dict]:
    return [
        {"node_id": i, "name": name, "scope": name, "op_type": op, "parent": parent, "container": cont,
         "inputs": ins, "outputs": outs, "param_count": 0, "order": i}
        for i, name, op, parent, cont, ins, outs in NODES
    ]  # fmt: skip


def activation(node_id: int, step: int, rng: np.random.Generator, *, healthy: bool = False) -> np.ndarray:
    shape = (4, 10) if node_id == 9 else (4, 1, 1, 8) if node_id == 8 else (4, 8, 6, 6)
    x = rng.normal(size=shape) * (1.0 + node_id)
    if healthy:
        return x
    if node_id == 4:
        x = np.zeros(shape)
    if node_id == 9 and step == 2:
        x[0, :3] = np.nan
        x[1, 0] = np.inf
    return x


def write_trace(path: Path, *, steps: int = 3, with_findings: bool = True, healthy: bool = False, model: str = "toy-resnet") -> Path:
    """Write the toy trace (activations and gradients, ``steps`` training steps, a loss series).

    ``healthy`` leaves out the dead layer and the NaN (random activations everywhere).
    """
    rng = np.random.default_rng(0)
    with tracefmt.TraceWriter(path, model=model, flush_interval=0, producer={"adapter": "hand-written"}) as w:
        w.write_nodes(node_rows())
        rows = []
        for step in range(steps):
            for seq, (nid, *_rest) in enumerate(LEAVES):
                for kind in ("activation", "gradient"):
                    x = activation(nid, step, rng, healthy=healthy) * (1.0 if kind == "activation" else 1e-3)
                    rows.append({"step": step, "phase": "train", "node_id": nid, "kind": kind, "slot": "0", "call": 0, "seq": seq, **tensor_stats(x)})
            w.log_scalar("loss", 2.0 / (step + 1), step=step)
        w.write_records(rows)
    if with_findings:
        write_findings(path, findings_table(FINDINGS))
    return path


FINDINGS = [
    Finding("handwritten", "dead-layer", "error", "block.relu1 outputs only zeros", node_id=4, node="block.relu1", step_first=0, step_last=2, metric="dead_fraction", value=1.0, threshold=0.9),
    Finding("handwritten", "low-std", "warning", "block.conv2 has a small std", node_id=5, node="block.conv2", step_first=0, step_last=2, metric="std", value=0.1, threshold=0.2),
]
