"""``tracefmt demo``: train, trace, diff, analyze and report, offline, in about a minute."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser(
        "demo",
        help="train a small residual CNN twice (healthy, broken), trace, diff with ONNX Runtime, analyze, report",
        description=(
            "Train a small residual CNN on scikit-learn's digits twice with the PyTorch adapter on: a healthy "
            "configuration and a broken one (a dead ReLU layer by initialisation and a diverging learning rate). "
            "Export the healthy model to ONNX, trace it with ONNX Runtime and diff it against PyTorch. Run every "
            "analyzer and write traces, findings, graphs and one HTML report per run. No network needed."
        ),
    )
    p.add_argument("--out", default="demo-output", metavar="DIR", help="output directory (default: ./demo-output)")
    p.add_argument("--quick", action="store_true", help="fewer samples and epochs (a smoke run; the training-dynamics analyzer may then warn that it has too few checkpoints)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they appear on stderr, only when it is a terminal)")
    p.add_argument("--wide", action="store_true", help="print each finding's message on one line (default: wrapped to the terminal)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from ..demo import run_demo
    from ._paths import check_output_dir

    # The demo replaces its own previous outputs in DIR; a file there is refused.
    check_output_dir(args.out, overwrite=True, contents=())
    run_demo(args.out, quick=args.quick, progress=not args.no_progress, wide=args.wide)
    return 0
