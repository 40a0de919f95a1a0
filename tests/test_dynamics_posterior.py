"""Dynamics analyzer: the gradient of the log state-posterior, checked against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from tracefmt.analyzers.dynamics import log_posterior_gradient, log_transition_posterior, transition_drivers
from tracefmt.analyzers.dynamics.fitting import fit_hmm


def random_model(k, d, cov, rng):
    means = rng.normal(0, 1.5, size=(k, d))
    if cov == "diag":
        covars = np.stack([np.diag(rng.uniform(0.3, 2.0, size=d)) for _ in range(k)])
    else:
        a = rng.normal(size=(k, d, d))
        covars = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    transmat = rng.dirichlet(np.ones(k), size=k)
    return means, covars, transmat


def reference_log_posterior(x, i, means, covars, transmat):
    """log p(k | i, x) written independently with scipy's Gaussian density."""
    a = np.array([np.log(transmat[i, k]) + multivariate_normal(means[k], covars[k]).logpdf(x) for k in range(len(means))])
    return a - np.logaddexp.reduce(a)


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_gradient_matches_finite_differences(cov):
    rng = np.random.default_rng(11 if cov == "diag" else 12)
    k, d = 4, 5
    means, covars, transmat = random_model(k, d, cov, rng)
    h = 1e-6
    for _ in range(5):
        x = rng.normal(0, 1.5, size=d)
        i, j = rng.integers(k), rng.integers(k)
        ref = reference_log_posterior(x, i, means, covars, transmat)
        ours = log_transition_posterior(x, i, means=means, covars=covars, transmat=transmat)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
        grad = log_posterior_gradient(x, i, j, means=means, covars=covars, transmat=transmat)
        assert grad.shape == (d,)
        fd = np.empty(d)
        for f in range(d):
            e = np.zeros(d)
            e[f] = h
            fd[f] = (reference_log_posterior(x + e, i, means, covars, transmat)[j] - reference_log_posterior(x - e, i, means, covars, transmat)[j]) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_gradient_with_hmmlearn_covariances():
    """Works for every covariance type through hmmlearn's full-matrix ``covars_``."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(m, 1.0, size=(30, 3)) for m in (-2, 0, 2)])
    for cov in ("diag", "full", "spherical", "tied"):
        model, _ = fit_hmm(x, [90], k=3, covariance_type=cov, n_iter=20, random_state=0)
        point = x[10]
        g = log_posterior_gradient(point, 0, 1, means=model.means_, covars=model.covars_, transmat=model.transmat_)
        fd = np.array([
            (log_transition_posterior(point + e, 0, means=model.means_, covars=model.covars_, transmat=model.transmat_)[1]
             - log_transition_posterior(point - e, 0, means=model.means_, covars=model.covars_, transmat=model.transmat_)[1]) / 2e-6
            for e in np.eye(3) * 1e-6
        ])  # fmt: skip
        np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6)


def test_transition_drivers_name_the_feature_that_moves():
    """Only feature 2 separates the two states: it must be the top driver, with the right sign."""
    means = np.array([[0.0, 0.0, -2.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    covars = np.stack([np.eye(4), np.eye(4)])
    transmat = np.array([[0.9, 0.1], [0.0, 1.0]])
    rng = np.random.default_rng(0)
    x = np.vstack([means[0] + 0.1 * rng.normal(size=(5, 4)), means[1] + 0.1 * rng.normal(size=(5, 4))])
    path = np.array([0] * 5 + [1] * 5)
    names = ("a", "b", "c", "d")
    (edge,) = transition_drivers([x], [path], means=means, covars=covars, transmat=transmat, feature_names=names)
    assert (edge.source, edge.target, edge.count) == (0, 1, 1)
    assert edge.top[0][0] == "c" and edge.top[0][1] > 0
    assert len(edge.top) == 3
