"""Dynamics analyzer: z-scoring, HMM model selection, BIC parameter count, captured warnings.

Everything here works on feature matrices (no trace), with phases known by construction.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from tracefmt.analyzers.dynamics import (
    FEATURES,
    DynamicsOptions,
    RunFeatures,
    change_points,
    fit_dynamics,
    n_free_parameters,
    select_model,
    zscore_runs,
)
from tracefmt.analyzers.dynamics.fitting import bic, fit_hmm, split_runs
from tracefmt.errors import UsageError


def piecewise_runs(*, n_runs=6, n_checkpoints=60, k=3, noise=1.0, seed=1):
    """Runs whose 14 features are piecewise stationary: k phases, change points known per run (they differ between runs)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, size=(k, len(FEATURES)))
    runs, truth = [], []
    for r in range(n_runs):
        # Change points near the k-quantiles, +-4 checkpoints per run: the phases keep
        # similar proportions, so per-run z-scoring maps a phase to similar values.
        bounds = np.array([round((i + 1) * n_checkpoints / k) + int(rng.integers(-4, 5)) for i in range(k - 1)])
        labels = np.searchsorted(bounds, np.arange(n_checkpoints), side="right")
        x = means[labels] + rng.normal(0, noise, size=(n_checkpoints, len(FEATURES)))
        runs.append(RunFeatures(f"run{r}", np.arange(n_checkpoints) * 10, None, x, FEATURES))
        truth.append(bounds.tolist())
    return runs, truth


@pytest.mark.parametrize("seed", [1, 2])
def test_known_phases_select_true_k_and_change_points(seed):
    runs, truth = piecewise_runs(seed=seed)
    fit = fit_dynamics(runs, DynamicsOptions(k_max=5, restarts=2, seed=0))
    assert fit.n_states == 3
    bics = {f.k: f.bic for f in fit.selection.fits}
    assert bics[3] == min(bics.values())
    for path, bounds in zip(fit.paths, truth):
        found = change_points(path)
        assert len(found) == len(bounds), (found, bounds)
        assert np.all(np.abs(found - np.asarray(bounds)) <= 1), (found, bounds)
        # States are numbered by first visit: every run goes 0 -> 1 -> 2.
        assert path[0] == 0 and path[-1] == 2
    # Four runs or more: 20 % are held out to choose among restarts.
    assert len(fit.selection.heldout_runs) == 1


def test_fitting_is_reproducible():
    runs, _ = piecewise_runs(n_runs=4, n_checkpoints=40, seed=3)
    opts = DynamicsOptions(k_max=4, restarts=2, seed=7)
    a, b = fit_dynamics(runs, opts), fit_dynamics(runs, opts)
    assert a.n_states == b.n_states
    assert [f.bic for f in a.selection.fits] == [f.bic for f in b.selection.fits]
    assert all(np.array_equal(p, q) for p, q in zip(a.paths, b.paths))


@pytest.mark.parametrize("cov", ["diag", "full", "spherical", "tied"])
def test_parameter_count_matches_hmmlearn_bic(cov):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 1.0, size=(40, 4)) for m in (-2, 0, 2)])
    lengths = [60, 60]
    for k in (1, 2, 3, 4):
        model, _ = fit_hmm(x, lengths, k=k, covariance_type=cov, n_iter=20, random_state=k)
        ours = bic(model.score(x, lengths), n_free_parameters(k, 4, cov), len(x))
        assert ours == pytest.approx(model.bic(x, lengths), rel=1e-12)
    # The formula itself, for diag: (K-1) + K(K-1) + K d + K d.
    assert n_free_parameters(3, 14, "diag") == 2 + 6 + 42 + 42
    assert n_free_parameters(2, 3, "full") == 1 + 2 + 6 + 12


def test_selected_fit_bic_is_hmmlearns():
    runs, _ = piecewise_runs(n_runs=3, n_checkpoints=40, seed=5)
    z, _, _ = zscore_runs([r.values for r in runs])
    sel = select_model(z, k_max=3, restarts=2, holdout_min_runs=4)
    assert sel.heldout_runs == []
    x = np.concatenate(z)
    for f in sel.fits:
        assert f.bic == pytest.approx(f.model.bic(x, [len(a) for a in z]), rel=1e-9)


def test_constant_feature_becomes_zero_with_warning():
    runs, _ = piecewise_runs(n_runs=3, n_checkpoints=40, seed=2)
    runs[1].values[:, 5] = 4.25  # constant in one run only
    z, constant, _ = zscore_runs([r.values for r in runs])
    assert constant == [(1, 5)]
    assert np.all(z[1][:, 5] == 0.0) and np.isfinite(z[1]).all()
    assert np.allclose(z[0].mean(axis=0), 0) and np.allclose(z[0].std(axis=0), 1)
    fit = fit_dynamics(runs, DynamicsOptions(k_max=3, restarts=1))
    warn = [f for f in fit.findings if f.code == "dynamics-constant-feature"]
    assert len(warn) == 1 and warn[0].metric == FEATURES[5] and warn[0].severity == "info"


def test_holdout_split():
    assert split_runs(3, fraction=0.2, min_runs=4, seed=0) == ([0, 1, 2], [])
    train, held = split_runs(10, fraction=0.2, min_runs=4, seed=0)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert split_runs(10, fraction=0.2, min_runs=4, seed=0) == (train, held)


def test_hmmlearn_messages_become_findings_not_output(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    rng = np.random.default_rng(4)
    runs = [RunFeatures(f"r{i}", np.arange(5), None, rng.normal(size=(5, len(FEATURES))), FEATURES) for i in range(2)]
    # One EM iteration cannot converge, and 5 states (164 parameters) on 10 checkpoints x
    # 14 features (140 numbers) is a degenerate fit: hmmlearn logs it.
    fit = fit_dynamics(runs, DynamicsOptions(k_max=5, restarts=2, n_iter=1, tol=1e-9))
    codes = {f.code for f in fit.findings}
    assert "dynamics-not-converged" in codes
    assert "dynamics-degenerate-fit" in codes or "dynamics-fit-warning" in codes
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not [r for r in caplog.records if r.name.startswith("hmmlearn")]
    assert logging.getLogger("hmmlearn").propagate  # restored after fitting
    chosen = [f for f in fit.findings if f.code == "dynamics-not-converged" and f.value == fit.n_states]
    # Fit details are bookkeeping (info); the message says the kept restart was affected.
    assert chosen and chosen[0].severity == "info" and "including the kept one" in chosen[0].message


def test_options_are_validated():
    opts = DynamicsOptions.from_params({"k_max": "4", "covariance_type": "full", "nodes": "fc1,fc2", "convergence_threshold": "none"})
    assert opts.k_max == 4 and opts.covariance_type == "full" and opts.nodes == ("fc1", "fc2") and opts.convergence_threshold is None
    with pytest.raises(UsageError, match="unknown parameter 'kmax'"):
        DynamicsOptions.from_params({"kmax": 3})
    with pytest.raises(UsageError, match="covariance_type"):
        DynamicsOptions.from_params({"covariance_type": "banded"})
    with pytest.raises(UsageError, match="variance_ddof"):
        DynamicsOptions.from_params({"variance_ddof": 2})
    with pytest.raises(UsageError, match="unknown feature 'l3'; available: l1, l2"):
        DynamicsOptions.from_params({"features": "l1,l3"})


def test_bic_formula():
    assert bic(-100.0, 10, 50) == pytest.approx(200.0 + 10 * math.log(50))


def test_fitted_model_scores_far_data_in_log_space():
    """EM runs in hmmlearn's fast 'scaling' mode; the returned model scores in log space,
    so held-out runs far from every state give a finite (very low) likelihood, not an underflow."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.01, (50, 3)), rng.normal(5, 0.01, (50, 3))])
    model, issues = fit_hmm(x, [100], k=2, n_iter=50)
    assert model.implementation == "log"
    far = np.full((5, 3), 1e4)
    assert np.isfinite(model.score(far)) and model.score(far) < -1e6
    model.implementation = "scaling"
    with pytest.raises(ValueError, match="underflow"):
        model.score(far)
