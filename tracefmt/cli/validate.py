"""``tracefmt validate TRACE``: check a trace against the spec (spec 'Command line').

Exit codes: 0 the trace conforms (warnings allowed), 1 it does not, 2 it cannot be read
at all (no such directory, no or unparseable manifest.json).
"""

from __future__ import annotations

import argparse
import sys

from . import EXIT_FOUND, EXIT_OK
from ._output import add_format_option, emit_json, print_table

_COLUMNS = ("severity", "code", "file", "table", "column", "row", "message")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``validate`` command."""
    p = subparsers.add_parser(
        "validate",
        help="check a trace against the spec",
        description="Check a trace against the spec and list every problem (exit 0 valid, 1 invalid, 2 unreadable).",
    )
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    add_format_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate ``args.trace`` and print the report."""
    from ..validation import validate_trace

    report = validate_trace(args.trace)
    if args.format == "json":
        emit_json(report.as_dict())
    else:
        if report.problems:
            print_table([p.as_dict() for p in report.problems], _COLUMNS, max_width=100)
        verdict = "valid" if report.valid else "INVALID"
        rows = ", ".join(f"{k} {v}" for k, v in report.rows_checked.items())
        sys.stdout.write(
            f"{report.path}: {verdict} ({len(report.errors)} errors, {len(report.warnings)} warnings; rows checked: {rows or 'none'})\n"
        )
    return EXIT_OK if report.valid else EXIT_FOUND
