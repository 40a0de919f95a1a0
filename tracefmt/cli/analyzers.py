"""``tracefmt analyzers``: list the registered analyzers, what they need and their parameters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import EXIT_OK
from ._output import add_format_option, emit_json, fmt_value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyzers`` command."""
    p = subparsers.add_parser(
        "analyzers",
        help="list the registered analyzers and their parameters",
        description="List every analyzer registered in the entry-point group 'tracefmt.analyzers': description, needs and parameters with defaults.",
    )
    add_format_option(p)
    p.set_defaults(run=run)


def describe() -> list[dict[str, Any]]:
    """One dict per registered analyzer (name, source, description, needs, params or load error)."""
    from ..analyzers import registry

    out = []
    for name, entry in registry.entries().items():
        row: dict[str, Any] = {"name": name, "target": entry.target, "distribution": entry.distribution}
        try:
            cls = entry.load()
        except registry.PluginLoadError as exc:
            row["error"] = str(exc)
            out.append(row)
            continue
        n = cls.needs
        row.update(
            description=cls.description,
            multi_run=bool(cls.multi_run),
            needs={
                "tables": list(n.tables),
                "kinds": list(n.kinds),
                "any_kind": n.any_kind,
                "columns": list(n.columns),
                "scalars": list(n.scalars),
            },
            params=[
                {"name": p.name, "default": list(p.default) if isinstance(p.default, tuple) else p.default, "help": p.help,
                 "range": p.range_text().removeprefix("allowed: ") if getattr(p, "low", None) is not None or getattr(p, "high", None) is not None else None}
                for p in cls.params
            ],
        )
        out.append(row)
    return out


def _needs_text(needs: dict[str, Any]) -> str:
    parts = [f"tables {', '.join(needs['tables'])}"] if needs["tables"] else []
    if needs["kinds"]:
        parts.append(f"kinds {(' or ' if needs['any_kind'] else ', ').join(needs['kinds'])}")
    if needs["columns"]:
        parts.append(f"columns {', '.join(needs['columns'])}")
    if needs["scalars"]:
        parts.append(f"scalars {' or '.join(needs['scalars'])}")
    return "; ".join(parts) or "nothing"


def run(args: argparse.Namespace) -> int:
    """Print the registered analyzers."""
    rows = describe()
    if args.format == "json":
        emit_json(rows)
        return EXIT_OK
    out = sys.stdout
    for row in rows:
        if "error" in row:
            out.write(f"{row['name']}  (cannot be loaded: {row['error']})\n\n")
            continue
        multi = "  [multi-run]" if row["multi_run"] else ""
        out.write(
            f"{row['name']}{multi}  ({row['distribution'] or row['target']})\n  {row['description']}\n  needs: {_needs_text(row['needs'])}\n"
        )
        for p in row["params"]:
            default = ",".join(map(str, p["default"])) if isinstance(p["default"], list) else fmt_value(p["default"])
            bounds = f" [{p['range']}]" if p.get("range") else ""
            out.write(f"    {row['name']}.{p['name']} = {default}{bounds}    {p['help']}\n")
        out.write("\n")
    return EXIT_OK
