"""``tracefmt render``: draw a trace's computation graph coloured by a metric."""

from __future__ import annotations

import argparse
import sys

from ._output import fmt_value, number_at_least
from ._paths import check_output_file

_RUN_ANALYZERS = "__run__"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``render`` command."""
    from ..enums import Kind, Phase

    metrics = ["dead_fraction", "nonfinite", "std", "mean", "abs_mean", "l2", "min", "max", "diff_error", "none"]
    p = subparsers.add_parser(
        "render",
        help="draw the computation graph coloured by a metric (Graphviz)",
        description=(
            "Draw the trace's nodes as a Graphviz graph: fill colour = the chosen metric at one step (with a legend), "
            "label = name, op type, output shape and value, border = most severe finding, magenta double border = NaN/Inf. "
            "Module hierarchy drawn as clusters; --depth N collapses deeper ones."
        ),
    )
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file (.svg, .png, .pdf or .dot)")
    p.add_argument(
        "--metric", choices=metrics, default=None, help="what the fill shows (default: dead_fraction; diff_error with --compare)"
    )
    p.add_argument(
        "--kind", choices=[k.value for k in Kind], default=None, help="record kind the metric is computed from (default: activation)"
    )
    p.add_argument("--phase", choices=[ph.value for ph in Phase], default=None, help="phase (default: train if present)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--step", type=number_at_least(0, integer=True), default=None, help="step to show")
    when.add_argument("--last", action="store_true", help="show the last step with records (the default)")
    p.add_argument("--format", choices=["svg", "png", "pdf", "dot"], default=None, help="output format (default: from the file suffix)")
    p.add_argument("--depth", type=number_at_least(0, integer=True), default=None, metavar="N", help="collapse modules nested deeper than N levels into single nodes")
    p.add_argument(
        "--findings", nargs="?", const=_RUN_ANALYZERS, default=None, metavar="FILE",
        help="mark findings: without FILE run the analyzers now; with FILE read a findings Arrow file "
        "(default: the trace's own findings/ table, if any)",
    )  # fmt: skip
    p.add_argument("--no-findings", action="store_true", help="mark no findings")
    p.add_argument("--compare", metavar="TRACE2", default=None, help="diff against TRACE2 and colour nodes by the diff error")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--layout", choices=["auto", "full", "fast"], default="auto", help="auto: cheaper layout for large graphs (default)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Render ``args.trace`` to ``args.output``."""
    import tracefmt
    from tracefmt.analyzers.render import describe, render_graph, save
    from tracefmt.analyzers.render.graph import read_findings_file

    check_output_file(args.output, overwrite=args.overwrite)
    trace = tracefmt.open(args.trace)
    findings = None
    if args.no_findings:
        findings = False
    elif args.findings == _RUN_ANALYZERS:
        from tracefmt import analyzers

        findings = analyzers.run(trace).findings
    elif args.findings is not None:
        findings = read_findings_file(args.findings)
    metric = args.metric
    if args.compare is not None:
        from tracefmt.analyzers.diff import diff_traces

        diff = diff_traces(trace, tracefmt.open(args.compare))
        findings = diff.findings
        metric = metric or "diff_error"
    graph = render_graph(
        trace, metric=metric or "dead_fraction", kind=args.kind, phase=args.phase,
        step=args.step, depth=args.depth, findings=findings, layout=args.layout,
    )  # fmt: skip
    path = save(graph, args.output, format=args.format)
    d = describe(graph)
    where = f"{d['phase']} step {d['step']}" if d["step"] is not None else "no records"
    took = getattr(graph, "layout_seconds", None)
    sys.stdout.write(
        f"wrote {path}: {d['nodes_drawn']} nodes ({d['clusters_collapsed']} collapsed clusters), "
        f"{d['metric']} of {d['kind']} at {where}, range {fmt_value(d['value_min'])}..{fmt_value(d['value_max'])}, "
        f"{d['nonfinite_nodes']} NaN/Inf node(s), {d['marked_nodes']} node(s) with findings"
        + (f", dot {took:.2f} s" if took is not None else "")
        + "\n"
    )
    return 0
