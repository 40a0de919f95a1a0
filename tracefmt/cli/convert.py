"""``tracefmt import FORMAT SRC -o TRACE`` and ``tracefmt export FORMAT TRACE DEST``.

The only format so far is ``tensorboard`` (:mod:`tracefmt.adapters.tensorboard`). Exit
codes: 0 written; 2 bad usage, an unreadable log or trace, or a missing package.
"""

from __future__ import annotations

import argparse
import sys

from . import EXIT_FOUND, EXIT_OK
from ._output import add_format_option, emit_json, print_table

FORMATS = ("tensorboard",)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import`` and ``export`` commands."""
    p = subparsers.add_parser(
        "import",
        help="convert another tool's logs to a trace (TensorBoard event files)",
        description="Read a TensorBoard log directory with TensorBoard's own event reader and write a trace: "
        "scalars, histograms (bucket limits kept exactly) and the graph where present.",
    )
    p.add_argument("source_format", choices=FORMATS, metavar="FORMAT", help="format of the logs: tensorboard")
    p.add_argument("source", metavar="LOGDIR", help="the log directory (one run, or a directory of runs with --run)")
    p.add_argument("-o", "--out", required=True, metavar="TRACE", help="trace directory to write")
    p.add_argument("--run", dest="run_name", default=None, help="the run below LOGDIR when it holds several")
    p.add_argument("--overwrite", action="store_true", help="replace an existing trace at --out")
    add_format_option(p)
    p.set_defaults(run=_import)

    q = subparsers.add_parser(
        "export",
        help="write a trace as another tool's logs (TensorBoard event files)",
        description="Write a trace's scalars, per-layer histograms and statistic series as TensorBoard event files.",
    )
    q.add_argument("target_format", choices=FORMATS, metavar="FORMAT", help="format to write: tensorboard")
    q.add_argument("trace", metavar="TRACE", help="trace directory")
    q.add_argument("dest", metavar="LOGDIR", help="log directory to write (one TensorBoard run)")
    q.add_argument("--rank", type=int, default=0, help="rank to export (default: 0)")
    q.add_argument("--no-histograms", action="store_true", help="export statistic series and scalars only")
    q.add_argument("--metrics", default=None, metavar="M,M", help="statistics exported as series (default: all a record has)")
    add_format_option(q)
    q.set_defaults(run=_export)


def _report(args: argparse.Namespace, summary: dict) -> int:
    if args.format == "json":
        emit_json(summary)
    else:
        print_table([summary], list(summary), max_width=80)
        sys.stdout.flush()
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    from .. import open as open_trace
    from ..adapters.tensorboard import import_tensorboard

    path = import_tensorboard(args.source, args.out, run=args.run_name, mode="overwrite" if args.overwrite else "create")
    t = open_trace(path)
    scalars = t.scalars
    code = _report(args, {"trace": str(path), "nodes": t.nodes.num_rows, "records": t.records.count_rows(), "scalars": scalars.num_rows,
                          "scalar series": len(set(scalars.column("name").to_pylist()))})  # fmt: skip
    damaged = (t.manifest.get("metadata") or {}).get("tensorboard_damaged") or []
    for note in damaged:
        sys.stderr.write(f"tracefmt import: warning: {note}: TensorBoard stopped reading this event file there; later events were not imported\n")
    return EXIT_FOUND if damaged and code == EXIT_OK else code


def _export(args: argparse.Namespace) -> int:
    from ..adapters.tensorboard import export_tensorboard
    from ..adapters.tensorboard.tags import METRICS

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else METRICS
    path = export_tensorboard(args.trace, args.dest, metrics=metrics, histograms=not args.no_histograms, rank=args.rank)
    files = sorted(p.name for p in path.glob("events.out.tfevents.*"))
    return _report(args, {"logdir": str(path), "event files": len(files), "view with": f"tensorboard --logdir {path}"})
