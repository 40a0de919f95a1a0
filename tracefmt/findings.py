"""Findings: what analyzers report (spec table 'findings').

A finding is one row: analyzer, code, severity, node, step range, metric, value,
threshold and a one-sentence message. Analyzers build :class:`Finding` objects; the
pipeline turns them into the Arrow table defined once in :mod:`tracefmt.schema`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa

from ._conform import conform_table
from .enums import Severity, coerce
from .schema import FINDINGS

__all__ = ["Finding", "findings_table", "sort_findings", "write_findings", "worst_severity"]


@dataclass(frozen=True)
class Finding:
    """One analyzer finding (a row of the findings table)."""

    analyzer: str
    code: str
    severity: Severity
    message: str
    node_id: int | None = None
    node: str | None = None
    step_first: int | None = None
    step_last: int | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", coerce(Severity, self.severity, what="severity"))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Finding:
        """The finding of one findings-table row; columns the class does not hold (``rank``,
        ``run_id``, columns of a newer minor version) are ignored.
        """
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})

    def as_row(self) -> dict[str, Any]:
        """The finding as a dict keyed by findings-table column names."""
        row = asdict(self)
        row["severity"] = self.severity.value
        for k in ("value", "threshold"):
            if row[k] is not None:
                row[k] = float(row[k])
        for k in ("node_id", "step_first", "step_last"):
            if row[k] is not None:
                row[k] = int(row[k])
        return row


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by analyzer, first step and node."""
    return sorted(
        findings,
        key=lambda f: (-f.severity.rank, f.analyzer, f.step_first if f.step_first is not None else -1, f.node or ""),
    )


def findings_table(findings: list[Finding]) -> pa.Table:
    """Findings as an Arrow table with the spec's schema, most severe first."""
    rows = [f.as_row() for f in sort_findings(findings)]
    return pa.Table.from_pylist(rows, schema=FINDINGS.schema) if rows else FINDINGS.schema.empty_table()


def worst_severity(findings: list[Finding]) -> Severity | None:
    """The most serious severity present, or None for no findings."""
    return max((f.severity for f in findings), key=lambda s: s.rank, default=None)


def write_findings(trace_dir: str | Path, table: pa.Table, *, name: str = "findings") -> Path:
    """Write a findings table into ``<trace>/findings/<name>.parquet`` (hidden temporary, then renamed).

    Every row gets the trace's ``run_id`` (when the manifest is readable), so findings of
    many runs read as one table.
    """
    from .manifest import read_manifest
    from .rolling import WriterOptions, repeated_string, write_closed

    out_dir = Path(trace_dir) / "findings"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = conform_table(table, FINDINGS.schema, where="findings")
    try:
        run_id = str(read_manifest(Path(trace_dir)).get("run_id") or "") or None
    except (OSError, ValueError):
        run_id = None
    if run_id is not None:
        table = table.set_column(
            table.schema.get_field_index("run_id"), FINDINGS.schema.field("run_id"), repeated_string(run_id, table.num_rows)
        )
    path = write_closed(table, out_dir, f"{name}.parquet", WriterOptions())
    (out_dir / f"{name}.arrow").unlink(missing_ok=True)  # the same analysis written before format 1.1
    return path
