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
from .writer import TraceWriter

__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "Trace",
    "TraceWriter",
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
    """Check a trace against the spec; see :func:`tracefmt.validate.validate_trace`."""
    from .validation import validate_trace

    return validate_trace(path, **kwargs)


def compact(path, **kwargs):  # type: ignore[no-untyped-def]
    """Rewrite a trace's segments to Parquet; see :func:`tracefmt.compaction.compact_trace`."""
    from .compaction import compact_trace

    return compact_trace(path, **kwargs)
