"""tracefmt: a framework-agnostic trace format for the inside of neural networks.

The reference library: the schema (:mod:`tracefmt.schema`), reference statistics
(:mod:`tracefmt.stats`, :mod:`tracefmt.histogram`), :class:`TraceWriter`, :func:`open`
and :func:`validate`. It depends on pyarrow and numpy only; adapters live in
``tracefmt.adapters`` and analyzers in ``tracefmt.analyzers``.
"""

from ._version import __version__
from .enums import HistScheme, Kind, Phase, Severity
from .errors import (
    MissingDependencyError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    UnsupportedVersionError,
    UsageError,
)
from .histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning
from .schema import FORMAT_VERSION
from .trace import Trace, open
from .writer import TraceWriter, WriterOptions

__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "Trace",
    "TraceWriter",
    "WriterOptions",
    "open",
    "validate",
    "compact",
    "Kind",
    "Phase",
    "Severity",
    "HistScheme",
    "Binning",
    "DEFAULT_BINNING",
    "FASTAI_BINNING",
    "TraceError",
    "TraceFormatError",
    "TraceNotFoundError",
    "UnsupportedVersionError",
    "UsageError",
    "MissingDependencyError",
]


def validate(path, **kwargs):  # type: ignore[no-untyped-def]
    """Check a trace against the spec and return a report of every problem.

    See :func:`tracefmt.validation.validate_trace`: the returned
    :class:`~tracefmt.validation.ValidationReport` has ``valid``, ``errors``, ``warnings``
    and ``problems`` (each with severity, code, file, table, column and row).
    """
    from .validation import validate_trace

    return validate_trace(path, **kwargs)


def compact(path, **kwargs):  # type: ignore[no-untyped-def]
    """Rewrite each rank's segments as one sorted Parquet file, losslessly.

    See :func:`tracefmt.compaction.compact_trace` (options ``tables``, ``force``, ...).
    """
    from .compaction import compact_trace

    return compact_trace(path, **kwargs)
