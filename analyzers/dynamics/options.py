"""The dynamics analyzer's settings: enumerations and one validated options object.

Parameters reach the analyzer as a plain dict (from Python or ``--param`` on the command
line, so values may be strings); :meth:`DynamicsOptions.from_params` converts and checks
them once, at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from tracefmt.enums import coerce
from tracefmt.errors import UsageError

__all__ = ["CovarianceType", "MedianKind", "Correlation", "Direction", "DynamicsOptions"]


class CovarianceType(StrEnum):
    """Covariance structure of the Gaussian emissions (hmmlearn's ``covariance_type``)."""

    DIAG = "diag"
    FULL = "full"
    SPHERICAL = "spherical"
    TIED = "tied"


class MedianKind(StrEnum):
    """Which median of all weights / all biases (spec/DYNAMICS.md 'Global statistics')."""

    LOWER = "lower"  #: element of rank floor((n-1)/2): the records' median and torch.median
    MIDPOINT = "midpoint"  #: mean of the two middle elements (numpy.median); needs raw tensors


class Correlation(StrEnum):
    """Correlation used for detour states."""

    PEARSON = "pearson"
    SPEARMAN = "spearman"


class Direction(StrEnum):
    """How the convergence metric reaches its threshold."""

    ABOVE = "above"  #: converged once metric >= threshold (accuracy)
    BELOW = "below"  #: converged once metric <= threshold (loss)


def _as_list(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _threshold(value: Any) -> float | None:
    """None, '', 'none' and NaN (what a float parameter can carry) all disable detours."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "nan")):
        return None
    v = float(value)
    return None if v != v else v


@dataclass(frozen=True)
class DynamicsOptions:
    """Validated settings of the dynamics analyzer (see ``DynamicsAnalyzer.params``)."""

    k_max: int = 8
    restarts: int = 5
    covariance_type: CovarianceType = CovarianceType.DIAG
    n_iter: int = 100
    tol: float = 1e-2
    seed: int = 0
    holdout_fraction: float = 0.2
    holdout_min_runs: int = 4
    nodes: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None
    phase: str | None = None
    variance_ddof: int = 0
    median: MedianKind = MedianKind.LOWER
    convergence_metric: str = "accuracy"
    convergence_phase: str | None = None
    convergence_threshold: float | None = 0.9
    convergence_direction: Direction = Direction.ABOVE
    correlation: Correlation = Correlation.PEARSON
    alpha: float = 0.05
    write_states: str = "none"

    @classmethod
    def from_params(cls, params: dict[str, Any] | None = None) -> DynamicsOptions:
        """Build options from a parameter dict (unknown names are refused).

        Args:
            params: Parameter name -> value; strings are converted. Missing names take defaults.

        Returns:
            The validated options.

        Raises:
            UsageError: An unknown parameter or an invalid value.
        """
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UsageError(f"dynamics: unknown parameter {unknown[0]!r}; available: {', '.join(sorted(known))}")
        d = {f.name: f.default for f in fields(cls)}
        d.update({k: v for k, v in params.items() if v is not None or k in ("nodes", "features", "phase", "convergence_phase", "convergence_threshold")})
        try:
            opts = cls(
                k_max=int(d["k_max"]),
                restarts=int(d["restarts"]),
                covariance_type=coerce(CovarianceType, d["covariance_type"], what="covariance_type"),
                n_iter=int(d["n_iter"]),
                tol=float(d["tol"]),
                seed=int(d["seed"]),
                holdout_fraction=float(d["holdout_fraction"]),
                holdout_min_runs=int(d["holdout_min_runs"]),
                nodes=_as_list(d["nodes"]),
                features=_as_list(d["features"]),
                phase=str(d["phase"]) if d["phase"] not in (None, "") else None,
                variance_ddof=int(d["variance_ddof"]),
                median=coerce(MedianKind, d["median"], what="median"),
                convergence_metric=str(d["convergence_metric"]),
                convergence_phase=str(d["convergence_phase"]) if d["convergence_phase"] not in (None, "") else None,
                convergence_threshold=_threshold(d["convergence_threshold"]),
                convergence_direction=coerce(Direction, d["convergence_direction"], what="convergence_direction"),
                correlation=coerce(Correlation, d["correlation"], what="correlation"),
                alpha=float(d["alpha"]),
                write_states=str(d["write_states"]),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"dynamics: invalid parameter value ({exc})") from None
        opts._check()
        return opts

    def _check(self) -> None:
        if self.k_max < 1:
            raise UsageError(f"dynamics: k_max must be >= 1, got {self.k_max}")
        if self.restarts < 1:
            raise UsageError(f"dynamics: restarts must be >= 1, got {self.restarts}")
        if self.n_iter < 1:
            raise UsageError(f"dynamics: n_iter must be >= 1, got {self.n_iter}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise UsageError(f"dynamics: holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.variance_ddof not in (0, 1):
            raise UsageError(f"dynamics: variance_ddof must be 0 or 1, got {self.variance_ddof}")
        if not 0.0 < self.alpha < 1.0:
            raise UsageError(f"dynamics: alpha must be in (0, 1), got {self.alpha}")
        if self.features is not None:
            from .features import FEATURES

            unknown = [f for f in self.features if f not in FEATURES]
            if unknown:
                raise UsageError(f"dynamics: unknown feature {unknown[0]!r}; available: {', '.join(FEATURES)}")
