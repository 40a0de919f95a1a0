"""Fitting Gaussian HMMs to feature trajectories and choosing K (spec/DYNAMICS.md 'Model selection').

Per K = 1..K_max, ``restarts`` fits of :class:`hmmlearn.hmm.GaussianHMM`, each with its
own ``random_state = seed + 1000 * K + restart`` (reproducible). The restart kept for a K
is the one with the best held-out log-likelihood when runs are held out, else the best
training log-likelihood. K is the one with the lowest BIC on the fitting runs,

    BIC = -2 log L + p log N,

N the number of checkpoints fitted and p the number of free parameters
(:func:`n_free_parameters`), the count hmmlearn's ``model.bic()`` uses. hmmlearn's log
messages and Python warnings are captured and returned as :class:`FitIssue` s, never
printed.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .options import CovarianceType

__all__ = [
    "FitIssue",
    "KFit",
    "Selection",
    "zscore_runs",
    "n_free_parameters",
    "bic",
    "split_runs",
    "fit_hmm",
    "select_model",
    "relabel_by_first_visit",
]


@dataclass(frozen=True)
class FitIssue:
    """A problem met while fitting one restart.

    ``kind`` is 'not-converged', 'degenerate', 'rounding' (the log-likelihood fell by less
    than tol: EM rounding, reported by hmmlearn as not converging) or 'warning'.
    """

    k: int
    restart: int
    kind: str
    message: str


@dataclass
class KFit:
    """The kept fit for one K.

    Attributes:
        k: Number of states.
        model: The fitted GaussianHMM (None if every restart failed).
        restart: Index of the kept restart.
        train_loglik: Log-likelihood of the fitting runs.
        heldout_loglik: Log-likelihood of the held-out runs (None without held-out runs).
        bic: BIC on the fitting runs (inf if no restart succeeded).
        n_params: Free parameters (:func:`n_free_parameters`).
        restart_scores: Selection score of every restart (held-out or training log-likelihood).
    """

    k: int
    model: Any
    restart: int
    train_loglik: float
    heldout_loglik: float | None
    bic: float
    n_params: int
    restart_scores: list[float] = field(default_factory=list)


@dataclass
class Selection:
    """Result of model selection over K.

    Attributes:
        fits: One :class:`KFit` per K tried, ascending K.
        best_k: The K with the lowest BIC.
        train_runs: Indices of the runs fitted.
        heldout_runs: Indices of the held-out runs (empty if none were held out).
        issues: Every captured warning, per K and restart.
    """

    fits: list[KFit]
    best_k: int
    train_runs: list[int]
    heldout_runs: list[int]
    issues: list[FitIssue]

    @property
    def best(self) -> KFit:
        """The :class:`KFit` of the chosen K."""
        return next(f for f in self.fits if f.k == self.best_k)


def zscore_runs(runs: list[np.ndarray], *, tiny: float = 1e-12) -> tuple[list[np.ndarray], list[tuple[int, int]], list[tuple[np.ndarray, np.ndarray]]]:
    """Z-score each run's features separately: ``(x - mean_run) / std_run`` (ddof 0).

    A feature that is constant within a run (std <= ``tiny`` x max(1, |mean|)) becomes 0
    for that run instead of NaN.

    Args:
        runs: One (T_r, F) array per run.
        tiny: Relative threshold under which a standard deviation counts as zero.

    Returns:
        The z-scored runs, the (run index, feature index) pairs found constant, and the
        (mean, std) used per run.
    """
    out, constant, params = [], [], []
    for r, x in enumerate(runs):
        x = np.asarray(x, dtype=np.float64)
        mu = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        sd = x.std(axis=0) if len(x) else np.ones(x.shape[1])
        flat = sd <= tiny * np.maximum(1.0, np.abs(mu))
        constant.extend((r, int(f)) for f in np.flatnonzero(flat))
        safe = np.where(flat, 1.0, sd)
        z = (x - mu) / safe
        z[:, flat] = 0.0
        out.append(z)
        params.append((mu, sd))
    return out, constant, params


def n_free_parameters(n_states: int, n_features: int, covariance_type: str = "diag") -> int:
    """Free parameters of a Gaussian HMM with K states and d features.

    ``p = (K - 1) + K (K - 1) + K d + c`` — start probabilities, transition matrix
    rows, means, and covariances with ``c = K d`` (diag), ``K d (d + 1) / 2`` (full),
    ``K`` (spherical) or ``d (d + 1) / 2`` (tied).

    Args:
        n_states: K.
        n_features: d.
        covariance_type: 'diag', 'full', 'spherical' or 'tied'. Defaults to 'diag'.

    Returns:
        p.
    """
    k, d = int(n_states), int(n_features)
    cov = {
        CovarianceType.DIAG: k * d,
        CovarianceType.FULL: k * d * (d + 1) // 2,
        CovarianceType.SPHERICAL: k,
        CovarianceType.TIED: d * (d + 1) // 2,
    }[CovarianceType(covariance_type)]
    return (k - 1) + k * (k - 1) + k * d + cov


def bic(log_likelihood: float, n_params: int, n_samples: int) -> float:
    """``-2 log L + p log N`` (lower is better)."""
    return -2.0 * float(log_likelihood) + n_params * math.log(n_samples)


def split_runs(n_runs: int, *, fraction: float, min_runs: int, seed: int) -> tuple[list[int], list[int]]:
    """Choose held-out runs: ``max(1, round(fraction * n))`` of them when ``n >= min_runs``.

    Returns:
        (fitting run indices, held-out run indices), each ascending.
    """
    if n_runs < max(2, min_runs) or fraction <= 0:
        return list(range(n_runs)), []
    n_out = min(n_runs - 1, max(1, round(fraction * n_runs)))
    perm = np.random.default_rng(seed).permutation(n_runs)
    held = sorted(int(i) for i in perm[:n_out])
    return [i for i in range(n_runs) if i not in held], held


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _single_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn, which hmmlearn needs
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _classify(message: str) -> str:
    low = message.lower()
    if "not converging" in low:
        return "not-converged"
    if "degenerate" in low or "zero sum" in low or "null" in low or "nan" in low:
        return "degenerate"
    return "warning"


def fit_hmm(
    x: np.ndarray,
    lengths: list[int],
    *,
    k: int,
    covariance_type: str = "diag",
    n_iter: int = 100,
    tol: float = 1e-2,
    random_state: int = 0,
) -> tuple[Any, list[tuple[str, str]]]:
    """Fit one GaussianHMM, capturing hmmlearn's log messages and warnings.

    EM runs first with hmmlearn's 'scaling' forward-backward (about three times faster
    than 'log', same result when it does not underflow); if that fails or gives
    non-finite parameters, the fit is redone in log space from the same seed. The
    returned model computes in log space (robust scoring of held-out runs).

    Args:
        x: Concatenated observations (N, d).
        lengths: Length of each sequence in ``x``.
        k: Number of states.
        covariance_type: Emission covariance type. Defaults to 'diag'.
        n_iter: Maximum EM iterations. Defaults to 100.
        tol: EM convergence threshold on the log-likelihood gain. Defaults to 1e-2.
        random_state: Seed of the initialisation. Defaults to 0.

    Returns:
        The fitted model (None if fitting failed) and a list of (kind, message) issues.
    """
    model, issues = _fit_once(x, lengths, k, str(covariance_type), n_iter, tol, random_state, "scaling")
    if model is None:
        model, issues = _fit_once(x, lengths, k, str(covariance_type), n_iter, tol, random_state, "log")
    if model is not None:
        model.implementation = "log"
        mon = model.monitor_
        hist = list(mon.history)
        # hmmlearn's ``converged`` is also true when the iteration limit is hit; a fit
        # only converged if its last gain fell below tol before that.
        if mon.iter >= n_iter and (len(hist) < 2 or hist[-1] - hist[-2] >= tol):
            gain = f"last gain {hist[-1] - hist[-2]:.3g} >= tol={tol}" if len(hist) >= 2 else "no gain measured"
            issues.append(("not-converged", f"EM stopped at the iteration limit n_iter={n_iter} ({gain})"))
    return model, issues


def _fit_once(x: np.ndarray, lengths: list[int], k: int, cov: str, n_iter: int, tol: float, seed: int, implementation: str) -> tuple[Any, list[tuple[str, str]]]:
    try:
        from hmmlearn.hmm import GaussianHMM
    except ImportError:  # pragma: no cover - the analyzers extra installs it
        from tracefmt.errors import MissingDependencyError

        raise MissingDependencyError("hmmlearn", "analyzers", "the dynamics analyzer") from None

    issues: list[tuple[str, str]] = []
    handler = _Capture()
    logger = logging.getLogger("hmmlearn")
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    model = GaussianHMM(n_components=k, covariance_type=cov, n_iter=n_iter, tol=tol, random_state=seed, implementation=implementation)
    try:
        # One thread: the k-means initialisation's OpenMP pool costs far more than it
        # saves on problems this small, and much more on a busy machine.
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"), _single_thread():
            warnings.simplefilter("always")
            try:
                model.fit(x, lengths)
            except (ValueError, np.linalg.LinAlgError) as exc:
                issues.append(("degenerate", f"fit failed: {exc}"))
                model = None
        issues.extend((_classify(str(w.message)), str(w.message)) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate
    issues.extend((_classify(m), m) for m in handler.messages)
    if model is not None and any(kind == "not-converged" for kind, _ in issues):
        # hmmlearn reports any decrease of the log-likelihood beyond sqrt(eps); a drop
        # smaller than tol is rounding in EM, not a failure to converge.
        hist = np.asarray(model.monitor_.history, dtype=np.float64)
        drop = float(-np.min(np.diff(hist))) if hist.size >= 2 else 0.0
        if drop <= tol:
            issues = [("rounding" if kind == "not-converged" else kind, msg) for kind, msg in issues]
    if model is not None:
        params = [model.startprob_, model.transmat_, model.means_, model._covars_]
        if any(not np.all(np.isfinite(p)) for p in params):
            issues.append(("degenerate", "non-finite parameters after fitting"))
            model = None
    return model, issues


def _score(model: Any, x: np.ndarray, lengths: list[int]) -> float:
    if model is None or not len(x):
        return -math.inf
    with np.errstate(all="ignore"):
        try:
            s = float(model.score(x, lengths))
        except (ValueError, np.linalg.LinAlgError):
            return -math.inf
    return s if math.isfinite(s) else -math.inf


def select_model(
    runs: list[np.ndarray],
    *,
    k_max: int = 8,
    restarts: int = 5,
    covariance_type: str = "diag",
    n_iter: int = 100,
    tol: float = 1e-2,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    holdout_min_runs: int = 4,
) -> Selection:
    """Fit K = 1..k_max with restarts and choose K by lowest BIC.

    Args:
        runs: One z-scored (T_r, d) array per run.
        k_max: Largest K tried. Defaults to 8.
        restarts: Fits per K, each with its own random_state. Defaults to 5.
        covariance_type: Emission covariance type. Defaults to 'diag'.
        n_iter: Maximum EM iterations per fit. Defaults to 100.
        tol: EM convergence threshold. Defaults to 1e-2.
        seed: Base seed (random_state = seed + 1000 K + restart; held-out split). Defaults to 0.
        holdout_fraction: Fraction of runs held out. Defaults to 0.2.
        holdout_min_runs: Hold runs out only from this many runs on. Defaults to 4.

    Returns:
        The :class:`Selection`.
    """
    train_idx, held_idx = split_runs(len(runs), fraction=holdout_fraction, min_runs=holdout_min_runs, seed=seed)
    x_train = np.concatenate([runs[i] for i in train_idx])
    len_train = [len(runs[i]) for i in train_idx]
    x_held = np.concatenate([runs[i] for i in held_idx]) if held_idx else np.zeros((0, x_train.shape[1]))
    len_held = [len(runs[i]) for i in held_idx]
    d = x_train.shape[1]
    fits: list[KFit] = []
    issues: list[FitIssue] = []
    for k in range(1, k_max + 1):
        n_params = n_free_parameters(k, d, covariance_type)
        if len(x_train) < k:
            issues.append(FitIssue(k, -1, "degenerate", f"only {len(x_train)} checkpoints to fit {k} states; K skipped"))
            fits.append(KFit(k, None, -1, -math.inf, None, math.inf, n_params))
            continue
        best: tuple[float, int, Any] | None = None
        scores = []
        for r in range(restarts):
            model, found = fit_hmm(x_train, len_train, k=k, covariance_type=covariance_type, n_iter=n_iter, tol=tol, random_state=seed + 1000 * k + r)
            issues.extend(FitIssue(k, r, kind, msg) for kind, msg in found)
            score = _score(model, x_held, len_held) if held_idx else _score(model, x_train, len_train)
            scores.append(score)
            if model is not None and (best is None or score > best[0]):
                best = (score, r, model)
        if best is None:
            fits.append(KFit(k, None, -1, -math.inf, None, math.inf, n_params, scores))
            continue
        _, r, model = best
        ll = _score(model, x_train, len_train)
        fits.append(KFit(
            k, model, r, ll, _score(model, x_held, len_held) if held_idx else None,
            bic(ll, n_params, len(x_train)) if math.isfinite(ll) else math.inf, n_params, scores,
        ))  # fmt: skip
    finite = [f for f in fits if math.isfinite(f.bic)]
    best_k = min(finite, key=lambda f: (f.bic, f.k)).k if finite else 1
    return Selection(fits, best_k, train_idx, held_idx, issues)


def relabel_by_first_visit(model: Any, runs: list[np.ndarray]) -> np.ndarray:
    """Renumber the states of ``model`` in place by mean first-visit time (state 0 comes first).

    HMM state numbers are arbitrary; ordering them by when runs first reach them makes
    the labels read as phases. States never visited go last.

    Returns:
        ``perm`` with ``new_label = perm[old_label]``.
    """
    k = model.n_components
    total = np.zeros(k)
    count = np.zeros(k)
    for x in runs:
        with np.errstate(all="ignore"):
            path = model.predict(x)
        for s in range(k):
            hit = np.flatnonzero(path == s)
            if hit.size:
                total[s] += hit[0] / max(1, len(x) - 1)
                count[s] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        first = np.where(count > 0, total / count, np.inf)
    order = np.argsort(first, kind="stable")  # order[new] = old
    perm = np.empty(k, dtype=np.int64)
    perm[order] = np.arange(k)
    model.startprob_ = model.startprob_[order]
    model.transmat_ = model.transmat_[np.ix_(order, order)]
    model.means_ = model.means_[order]
    if str(model.covariance_type) != "tied":
        model._covars_ = model._covars_[order]
    return perm
