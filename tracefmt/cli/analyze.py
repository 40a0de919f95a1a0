"""``tracefmt analyze TRACE...``: run analyzers and report their findings.

Exit codes: 0 no error findings, 1 at least one error finding, 2 bad usage or an
unreadable trace. ``--out DIR`` writes the findings (Arrow and JSON) and every figure;
``--write`` stores the findings inside each trace under ``findings/<analyzer>.parquet``
(and the dynamics states under ``dynamics/``); without it nothing is written into a trace.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import EXIT_FOUND, EXIT_OK
from ._output import add_format_option, emit_json, print_table

_COLUMNS = ("severity", "analyzer", "code", "node", "steps", "value", "threshold", "message")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command."""
    p = subparsers.add_parser(
        "analyze",
        help="run analyzers over one or more traces",
        description=(
            "Run analyzers over one or more traces and print their findings, most severe first "
            "(exit 0 no errors, 1 error findings, 2 bad usage). With several traces, single-run "
            "analyzers run on each and multi-run analyzers on all together."
        ),
    )
    p.add_argument("traces", metavar="TRACE", nargs="+", help="trace directories, or lakes (directories of traces)")
    p.add_argument("--run", action="append", default=None, dest="runs", metavar="RUN_ID", help="in a lake, analyze only this run (repeatable; default: every run)")
    p.add_argument("--only", metavar="A,B", help="run only these analyzers (comma-separated); default: all registered")
    p.add_argument(
        "--set",
        metavar="ANALYZER.PARAM=VALUE",
        action="append",
        default=[],
        dest="settings",
        help="set an analyzer parameter (repeatable); see 'tracefmt analyzers'",
    )
    add_format_option(p, choices=("table", "json", "arrow"))
    p.add_argument("--out", metavar="DIR", help="write findings.arrow, findings.json, figures/ and dynamics-states.arrow into DIR")
    p.add_argument(
        "--figure-format", default="png", metavar="FMT[,FMT]", help="figure formats written with --out: png, svg, pdf (default: png)"
    )
    p.add_argument("--overwrite", action="store_true", help="with --out: replace findings and figures a previous run wrote there")
    p.add_argument("--write", action="store_true", help="also store the findings (findings/<analyzer>.parquet) and the dynamics states (dynamics/) inside each trace; without it nothing is written into a trace")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown only when stderr is a terminal)")
    p.set_defaults(run=run)


def _selected(paths: list[str], runs: list[str] | None) -> list[Any]:
    """Traces to analyze: each lake expands to its selected runs (all when none is selected)."""
    from .. import open as open_trace
    from ..lake import is_lake, lake_runs, select_run
    from ..storage import is_remote, localize

    out: list[Any] = []
    for path in paths:
        if is_remote(path):
            if runs:  # of a remote lake, only the selected runs are copied
                out += [open_trace(path, run=r) for r in runs]
                continue
            path = str(localize(path))
        if is_lake(path):
            out += [str(select_run(path, r)) for r in runs] if runs else [str(d) for d in lake_runs(path).values()]
        else:
            out.append(path)
    return out


def _settings(items: list[str]) -> dict[str, str]:
    from ..analyzers.params import parse_assignment

    return dict(parse_assignment(s) for s in items)


def _progress(enabled: bool) -> tuple[Any, Any]:
    """A tqdm bar on stderr when it is a terminal (and tqdm is installed)."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    bar = tqdm(unit="rec", unit_scale=True, file=sys.stderr, desc="analyzing", leave=False)
    return bar, bar.update


def _rows(table: Any) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for r in rows:
        a, b = r["step_first"], r["step_last"]
        r["steps"] = None if a is None else (str(a) if b is None or a == b else f"{a}-{b}")
    return rows


def run(args: argparse.Namespace) -> int:
    """Analyze ``args.traces`` and print the findings."""
    from ..analyzers import run as run_analyzers
    from ._paths import check_output_dir

    if args.format == "arrow" and not args.out and sys.stdout.isatty():
        raise UsageError("--format arrow writes a binary Arrow stream: redirect stdout to a file or a pipe, or use --out DIR")
    formats = [f.strip() for f in args.figure_format.split(",") if f.strip()]
    # Refuse an unusable output before the (long) analysis, not after it.
    out_dir = (
        check_output_dir(args.out, overwrite=args.overwrite, contents=("findings.arrow", "findings.json", "figures", "dynamics-states.arrow"))
        if args.out
        else None
    )
    settings = _settings(args.settings)
    # Analysis reads a trace and never writes into it unless asked (--write); the dynamics
    # states go where the user asked for output: into the traces with --write, else --out.
    if "dynamics.write_states" not in settings:
        if args.write:
            settings["dynamics.write_states"] = "trace"
        elif out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            settings["dynamics.write_states"] = str(out_dir / "dynamics-states.arrow")
    bar, callback = _progress(not args.no_progress)
    try:
        report = run_analyzers(_selected(args.traces, args.runs), names=args.only, params=settings, progress=callback)
    finally:
        if bar is not None:
            bar.close()
    table = report.findings
    written: list[Path] = []
    if out_dir is not None:
        written += _write_out(report, out_dir, formats)
    if args.write:
        written += _write_into_traces(report)
    if args.format == "arrow":
        _emit_arrow(table.replace_schema_metadata({**(table.schema.metadata or {}), b"tracefmt.verdict": report.verdict.encode()}))
    elif args.format == "json":
        data = report.to_dict()
        data["written"] = [str(p) for p in written]
        emit_json(data)
    else:
        _print_report(report, table, written)
    return EXIT_FOUND if report.has_errors else EXIT_OK


def _print_report(report: Any, table: Any, written: list[Path]) -> None:
    from ..findings import findings_table

    out = sys.stdout
    out.write(f"{report.verdict}\n\n")
    if table.num_rows:
        print_table(_rows(findings_table(report.grouped)), _COLUMNS, out, max_width=110)
    counts = {s: 0 for s in ("error", "warning", "info")}
    for s in table.column("severity").to_pylist():
        counts[s] += 1
    ran = report.to_dict()["ran"]
    out.write(
        f"\n{table.num_rows} findings ({counts['error']} errors, {counts['warning']} warnings, {counts['info']} info) from {len(ran)} analyzers: {', '.join(ran) or 'none'}\n"
    )
    for s in report.skipped_list:
        where = f" [{s.trace}]" if s.trace and len(report.traces) > 1 else ""
        out.write(f"skipped {s.analyzer}{where}: {s.reason}\n")
    if written:
        out.write(f"wrote {len(written)} files: {', '.join(str(p) for p in written[:6])}{' ...' if len(written) > 6 else ''}\n")


def _emit_arrow(table: Any) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    sink = sys.stdout.buffer
    with ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as w:
        w.write_table(table)
    sink.flush()


def _write_out(report: Any, out_dir: Path, formats: list[str]) -> list[Path]:
    import io

    import pyarrow as pa
    import pyarrow.ipc as ipc

    from ..safe_io import write_atomic
    from ._output import emit_json as _json

    table = report.findings
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    arrow_path = write_atomic(out_dir / "findings.arrow", sink.getvalue().to_pybytes())
    text = io.StringIO()
    _json(report.to_dict(), text)
    json_path = write_atomic(out_dir / "findings.json", text.getvalue())
    return [arrow_path, json_path, *report.save_figures(out_dir / "figures", formats=formats)]


def _write_into_traces(report: Any) -> list[Path]:
    from ..findings import findings_table, write_findings

    written = []
    shared = [f for res in report.results.values() for f in res.findings if len(report.traces) > 1]
    for trace, results in zip(report.traces, report.per_trace):
        by_analyzer: dict[str, list] = {}
        for name, res in results.items():
            by_analyzer.setdefault(name, []).extend(res.findings)
        if len(report.traces) == 1:
            for name, res in report.results.items():
                by_analyzer.setdefault(name, list(res.findings))
        for f in shared:
            by_analyzer.setdefault(f.analyzer, []).append(f)
        for name, findings in by_analyzer.items():
            written.append(write_findings(trace.path, findings_table(findings), name=name))
    return written
