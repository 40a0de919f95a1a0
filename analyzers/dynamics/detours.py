"""Detour states: states whose visitation goes with slower convergence (spec/DYNAMICS.md 'Detours').

A run's convergence step is the first step at which a chosen scalar metric reaches a
threshold (e.g. eval accuracy >= 0.9). For each state, its dwell (checkpoints spent in
it per run) is correlated across runs with the convergence step; a state with a
positive correlation whose two-sided p-value is below ``alpha`` is a detour. Needs at
least :data:`MIN_RUNS` converged runs; with fewer the question is not asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .options import Correlation, Direction

if TYPE_CHECKING:
    from tracefmt import Trace

__all__ = ["MIN_RUNS", "StateCorrelation", "convergence_step", "run_convergence", "dwell_matrix", "state_correlations"]

#: Fewest converged runs for which a correlation and its p-value are computed.
MIN_RUNS = 3


@dataclass(frozen=True)
class StateCorrelation:
    """Correlation of one state's dwell with the convergence step across runs.

    Attributes:
        state: The state.
        r: Correlation coefficient (NaN when the dwell is the same in every run).
        p_value: Two-sided p-value of r (NaN when r is).
        n_runs: Runs used.
        detour: True if r > 0 and p_value < alpha.
    """

    state: int
    r: float
    p_value: float
    n_runs: int
    detour: bool


def convergence_step(steps: np.ndarray, values: np.ndarray, *, threshold: float, direction: str = "above") -> int | None:
    """First step whose value reaches ``threshold`` (>= for 'above', <= for 'below'), None if never.

    Args:
        steps: Steps, ascending.
        values: The metric at those steps (NaN never reaches a threshold).
        threshold: The threshold.
        direction: 'above' or 'below'. Defaults to 'above'.
    """
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hit = v >= threshold if Direction(direction) == Direction.ABOVE else v <= threshold
    idx = np.flatnonzero(hit)
    return int(np.asarray(steps)[idx[0]]) if idx.size else None


def run_convergence(trace: Trace, *, metric: str, phase: str | None, threshold: float, direction: str) -> tuple[int | None, str]:
    """Convergence step of one run from its scalars table.

    Args:
        trace: The run.
        metric: Scalar series name.
        phase: Phase of the series; None prefers 'eval', then 'train', then any.
        threshold: The threshold.
        direction: 'above' or 'below'.

    Returns:
        (step or None, a short reason when None).
    """
    if not trace.has("scalars"):
        return None, "no scalars table"
    sc = trace.scalars
    names = np.asarray(sc.column("name").to_pylist(), dtype=object)
    phases = np.asarray(sc.column("phase").to_pylist(), dtype=object)
    sel = names == metric
    if not sel.any():
        return None, f"no scalar series {metric!r}"
    if phase is not None:
        sel &= phases == phase
    else:
        for candidate in ("eval", "train"):
            if (sel & (phases == candidate)).any():
                sel &= phases == candidate
                break
    if not sel.any():
        return None, f"no scalar series {metric!r} in phase {phase!r}"
    steps = sc.column("step").to_numpy()[sel]
    values = sc.column("value").to_numpy()[sel]
    order = np.argsort(steps, kind="stable")
    step = convergence_step(steps[order], values[order], threshold=threshold, direction=direction)
    return step, "" if step is not None else f"{metric} never reached {threshold}"


def dwell_matrix(paths: list[np.ndarray], n_states: int) -> np.ndarray:
    """Checkpoints spent in each state per run, shape (runs, K)."""
    return np.array([np.bincount(np.asarray(p, dtype=np.int64), minlength=n_states)[:n_states] for p in paths], dtype=np.float64).reshape(len(paths), n_states)


def state_correlations(dwell: np.ndarray, conv_steps: np.ndarray, *, method: str = "pearson", alpha: float = 0.05) -> list[StateCorrelation]:
    """Correlate each state's dwell with the convergence step across runs.

    Uses :func:`scipy.stats.pearsonr` or :func:`scipy.stats.spearmanr` (two-sided p-values).

    Args:
        dwell: (runs, K) dwell counts of the converged runs.
        conv_steps: (runs,) convergence steps.
        method: 'pearson' or 'spearman'. Defaults to 'pearson'.
        alpha: Significance level for calling a state a detour. Defaults to 0.05.

    Returns:
        One :class:`StateCorrelation` per state (empty with fewer than :data:`MIN_RUNS` runs).
    """
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - the analyzers extra installs it
        from tracefmt.errors import MissingDependencyError

        raise MissingDependencyError("scipy", "analyzers", "detour states") from None

    n = len(conv_steps)
    if n < MIN_RUNS:
        return []
    y = np.asarray(conv_steps, dtype=np.float64)
    out = []
    for s in range(dwell.shape[1]):
        x = dwell[:, s]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(StateCorrelation(s, float("nan"), float("nan"), n, False))
            continue
        if Correlation(method) == Correlation.PEARSON:
            res = stats.pearsonr(x, y, alternative="two-sided")
        else:
            res = stats.spearmanr(x, y, alternative="two-sided")
        r, p = float(res.statistic), float(res.pvalue)
        out.append(StateCorrelation(s, r, p, n, bool(np.isfinite(p) and r > 0 and p < alpha)))
    return out
