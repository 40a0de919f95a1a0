"""``tracefmt onnx MODEL.onnx``: trace an ONNX model with ONNX Runtime.

Inputs come from files (``--input name=file.npy``, ``.npz`` or ONNX ``.pb``; repeat a
name to give several batches, one step each) or are random (``--random``). Exit codes:
0 the trace was written; 2 bad usage or an unreadable model or input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import EXIT_OK
from ._output import add_format_option, emit_json, number_at_least, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``onnx`` command."""
    p = subparsers.add_parser(
        "onnx",
        help="trace an ONNX model with ONNX Runtime",
        description="Run an ONNX model with ONNX Runtime and record every intermediate tensor as a trace.",
    )
    p.add_argument("model", metavar="MODEL", help="the .onnx file (external data is read from its directory)")
    p.add_argument("-o", "--out", required=True, metavar="TRACE", help="trace directory to write")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE",
                   help="value of a model input (.npy, .npz or ONNX .pb); repeat a name for several batches (steps)")  # fmt: skip
    p.add_argument("--random", action="store_true", help="random values for inputs not given with --input")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default: 0)")
    p.add_argument("--dim", type=number_at_least(1, integer=True), default=1, help="size of symbolic dimensions with --random (default: 1)")
    p.add_argument("--raw", action="store_true", help="also store raw tensor values (for exact diffs of small models)")
    p.add_argument("--no-histogram", action="store_true", help="record no histograms")
    p.add_argument("--median", action="store_true", help="also record the median of every tensor")
    p.add_argument("--provider", action="append", default=None, metavar="NAME", help="execution provider (default: CPUExecutionProvider)")
    p.add_argument("--optimization", default="disabled", choices=["disabled", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level (default: disabled, so every ONNX node is observed)")  # fmt: skip
    p.add_argument("--chunk-outputs", type=number_at_least(0, integer=True), default=None, metavar="N",
                   help="captured outputs per session chunk, bounding memory (default: 64; 0 = one session)")  # fmt: skip
    p.add_argument("--exclude-op", action="append", default=[], metavar="OP", help="operator type whose outputs are not recorded")
    p.add_argument("--phase", default="infer", choices=["infer", "eval"], help="phase of the records (default: infer)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing trace at --out")
    add_format_option(p)
    p.set_defaults(run=run)


def _feeds(args: argparse.Namespace, info: Any) -> list[dict[str, Any]]:
    from ..adapters.onnxruntime import random_feed, read_array
    from ..errors import UsageError

    given: dict[str, list[Any]] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--input {item!r}: expected NAME=FILE")
        given.setdefault(name, []).append(read_array(path))
    known = [vi.name for vi in list(info.required_inputs) + list(info.optional_inputs)]
    unknown = [name for name in given if name not in known]
    if unknown:
        raise UsageError(f"unknown input(s) {', '.join(unknown)}; the model's inputs are: {', '.join(known) or '(none)'}")
    counts = {len(v) for v in given.values()}
    if len(counts) > 1:
        raise UsageError(
            "--input: every input needs the same number of values (one per step); got "
            + ", ".join(f"{k}: {len(v)}" for k, v in given.items())
        )
    steps = counts.pop() if counts else 1
    missing = [vi.name for vi in info.required_inputs if vi.name not in given]
    if missing and not args.random:
        raise UsageError(f"no value for model input(s) {', '.join(missing)}; give --input NAME=FILE or --random")
    feeds = []
    for k in range(steps):
        feed = {name: values[k] for name, values in given.items()}
        if missing:
            rnd = random_feed(info, seed=args.seed + k, dim=args.dim)
            feed.update({name: rnd[name] for name in missing})
        feeds.append(feed)
    return feeds


def run(args: argparse.Namespace) -> int:
    """Trace ``args.model`` and print a summary of the trace written."""
    from .. import open as open_trace
    from ..adapters.onnxruntime import DEFAULT_CHUNK_OUTPUTS, load_graph, trace_onnx
    from ..histogram import DEFAULT_BINNING
    from ._paths import new_trace_dir

    info = load_graph(args.model)
    feeds = _feeds(args, info)
    chunk = DEFAULT_CHUNK_OUTPUTS if args.chunk_outputs is None else (args.chunk_outputs or None)
    # Written into a fresh temporary directory and renamed: a failed run leaves no partial
    # trace, and an existing directory is replaced only with --overwrite and only if it is a trace.
    with new_trace_dir(args.out, overwrite=args.overwrite) as tmp:
        trace_onnx(
            info.path, feeds, tmp,
            raw=args.raw, histogram=None if args.no_histogram else DEFAULT_BINNING, median=args.median,
            providers=tuple(args.provider or ("CPUExecutionProvider",)), optimization=args.optimization,
            chunk_outputs=chunk, exclude_ops=tuple(args.exclude_op), phase=args.phase, mode="create",
        )  # fmt: skip
    path = Path(args.out)
    trace = open_trace(path)
    summary = {
        "trace": str(path),
        "model": str(info.path),
        "nodes": trace.nodes.num_rows,
        "records": trace.records.count_rows(),
        "steps": len(feeds),
        "optimization": args.optimization,
        "providers": list(args.provider or ("CPUExecutionProvider",)),
    }
    if args.format == "json":
        emit_json(summary)
    else:
        print_table([summary], list(summary), max_width=80)
        sys.stdout.flush()
    return EXIT_OK
