"""``tracefmt info TRACE``: what is in a trace (nodes, kinds, steps, ranks, phases, sizes)."""

from __future__ import annotations

import argparse
import sys

from . import EXIT_OK
from ._output import add_format_option, emit_json, human_bytes, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` command."""
    p = subparsers.add_parser(
        "info",
        help="summarise what is in a trace",
        description="Summarise a trace: producer, completeness, nodes, kinds, steps, ranks, phases, row counts and sizes.",
    )
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    add_format_option(p)
    p.set_defaults(run=run)


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def run(args: argparse.Namespace) -> int:
    """Print the summary of ``args.trace``."""
    from ..reduction import native_status
    from ..summary import trace_summary

    s = trace_summary(args.trace)
    if args.format == "json":
        emit_json(s)
        return EXIT_OK
    out = sys.stdout
    prod = s["producer"] if isinstance(s["producer"], dict) else {}
    framework = " ".join(str(prod.get(k, "")) for k in ("framework", "framework_version")).strip()
    rec = s["records"]
    steps = rec["steps"]
    lines = [
        ("trace", s["path"]),
        ("format", f"tracefmt {s['format_version']}"),
        ("run", s["run_id"]),
        ("model", s["model"] or "-"),
        ("producer", f"{prod.get('adapter', '?')}" + (f" ({framework})" if framework else "")),
        ("created", s["created"]),
        ("complete", "yes" if s["complete"] else "NO (a writer is open or was killed)"),
    ]
    if "nodes" in s:
        n = s["nodes"]
        lines.append(("nodes", f"{n['count']} ({n['containers']} containers, {n['edges']} edges, {n['param_count']:,} parameters)"))
    lines += [
        ("records", f"{rec['rows']:,} rows on {rec['nodes_observed']} nodes"),
        ("kinds", _counts(rec["kinds"])),
        ("phases", _counts(rec["phases"])),
        ("steps", f"{steps['count']} ({steps['first']}..{steps['last']})" if steps["count"] else "-"),
        ("ranks", f"{', '.join(map(str, rec['ranks'])) or '-'} (world size {s['world_size']})"),
        ("scalars", f"{s['scalars']['rows']:,} rows: {', '.join(s['scalars']['names']) or '-'}"),
        ("predictions", f"{s['predictions']['rows']:,} rows"),
        ("tensors", f"{s['tensors']['rows']:,} rows"),
    ]
    if s["incomplete_segments"]:
        lines.append(("incomplete", ", ".join(s["incomplete_segments"])))
    lines.append(("statistics", f"this installation computes with the {native_status()}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        out.write(f"{k.ljust(width)}  {v}\n")
    out.write("\n")
    print_table(
        [{"table": k, "files": v["files"], "size": human_bytes(v["bytes"])} for k, v in s["sizes"].items()], ("table", "files", "size")
    )
    return EXIT_OK
