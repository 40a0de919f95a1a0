"""``tracefmt diff A B``: join two traces node by node and report the first divergence.

Exit codes: 0 the traces agree within tolerance; 1 a divergence was found, or the verdict
is inconclusive (too little compared); 2 bad usage or an unreadable trace.
"""

from __future__ import annotations

import argparse
import sys

from . import EXIT_FOUND, EXIT_OK
from ._output import add_format_option, emit_json, number_at_least, print_table

_COLUMNS = ("pos", "key", "call", "a_node", "b_node", "dtype", "error", "metric", "input_error", "status", "match")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``diff`` command."""
    p = subparsers.add_parser(
        "diff",
        help="compare two traces node by node and find the first divergent node",
        description=(
            "Join trace A (under test) and trace B (reference) node by node (by scope, falling back to name and tensor "
            "name) and report the first node whose output is out of tolerance while its inputs agree. Elementwise rule: "
            "|a - b| <= atol + rtol * |b|. Exit 0 agree, 1 divergence found or inconclusive (too little compared), 2 bad input."
        ),
    )
    p.add_argument("a", metavar="A", help="trace under test")
    p.add_argument("b", metavar="B", help="reference trace")
    p.add_argument("--atol", type=number_at_least(0), default=None, help="absolute tolerance (default per dtype: fp32 1e-5, fp16 1e-3, bf16 1e-2)")
    p.add_argument("--rtol", type=number_at_least(0), default=None, help="relative tolerance (default per dtype: fp32 1e-4, fp16 1e-2, bf16 5e-2)")
    p.add_argument("--by", choices=["scope", "name"], default="scope", help="primary join key (default: scope)")
    p.add_argument("--growth", type=number_at_least(1), default=None, help="error amplification that marks a node as an origin (default: 10)")
    p.add_argument("--phase-a", default=None, help="phase of A to compare (default: eval, else infer, else train)")
    p.add_argument("--phase-b", default=None, help="phase of B to compare (same default); naming both allows train vs eval")
    p.add_argument("--limit", type=number_at_least(0, integer=True), default=40, help="rows of the comparison table to print (default: 40; 0 = all)")
    add_format_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Diff ``args.a`` against ``args.b`` and print the result."""
    from ..analyzers.diff import DEFAULT_GROWTH, diff_traces

    result = diff_traces(args.a, args.b, atol=args.atol, rtol=args.rtol, by=args.by, growth=args.growth or DEFAULT_GROWTH,
                         phase_a=args.phase_a, phase_b=args.phase_b)  # fmt: skip
    code = EXIT_OK if result.verdict == "agree" else EXIT_FOUND
    if args.format == "json":
        emit_json(result.to_dict())
        return code
    out = sys.stdout
    rows = [{"pos": i, **c.as_dict()} for i, c in enumerate(result.compared)]
    shown = rows if not args.limit or len(rows) <= args.limit else _window(rows, result, args.limit)
    if shown:
        print_table(shown, _COLUMNS, max_width=48)
    if len(shown) < len(rows):
        out.write(f"({len(rows) - len(shown)} more rows; --limit 0 shows all)\n")
    for side, items in (("A", result.unmatched_a), ("B", result.unmatched_b)):
        if items:
            reasons: dict[str, int] = {}
            for u in items:
                head = u.reason.split(":")[0]
                reasons[head] = reasons.get(head, 0) + 1
            out.write(f"unmatched in {side}: {len(items)} (" + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")\n")
    out.write(_coverage_line(result.coverage) + "\n")
    for note in result.notes:
        out.write(f"note: {note}\n")
    out.write(result.verdict_line() + "\n")
    return code


def _coverage_line(cov: dict) -> str:
    """One line of coverage figures (module vs op, or same granularity)."""
    if cov.get("side"):
        return (f"coverage: leaf modules compared {cov['matched']}/{cov['leaf_modules']} ({cov['matched_fraction']:.0%}); "
                f"with fused/folded/identity modules accounted for {cov['accounted']}/{cov['leaf_modules']} ({cov['accounted_fraction']:.0%}); "
                f"ONNX nodes compared {cov['op_nodes_compared']}/{cov['op_nodes']} ({cov['op_nodes_compared_fraction']:.0%}), "
                f"inside compared modules {cov['op_nodes_covered']}/{cov['op_nodes']} ({cov['op_nodes_covered_fraction']:.0%})")  # fmt: skip
    return (f"coverage: nodes compared A {cov['matched_nodes_a']}/{cov['nodes_a']}, B {cov['matched_nodes_b']}/{cov['nodes_b']} "
            f"({cov['fraction']:.0%})")  # fmt: skip


def _window(rows: list[dict], result, limit: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Rows around the first divergence (or the first rows when there is none)."""
    first = result.first_divergence
    centre = next(
        (r["pos"] for r in rows if first is not None and r["a_node_id"] == first.a_node_id and r["b_node_id"] == first.b_node_id), 0
    )
    start = max(0, min(centre - limit // 2, len(rows) - limit))
    return rows[start : start + limit]
