"""The state table: the Viterbi state of every checkpoint of every run (spec/DYNAMICS.md 'Outputs').

Defined once here with the format's own :class:`tracefmt.schema.TableDef`; the column
table in spec/DYNAMICS.md is generated from it and a test keeps the two equal. Written
into each trace as ``dynamics/states.arrow`` (that run's rows) beside ``dynamics/model.json``
(the fitted model), or as one file for all runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from tracefmt.schema import Column, TableDef

__all__ = ["STATES", "STATES_LOCATION", "MODEL_LOCATION", "states_table", "write_table", "write_model", "read_states"]

STATES_LOCATION = "dynamics/states.arrow"
MODEL_LOCATION = "dynamics/model.json"

STATES = TableDef(
    name="dynamics_states",
    location=STATES_LOCATION,
    doc="Viterbi state of every checkpoint of every run, from the dynamics analyzer's selected HMM.",
    key=("run_id", "step"),
    columns=(
        Column("run_id", pa.string(), False, "The run (manifest run_id of its trace)."),
        Column("step", pa.int64(), False, "Checkpoint step (a step with weight records).", "step"),
        Column("epoch", pa.int32(), True, "Epoch of the checkpoint if the scalars table gives it.", "epoch"),
        Column("state", pa.int32(), False, "Viterbi state, 0..K-1, numbered by mean first-visit time (0 comes first)."),
        Column("posterior", pa.float64(), False, "Posterior probability of that state at the checkpoint (forward-backward)."),
        Column("heldout", pa.bool_(), False, "True if the run was held out of fitting (used to choose among restarts)."),
    ),
)


def states_table(rows: dict[str, list[Any]], *, n_states: int, features: tuple[str, ...]) -> pa.Table:
    """Build the state table from column lists, with K and the features in its metadata."""
    table = pa.table({c.name: pa.array(rows[c.name], c.type) for c in STATES.columns}, schema=STATES.schema)
    meta = dict(table.schema.metadata or {})
    meta.update({b"tracefmt.dynamics.n_states": str(n_states).encode(), b"tracefmt.dynamics.features": ",".join(features).encode()})
    return table.replace_schema_metadata(meta)


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write an Arrow IPC file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as f, ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    tmp.replace(path)
    return path


def write_model(model: dict[str, Any], path: str | Path) -> Path:
    """Write the fitted model description as JSON (arrays as lists), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(model, indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)) + "\n")
    tmp.replace(path)
    return path


def read_states(path: str | Path) -> pa.Table:
    """Read a state table from a trace directory (``dynamics/states.arrow``) or a file."""
    p = Path(path)
    if p.is_dir():
        p = p / STATES_LOCATION
    with pa.memory_map(str(p)) as src:
        return ipc.open_file(src).read_all()
