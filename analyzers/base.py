"""The analyzer plugin contract (README 'Writing an analyzer').

An analyzer is a class with a name, a description, a declaration of what it needs from a
trace and its parameters with defaults, and one method, :meth:`Analyzer.analyze`, that reads
a :class:`tracefmt.Trace` and returns an :class:`AnalyzerResult`. Analyzers are registered
through the entry-point group ``tracefmt.analyzers`` (built-ins too) and never import a
framework (torch, onnx).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tracefmt.errors import UsageError
from tracefmt.findings import Finding

if TYPE_CHECKING:
    from tracefmt import Trace

__all__ = ["Analyzer", "StreamingAnalyzer", "RecordConsumer", "AnalyzerResult", "Needs", "Param", "NotApplicable"]


class NotApplicable(Exception):
    """Raised by :meth:`Analyzer.analyze` when the trace lacks what the analyzer needs in a way
    :class:`Needs` cannot declare (e.g. a series named by a parameter); the pipeline records
    the analyzer as skipped with the exception's message as the reason.
    """


@dataclass(frozen=True)
class Needs:
    """What an analyzer needs from a trace; unmet needs skip it with a stated reason.

    Args:
        tables: Tables that must be present and non-empty ('records', 'scalars', 'predictions').
        kinds: Record kinds that must occur (any one of them is enough if ``any_kind``).
        columns: Record columns that must have at least one non-null value.
        scalars: Scalar series names of which at least one must exist (empty: none needed).
        any_kind: True if one of ``kinds`` suffices. Defaults to False (all are needed).
    """

    tables: tuple[str, ...] = ("records",)
    kinds: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()
    any_kind: bool = False


@dataclass(frozen=True)
class Param:
    """A named analyzer parameter with its default, a one-line help text and its allowed range.

    Numeric values are checked against ``low``/``high`` (inclusive; ``low_open`` makes the
    lower bound exclusive) when settings are resolved; NaN is refused unless ``allow_nan``.
    """

    name: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    allow_nan: bool = False

    def check(self, value: Any, *, what: str) -> Any:
        """``value`` if it lies in the declared range.

        Raises:
            UsageError: a number outside the range, or NaN where not allowed.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if math.isnan(value):
            if self.allow_nan:
                return value
            raise UsageError(f"parameter {what}: NaN is not allowed; {self.range_text()}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            raise UsageError(f"parameter {what}={value!r} is out of range; {self.range_text()}")
        return value

    def range_text(self) -> str:
        """The allowed range in words, e.g. 'allowed: 0 < value <= 1'."""
        parts = []
        if self.low is not None:
            parts.append(f"{self.low:g} {'<' if self.low_open else '<='} ")
        parts.append("value")
        if self.high is not None:
            parts.append(f" <= {self.high:g}")
        return "allowed: " + "".join(parts) if len(parts) > 1 else "allowed: any number"


@dataclass
class AnalyzerResult:
    """What an analyzer returns.

    Attributes:
        findings: The findings.
        data: Computed series and tables (JSON-serialisable or Arrow), for reports and tests.
        figures: Figure name -> zero-argument callable returning a matplotlib Figure; built
            only when asked for, so analysis never pays for plotting.
    """

    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def figure(self, name: str) -> Any:
        """Build and return the figure called ``name`` (a matplotlib Figure).

        Raises:
            UsageError: No figure of that name.
        """
        if name not in self.figures:
            from tracefmt.errors import UsageError

            raise UsageError(f"unknown figure {name!r}; available: {', '.join(self.figures) or '(none)'}")
        return self.figures[name]()


class Analyzer(ABC):
    """Base class of every analyzer plugin."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[Needs] = Needs()
    params: ClassVar[tuple[Param, ...]] = ()
    #: True for analyzers that fit across several runs at once (one trace per seed);
    #: the pipeline then calls :meth:`analyze_runs` with every trace given.
    multi_run: ClassVar[bool] = False

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Parameter name -> default value."""
        return {p.name: p.default for p in cls.params}

    @abstractmethod
    def analyze(self, trace: Trace, params: dict[str, Any]) -> AnalyzerResult:
        """Analyze ``trace`` with the given (complete, validated) parameters."""

    def analyze_runs(self, traces: list[Trace], params: dict[str, Any]) -> AnalyzerResult:
        """Analyze several runs together (only for ``multi_run`` analyzers)."""
        raise NotImplementedError(f"analyzer {self.name!r} analyzes one run at a time")


class RecordConsumer(ABC):
    """One analyzer's share of the pipeline's single pass over the records.

    The pipeline reads the records once for every streaming analyzer, with the union of
    their :attr:`columns`, and hands each batch to :meth:`consume` as a
    :class:`tracefmt.analyzers.scan.RecordView`; :meth:`finish` then builds the result.
    """

    #: Record columns read (``step``, ``phase``, ``node_id``, ``kind`` and ``slot`` always are).
    columns: tuple[str, ...] = ()

    @abstractmethod
    def consume(self, view: Any) -> None:
        """Accumulate one batch of records."""

    @abstractmethod
    def finish(self) -> AnalyzerResult:
        """The analyzer's result once every batch was consumed."""


class StreamingAnalyzer(Analyzer):
    """An analyzer that reads the records through the pipeline's shared single pass.

    Implement :meth:`consumer`; :meth:`analyze` (a run on its own) drives it over one scan.
    """

    @abstractmethod
    def consumer(self, trace: Trace, params: dict[str, Any]) -> RecordConsumer:
        """A fresh consumer for ``trace`` (may raise :class:`NotApplicable`)."""

    def analyze(self, trace: Trace, params: dict[str, Any]) -> AnalyzerResult:
        """Analyze ``trace`` alone: one scan feeding this analyzer's consumer."""
        from .scan import shared_pass

        consumer = self.consumer(trace, params)
        shared_pass(trace, [consumer])
        return consumer.finish()
