"""The error family for user-facing problems.

Every error a user can cause (a missing file, a nonconforming trace, a bad option)
derives from :class:`TraceError`; the CLI turns any of them into one line on stderr
and exit code 2. Anything else that escapes is a bug in tracefmt and keeps its
traceback.
"""

from __future__ import annotations

__all__ = [
    "TraceError",
    "TraceNotFoundError",
    "TraceFormatError",
    "UnsupportedVersionError",
    "UsageError",
    "MissingDependencyError",
]


class TraceError(Exception):
    """Base class of every user-facing tracefmt error."""


class TraceNotFoundError(TraceError, FileNotFoundError):
    """The path given is not a trace directory (or a required file is missing)."""


class TraceFormatError(TraceError, ValueError):
    """A trace does not conform to the spec; the message names file, table and column."""


class UnsupportedVersionError(TraceFormatError):
    """The trace's major ``format_version`` is newer than this reader understands."""


class UsageError(TraceError, ValueError):
    """A caller asked for something that does not exist or is not allowed.

    Messages say what was asked and what exists, e.g.
    ``unknown analyzer 'deed'; available: dead, gradients, loss``.
    """


class MissingDependencyError(TraceError, ImportError):
    """An optional dependency (an extra) is needed for the requested feature."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(f"{feature} needs the '{package}' package; install it with pip install 'tracefmt[{extra}]'")
        self.package = package
        self.extra = extra
