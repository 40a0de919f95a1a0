"""Which features drive a state transition: the gradient of the log state-posterior.

For a transition i -> j observed at checkpoint t (the Viterbi path is in i at t-1 and in
j at t), the posterior of the destination state given the previous state and the
observation x = x_t is

    p(j | i, x) = A_ij N(x; mu_j, S_j) / sum_k A_ik N(x; mu_k, S_k).

With grad_x log N(x; mu_k, S_k) = -S_k^{-1} (x - mu_k) and w_k = p(k | i, x),

    grad_x log p(j | i, x) = -S_j^{-1} (x - mu_j) + sum_k w_k S_k^{-1} (x - mu_k),

a vector with one entry per feature (z-score units: per standard deviation of the run).
It holds for every covariance type once S_k is the full matrix (hmmlearn's ``covars_``);
for diagonal S_k it is elementwise, ``-(x - mu_j) / s_j^2 + sum_k w_k (x - mu_k) / s_k^2``.
A positive entry means raising that feature makes state j more probable. For an edge the
gradient is evaluated at x_{t-1}, the last checkpoint in state i: at x_t the posterior of
j is close to 1 for a clear transition and its gradient vanishes. The drivers of an edge
are the features with the largest |mean gradient| over its observed instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["log_transition_posterior", "log_posterior_gradient", "EdgeDrivers", "transition_drivers"]


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """Cholesky factor of a covariance, with a growing ridge if it is singular to rounding.

    A fitted covariance can be (as hmmlearn handles with ``min_covar``).
    """
    cov = 0.5 * (cov + cov.T)
    scale = max(float(np.mean(np.diag(cov))), 1e-300)
    for ridge in (0.0, 1e-12, 1e-9, 1e-6, 1e-3):
        try:
            return np.linalg.cholesky(cov + ridge * scale * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("covariance matrix is not positive definite, even with a ridge of 1e-3 x its mean variance")


def _log_gaussians(x: np.ndarray, means: np.ndarray, covars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The log-densities log N(x; mu_k, S_k) for every k, and the precision-weighted residuals S_k^{-1}(x - mu_k)."""
    k, d = means.shape
    logp = np.empty(k)
    prec_res = np.empty((k, d))
    for s in range(k):
        chol = _cholesky(covars[s])
        res = x - means[s]
        y = np.linalg.solve(chol, res)  # L^{-1} (x - mu)
        prec_res[s] = np.linalg.solve(chol.T, y)  # S^{-1} (x - mu)
        logp[s] = -0.5 * (d * np.log(2 * np.pi) + 2.0 * np.sum(np.log(np.diag(chol))) + y @ y)
    return logp, prec_res


def log_transition_posterior(x: np.ndarray, prev_state: int, *, means: np.ndarray, covars: np.ndarray, transmat: np.ndarray) -> np.ndarray:
    """``log p(k | prev_state, x)`` for every state k.

    Args:
        x: One observation (d,).
        prev_state: The state i at the previous checkpoint.
        means: State means (K, d).
        covars: Full covariance matrices (K, d, d).
        transmat: Transition matrix (K, K).

    Returns:
        Log posterior over the K states (-inf where the transition is impossible).
    """
    logn, _ = _log_gaussians(np.asarray(x, dtype=np.float64), means, covars)
    with np.errstate(divide="ignore"):
        a = np.log(transmat[prev_state]) + logn
    m = np.max(a)
    return a - (m + np.log(np.sum(np.exp(a - m))))


def log_posterior_gradient(
    x: np.ndarray, prev_state: int, state: int, *, means: np.ndarray, covars: np.ndarray, transmat: np.ndarray
) -> np.ndarray:
    """``grad_x log p(state | prev_state, x)`` (see the module docstring for the derivation).

    Args:
        x: One observation (d,).
        prev_state: The state i at the previous checkpoint.
        state: The destination state j.
        means: State means (K, d).
        covars: Full covariance matrices (K, d, d).
        transmat: Transition matrix (K, K).

    Returns:
        The gradient, shape (d,).
    """
    x = np.asarray(x, dtype=np.float64)
    logn, prec_res = _log_gaussians(x, means, covars)
    with np.errstate(divide="ignore"):
        a = np.log(transmat[prev_state]) + logn
    w = np.exp(a - np.max(a))
    w /= w.sum()
    return -prec_res[state] + w @ prec_res


@dataclass(frozen=True)
class EdgeDrivers:
    """The features that drive one observed transition.

    Attributes:
        source: State i.
        target: State j.
        count: Times the transition occurs in the Viterbi paths.
        gradient: Mean gradient over its occurrences, shape (d,).
        top: (feature name, mean gradient) of the ``top`` features by |gradient|.
    """

    source: int
    target: int
    count: int
    gradient: np.ndarray
    top: tuple[tuple[str, float], ...]


def transition_drivers(
    runs: list[np.ndarray],
    paths: list[np.ndarray],
    *,
    means: np.ndarray,
    covars: np.ndarray,
    transmat: np.ndarray,
    feature_names: tuple[str, ...],
    top: int = 3,
) -> list[EdgeDrivers]:
    """Drivers of every transition i -> j (i != j) observed in the Viterbi paths.

    Args:
        runs: Z-scored observations per run, (T_r, d) each.
        paths: Viterbi state path per run, (T_r,) each.
        means: State means (K, d).
        covars: Full covariance matrices (K, d, d).
        transmat: Transition matrix (K, K).
        feature_names: The d feature names.
        top: How many features to keep per edge. Defaults to 3.

    Returns:
        One :class:`EdgeDrivers` per observed transition, sorted by (source, target).
    """
    grads: dict[tuple[int, int], list[np.ndarray]] = {}
    for x, path in zip(runs, paths):
        for t in range(1, len(path)):
            i, j = int(path[t - 1]), int(path[t])
            if i != j:
                # At x_t a clear transition has p(j | i, x_t) ~ 1 and a vanishing gradient;
                # at x_{t-1}, the last checkpoint in i, the gradient says which features
                # move the run towards j.
                g = log_posterior_gradient(x[t - 1], i, j, means=means, covars=covars, transmat=transmat)
                grads.setdefault((i, j), []).append(g)
    out = []
    for (i, j), gs in sorted(grads.items()):
        mean = np.mean(gs, axis=0)
        order = np.argsort(-np.abs(mean), kind="stable")[:top]
        out.append(EdgeDrivers(i, j, len(gs), mean, tuple((feature_names[f], float(mean[f])) for f in order)))
    return out
