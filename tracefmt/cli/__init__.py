"""The ``tracefmt`` command line: thin commands over the library.

Exit codes (spec 'Command line'): 0 all well; 1 the command worked and found problems
(an invalid trace, error findings, a divergence); 2 bad usage or unreadable input, with one
line on stderr and no traceback; 3 an internal error (a bug in tracefmt): one line, and
the traceback only with ``--debug``. Every command lives in its own module under
``tracefmt.cli`` (or, for analyzer-side commands, is registered from there) exposing
``register(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence

from .._version import __version__
from ..errors import TraceError

__all__ = ["main", "COMMANDS", "EXIT_OK", "EXIT_FOUND", "EXIT_USAGE", "EXIT_INTERNAL"]

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

#: Command name -> module implementing it. Modules import heavy dependencies lazily.
COMMANDS: dict[str, str] = {
    "demo": "tracefmt.cli.demo",
    "info": "tracefmt.cli.info",
    "validate": "tracefmt.cli.validate",
    "compact": "tracefmt.cli.compact",
    "analyze": "tracefmt.cli.analyze",
    "analyzers": "tracefmt.cli.analyzers",
    "render": "tracefmt.cli.render",
    "report": "tracefmt.cli.report",
    "diff": "tracefmt.cli.diff",
    "onnx": "tracefmt.cli.onnx",
    "import": "tracefmt.cli.convert",
    "watch": "tracefmt.cli.watch",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per available command module."""
    parser = _Parser(prog="tracefmt", description="Record, validate and analyze neural-network traces.")
    parser.add_argument("--version", action="version", version=f"tracefmt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error (exit code 3)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    registered: set[str] = set()
    for _name, module_name in COMMANDS.items():
        if module_name in registered:
            continue
        registered.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command whose module is not part of this build
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by the console script)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line (before or after the command's own options).
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with _numeric_warnings_quiet(not debug):
            return int(args.run(args) or 0)
    except TraceError as exc:
        sys.stderr.write(f"tracefmt {args.command}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("tracefmt: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # An input or output path the operating system refused: the user's to fix.
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"tracefmt {args.command}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the boundary: any other exception is a bug
        if debug:
            traceback.print_exc()
        where = _input_of(args)
        sys.stderr.write(
            f"tracefmt {args.command}: internal error{f' on {where}' if where else ''}: "
            f"{type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)\n"
        )
        return EXIT_INTERNAL


@contextlib.contextmanager
def _numeric_warnings_quiet(quiet: bool) -> Iterator[None]:
    """NaN, Inf and overflow in a trace's values are data the commands count and report, not
    warnings for the user's terminal (``--debug`` shows them)."""
    if not quiet:
        yield
        return
    import numpy as np

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (control characters from a trace replaced)."""
    text = " ".join(str(exc).split())
    return "".join(c if c.isprintable() else "?" for c in text)[:2000]


def _input_of(args: argparse.Namespace) -> str:
    """The file or trace the command was reading, for the internal-error line."""
    for name in ("trace", "traces", "a", "model", "path"):
        value = getattr(args, name, None)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str):
            return value
    return ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
