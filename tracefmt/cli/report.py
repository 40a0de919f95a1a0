"""``tracefmt report``: one self-contained HTML page about a run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._output import number_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (summary, findings, figures, annotated graph)",
        description=(
            "Run every analyzer that applies and write one HTML file with the run summary, the findings table, "
            "the analyzers' figures and the annotated computation graph; images are inline, nothing is fetched. "
            "Exit 1 when there are error findings."
        ),
    )
    p.add_argument("trace", metavar="TRACE", help="trace directory, or a lake (directory of traces) with --run")
    p.add_argument("--run", default=None, dest="run_id", metavar="RUN_ID", help="the run to report on when TRACE is a lake")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    p.add_argument("--compare", metavar="TRACE2", default=None, help="also diff against TRACE2 and show the divergence")
    p.add_argument("--only", default=None, metavar="A,B", help="run only these analyzers (comma-separated)")
    p.add_argument("--depth", type=number_at_least(0, integer=True), default=None, metavar="N", help="collapse graph modules deeper than N (default: automatic)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the report of ``args.trace`` to ``args.output``."""
    from tracefmt import open as open_trace
    from tracefmt.analyzers.render import write_report
    from tracefmt.lake import is_lake, select_run
    from tracefmt.storage import is_remote

    from ._paths import check_output_file

    check_output_file(args.output, overwrite=args.overwrite)
    only = args.only  # a comma-separated selection; an empty one is refused by the pipeline
    if is_remote(args.trace):
        trace: Any = open_trace(args.trace, run=args.run_id)  # of a remote lake, only that run is copied
    else:
        trace = str(select_run(args.trace, args.run_id)) if is_lake(args.trace) else args.trace
    info = write_report(trace, args.output, compare=args.compare, analyzers=only, depth=args.depth, title=args.title)
    sev = info.findings.column("severity").to_pylist()
    counts = ", ".join(f"{sev.count(s)} {s}" for s in ("error", "warning", "info"))
    sys.stdout.write(
        f"wrote {info.path}: {info.findings.num_rows} finding(s) ({counts}), {len(info.figures)} figure(s), {len(info.graphs)} graph(s)\n"
    )
    for key, err in info.figure_errors.items():
        sys.stderr.write(f"tracefmt report: figure {key} could not be drawn: {err}\n")
    return 1 if "error" in sev else 0
