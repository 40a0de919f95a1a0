"""What is in a trace, at a glance: :func:`trace_summary` (used by ``tracefmt info``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from .segments import NODES_FILES, PARTITIONED, iter_batches
from .trace import Trace
from .trace import open as open_trace

__all__ = ["trace_summary"]


def _count(counter: Counter, column: Any) -> None:
    vc = pc.value_counts(column)
    for value, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        counter[value] += n


def _disk_usage(root: Path) -> dict[str, dict[str, int]]:
    """Bytes and files per table (every file under the table's directory)."""
    out: dict[str, dict[str, int]] = {}
    for name in ("manifest.json", *NODES_FILES):
        if (root / name).is_file():
            out[name.split(".")[0]] = {"files": 1, "bytes": (root / name).stat().st_size}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            files = [p for p in entry.rglob("*") if p.is_file()]
            out[entry.name] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return out


def trace_summary(trace: Trace | str | Path) -> dict[str, Any]:
    """Summarise a trace: manifest facts, nodes, kinds, steps, ranks, phases, row counts, sizes.

    Records are scanned once, a few columns at a time, in bounded memory.

    Args:
        trace: An opened :class:`Trace` or a trace directory.

    Returns:
        A JSON-ready dict (the output of ``tracefmt info --format json``).
    """
    t = trace if isinstance(trace, Trace) else open_trace(trace)
    m = t.manifest
    out: dict[str, Any] = {
        "path": str(t.path),
        "format_version": m.get("format_version"),
        "run_id": m.get("run_id"),
        "model": m.get("model"),
        "created": m.get("created"),
        "complete": bool(m.get("complete", False)),
        "producer": m.get("producer", {}),
        "world_size": m.get("world_size", 1),
    }
    if t.has("nodes"):
        nodes = t.nodes
        containers = int(pc.sum(nodes.column("container")).as_py() or 0)
        out["nodes"] = {
            "count": nodes.num_rows,
            "containers": containers,
            "op_types": dict(Counter(nodes.column("op_type").to_pylist()).most_common()),
            "edges": len(t.edges()),
            "param_count": int(pc.sum(nodes.column("param_count")).as_py() or 0),
        }
    kinds: Counter = Counter()
    phases: Counter = Counter()
    ranks: Counter = Counter()
    observed: set[int] = set()
    steps: set[int] = set()
    rows = 0
    for batch in t.scan("records", columns=["step", "phase", "rank", "node_id", "kind"]):
        rows += batch.num_rows
        _count(kinds, batch.column("kind"))
        _count(phases, batch.column("phase"))
        _count(ranks, batch.column("rank"))
        observed.update(pc.unique(batch.column("node_id")).to_pylist())
        steps.update(pc.unique(batch.column("step")).to_pylist())
    out["records"] = {
        "rows": rows,
        "kinds": dict(sorted(kinds.items())),
        "phases": dict(sorted(phases.items())),
        "ranks": sorted(ranks),
        "rows_per_rank": {str(r): n for r, n in sorted(ranks.items())},
        "steps": {"count": len(steps), "first": min(steps, default=None), "last": max(steps, default=None)},
        "nodes_observed": len(observed),
    }
    scalars = t.scalars
    out["scalars"] = {"rows": scalars.num_rows, "names": sorted(set(scalars.column("name").to_pylist()))}
    out["predictions"] = {"rows": t.predictions.num_rows}
    # Tensor files differ in their values type, so they are counted file by file.
    tensor_rows = sum(b.num_rows for s in t.segments("tensors") if s.readable for b in iter_batches(s, columns=["step"]))
    out["tensors"] = {"rows": tensor_rows, "files": len(t.segments("tensors"))}
    incomplete = [str(s.path.relative_to(t.path)) for name in PARTITIONED for s in t.segments(name) if not s.complete]
    out["incomplete_segments"] = incomplete
    out["sizes"] = _disk_usage(t.path)
    return out
