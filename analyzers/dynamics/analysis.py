"""From feature matrices of several runs to phases: z-score, select the HMM, decode, explain.

:func:`fit_dynamics` is the trace-free core of the analyzer (usable on any feature
matrices, e.g. synthetic ones); :class:`DynamicsFit` holds everything it computed, and
:func:`fit_findings` turns fitting problems into findings.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracefmt.findings import Finding

from .features import ANALYZER, RunFeatures
from .fitting import Selection, relabel_by_first_visit, select_model, zscore_runs
from .options import DynamicsOptions
from .posterior import EdgeDrivers, transition_drivers

__all__ = ["DynamicsFit", "fit_dynamics", "fit_findings", "change_points"]


@dataclass
class DynamicsFit:
    """Everything :func:`fit_dynamics` computed.

    Attributes:
        runs: The runs' raw features (restricted to ``features``).
        features: Feature names, the columns of every matrix.
        z: Z-scored features per run.
        selection: Model selection over K (the chosen model's states relabelled).
        paths: Viterbi state path per run.
        posteriors: Posterior probability of the Viterbi state per checkpoint per run.
        edges: Drivers of every observed transition.
        constant: (run index, feature index) pairs that were constant (set to 0).
        findings: Warnings from z-scoring and fitting.
    """

    runs: list[RunFeatures]
    features: tuple[str, ...]
    z: list[np.ndarray]
    selection: Selection
    paths: list[np.ndarray]
    posteriors: list[np.ndarray]
    edges: list[EdgeDrivers]
    constant: list[tuple[int, int]]
    findings: list[Finding] = field(default_factory=list)

    @property
    def model(self) -> Any:
        """The chosen GaussianHMM."""
        return self.selection.best.model

    @property
    def n_states(self) -> int:
        """The chosen K."""
        return self.selection.best_k

    def dwell(self) -> np.ndarray:
        """Checkpoints spent in each state per run, (runs, K)."""
        from .detours import dwell_matrix

        return dwell_matrix(self.paths, self.n_states)


def change_points(path: np.ndarray) -> np.ndarray:
    """Indices t where the state differs from the state at t - 1."""
    p = np.asarray(path)
    return np.flatnonzero(p[1:] != p[:-1]) + 1


def fit_dynamics(runs: list[RunFeatures], opts: DynamicsOptions | None = None) -> DynamicsFit:
    """Fit the phase model to the runs' feature matrices.

    Args:
        runs: One :class:`RunFeatures` per run, all with the same feature names and at
            least two checkpoints.
        opts: Options (K range, restarts, covariance type, held-out split, seed).

    Returns:
        The :class:`DynamicsFit`.
    """
    opts = opts or DynamicsOptions()
    features = runs[0].names
    findings: list[Finding] = []
    z, constant, _ = zscore_runs([r.values for r in runs])
    by_feature: dict[int, list[str]] = defaultdict(list)
    for r, f in constant:
        by_feature[f].append(runs[r].run_id)
    for f, ids in sorted(by_feature.items()):
        findings.append(Finding(
            ANALYZER, "dynamics-constant-feature", "info",
            f"feature '{features[f]}' is constant in {len(ids)} of {len(runs)} run(s) ({', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}); "
            "it is set to 0 after z-scoring and carries no information there",
            metric=features[f], value=float(len(ids)),
        ))  # fmt: skip
    k_max = min(opts.k_max, sum(len(x) for x in z))
    selection = select_model(
        z, k_max=k_max, restarts=opts.restarts, covariance_type=opts.covariance_type, n_iter=opts.n_iter, tol=opts.tol,
        seed=opts.seed, holdout_fraction=opts.holdout_fraction, holdout_min_runs=opts.holdout_min_runs,
    )  # fmt: skip
    findings.extend(fit_findings(selection, restarts=opts.restarts))
    model = selection.best.model
    if model is None:
        findings.append(Finding(ANALYZER, "dynamics-fit-failed", "info", "no HMM could be fitted for any K; see the other findings"))
        return DynamicsFit(runs, features, z, selection, [], [], [], constant, findings)
    relabel_by_first_visit(model, z)
    paths, posteriors = [], []
    with np.errstate(all="ignore"):
        for x in z:
            _, path = model.decode(x, algorithm="viterbi")
            post = model.predict_proba(x)
            paths.append(path.astype(np.int64))
            posteriors.append(post[np.arange(len(path)), path])
    edges = transition_drivers(z, paths, means=model.means_, covars=model.covars_, transmat=model.transmat_, feature_names=features)
    total = np.bincount(np.concatenate(paths), minlength=model.n_components)
    for s in np.flatnonzero(total == 0):
        findings.append(Finding(ANALYZER, "dynamics-empty-state", "info",
                                f"state {s} of the chosen K={model.n_components} model is never the Viterbi state of any checkpoint", value=float(s)))  # fmt: skip
    return DynamicsFit(runs, features, z, selection, paths, posteriors, edges, constant, findings)


_ISSUE_WORDS = {
    "not-converged": "did not converge",
    "degenerate": "gave a degenerate fit",
    "rounding": "had log-likelihood drops smaller than tol (EM rounding, harmless)",
}


def fit_findings(selection: Selection, *, restarts: int) -> list[Finding]:
    """Summarise captured fitting problems: one finding per (K, kind).

    Every one is info: they describe the fit, not the model being trained (a finding above
    info claims that something is wrong with the training run). The message says whether
    the problem touched the kept restart of the chosen K.
    """
    kept = selection.best.restart
    grouped: dict[tuple[int, str], list[tuple[int, str]]] = defaultdict(list)
    for issue in selection.issues:
        grouped[(issue.k, issue.kind)].append((issue.restart, issue.message))
    out = []
    for (k, kind), items in sorted(grouped.items()):
        n = len({r for r, _ in items})
        code = {"not-converged": "dynamics-not-converged", "degenerate": "dynamics-degenerate-fit"}.get(kind, "dynamics-fit-warning")
        in_result = k == selection.best_k and kept in {r for r, _ in items}
        first = items[0][1].strip().splitlines()[0][:200]
        what = _ISSUE_WORDS.get(kind, "warned")
        kept_note = " (including the kept one)" if in_result else ""
        out.append(Finding(ANALYZER, code, "info", f"K={k}: {n} of {restarts} restart(s){kept_note} {what}: {first}",
                           metric="n_states", value=float(k)))  # fmt: skip
    return out
