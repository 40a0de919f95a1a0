"""The fixed vocabularies of the format (spec section 'Enumerations').

Each is a :class:`enum.StrEnum`: the string and the member are both accepted by every
public function and normalised once with :func:`coerce`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from .errors import UsageError

__all__ = ["Kind", "Phase", "Severity", "HistScheme", "coerce"]


class Kind(StrEnum):
    """What tensor an observation record describes."""

    ACTIVATION = "activation"  #: a node's output
    GRADIENT = "gradient"  #: dL/d(output) of a node
    INPUT = "input"  #: a node's input
    WEIGHT = "weight"  #: a parameter's value
    WEIGHT_GRAD = "weight_grad"  #: dL/d(parameter), after backward
    WEIGHT_UPDATE = "weight_update"  #: parameter after the optimizer step minus before


class Phase(StrEnum):
    """Which part of a run an observation comes from."""

    TRAIN = "train"
    EVAL = "eval"
    INFER = "infer"


class Severity(StrEnum):
    """Severity of an analyzer finding, from least to most serious."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """Ordering key: info 0, warning 1, error 2."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class HistScheme(StrEnum):
    """How a record's histogram bin edges follow from its ``hist_*`` columns."""

    SYMLOG = "symlog"  #: fixed sign-symmetric log10 bins; the mergeable default
    LINEAR = "linear"  #: equal-width bins over [lo, hi], values outside ignored
    ABS_LINEAR = "abs_linear"  #: LINEAR applied to |x| (fast.ai's histc(|x|, 40, 0, 10))
    EDGES = "edges"  #: explicit ascending edges in ``hist_edges`` (TensorBoard's bucket limits, kept exactly)


E = TypeVar("E", bound=StrEnum)


def coerce(enum: type[E], value: str | E, *, what: str | None = None) -> E:
    """Return ``value`` as a member of ``enum``, accepting the member or its string.

    Args:
        enum: The enumeration class.
        value: A member or its string value.
        what: Name used in the error message. Defaults to the enum's name.

    Raises:
        UsageError: ``value`` is not one of the enumeration's values.
    """
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise UsageError(f"unknown {what or enum.__name__.lower()} {value!r}; available: {allowed}") from None
