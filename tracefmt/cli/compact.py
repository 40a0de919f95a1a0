"""``tracefmt compact TRACE``: rewrite segments as sorted Parquet, losslessly (spec 'Compaction')."""

from __future__ import annotations

import argparse
import sys

from . import EXIT_OK
from ._output import add_format_option, emit_json, human_bytes, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compact`` command."""
    p = subparsers.add_parser(
        "compact",
        help="rewrite a trace's segments as sorted Parquet",
        description=(
            "Rewrite each rank's segments of records, scalars and predictions as one Parquet file "
            "sorted by node, kind and step. Row counts are verified before the old segments are removed."
        ),
    )
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("--table", action="append", choices=["records", "scalars", "predictions"], help="compact only this table (repeatable)")
    p.add_argument("--force", action="store_true", help="compact a trace whose writer did not close (only if it is known to be dead)")
    p.add_argument("--compression", default="zstd", help="Parquet codec (default: zstd)")
    add_format_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Compact ``args.trace`` and print what was rewritten."""
    from ..compaction import compact_trace

    tables = tuple(args.table) if args.table else ("records", "scalars", "predictions")
    result = compact_trace(args.trace, tables=tables, force=args.force, compression=args.compression)
    if args.format == "json":
        emit_json(result.as_dict())
        return EXIT_OK
    rows = [
        {"table": p.table, "rank": p.rank, "rows": p.rows, "segments": len(p.segments_replaced), "output": p.output,
         "before": human_bytes(p.bytes_before), "after": human_bytes(p.bytes_after)}
        for p in result.partitions
    ]  # fmt: skip
    if rows:
        print_table(rows, ("table", "rank", "rows", "segments", "output", "before", "after"))
    else:
        sys.stdout.write(f"{result.path}: nothing to compact\n")
    return EXIT_OK
