"""``tracefmt watch TRACE``: follow a live trace and print findings as they appear.

Prints each new finding with the step at which it appeared and, after each look that saw
new steps, a compact per-layer status line; ``--format json`` prints one finding per line
(JSON) and nothing else. Ends when the trace is complete, after ``--timeout`` seconds, or
on Ctrl-C, with ``analyze``'s exit codes: 0 no error finding, 1 at least one, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import EXIT_FOUND, EXIT_OK
from ._output import add_format_option


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``watch`` command."""
    p = subparsers.add_parser(
        "watch",
        help="follow a live trace and print findings as they appear",
        description="Follow a trace while it is written: run the analyzers on what is visible whenever it grows, print each new "
        "finding with the step it appeared at and a per-layer status line, exit when the trace is complete.",
    )
    p.add_argument("trace", metavar="TRACE", help="trace directory (may not exist yet)")
    p.add_argument("--only", default=None, metavar="A,B", help="analyzers to run (default: activations,dead,gradients,loss)")
    p.add_argument("--set", action="append", default=[], metavar="ANALYZER.PARAM=VALUE", help="analyzer parameter (repeatable)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between looks (default: 2)")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (default: when the trace is complete)")
    add_format_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Follow ``args.trace``; return 1 if an error finding appeared, else 0."""
    from ..analyzers.params import parse_assignment
    from ..analyzers.watch import Watcher
    from ..errors import UsageError

    if args.interval <= 0:
        raise UsageError(f"--interval must be > 0; got {args.interval}")
    params: dict[str, str] = {}
    for item in args.set:
        k, v = parse_assignment(item)
        params[k] = v
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    watcher = Watcher(args.trace, names=names, params=params)
    as_json = args.format == "json"
    try:
        _follow(watcher, args, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("tracefmt watch: interrupted\n")
    return EXIT_FOUND if watcher.has_errors else EXIT_OK


def _follow(watcher, args: argparse.Namespace, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    import time

    start = time.monotonic()
    last_step = None
    while True:
        update = watcher.poll()
        for n in update.new:
            if as_json:
                sys.stdout.write(json.dumps(n.as_dict(), default=str) + "\n")
            else:
                f = n.finding
                steps = "" if f.step_first is None else f" (steps {f.step_first}-{f.step_last})"
                sys.stdout.write(
                    f"[step {n.seen_at_step}] {f.severity.value:<7} {f.analyzer}/{f.code} {f.node or '-'}{steps}: {f.message}\n"
                )
        if not as_json and update.step != last_step and update.step >= 0:
            sys.stdout.write(update.status_line() + "\n")
        last_step = update.step
        sys.stdout.flush()
        if update.complete or (args.timeout is not None and time.monotonic() - start >= args.timeout):
            return
        time.sleep(args.interval)
