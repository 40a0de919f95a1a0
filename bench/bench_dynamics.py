"""Benchmark: HMM model selection of the dynamics analyzer (target: under 30 s).

Workload (issue 7): 8 values of K x 5 restarts on 10 runs x 200 checkpoints x 14 features
(piecewise-stationary synthetic features with 4 phases, z-scored per run).

* ``select_model``: the analyzer's fitting (``tracefmt.analyzers.dynamics.select_model``:
  2 runs held out, hmmlearn messages captured, one BLAS/OpenMP thread per fit, BIC);
* ``fit_dynamics``: the same plus Viterbi decoding, relabelling and transition drivers;
* baseline ``plain hmmlearn``: the same 40 ``GaussianHMM(...).fit`` + ``score`` calls
  written directly, with the libraries' default threading (what a direct user gets);
* ``plain hmmlearn, 1 thread``: the same limited to one BLAS/OpenMP thread, to separate
  the threading effect from the 'scaling' forward-backward the analyzer uses.

Prints wall and CPU (process) time of each, the wall-time ratio to the baseline and
whether the 30 s target is met (wall time, the user's experience).
Run by hand: ``.venv/bin/python bench/bench_dynamics.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np

from tracefmt.analyzers.dynamics import FEATURES, DynamicsOptions, RunFeatures, fit_dynamics, select_model, zscore_runs

K_MAX, RESTARTS, RUNS, CHECKPOINTS = 8, 5, 10, 200
TARGET_S = 30.0


def workload(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 2, size=(4, len(FEATURES)))
    runs = []
    for _ in range(RUNS):
        bounds = np.sort(rng.choice(np.arange(20, CHECKPOINTS - 20), size=3, replace=False))
        labels = np.searchsorted(bounds, np.arange(CHECKPOINTS), side="right")
        runs.append(means[labels] + rng.normal(0, 1.0, size=(CHECKPOINTS, len(FEATURES))))
    return runs


def plain_hmmlearn(z: list[np.ndarray], *, one_thread: bool = False) -> float:
    from hmmlearn.hmm import GaussianHMM

    x = np.concatenate(z[:8])
    lengths = [len(a) for a in z[:8]]
    held = np.concatenate(z[8:])
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    import contextlib

    from threadpoolctl import threadpool_limits

    best = -np.inf
    with warnings.catch_warnings(), threadpool_limits(limits=1) if one_thread else contextlib.nullcontext():
        warnings.simplefilter("ignore")
        for k in range(1, K_MAX + 1):
            for r in range(RESTARTS):
                m = GaussianHMM(n_components=k, covariance_type="diag", n_iter=100, tol=1e-2, random_state=1000 * k + r).fit(x, lengths)
                best = max(best, m.score(held, [CHECKPOINTS] * 2))
    return best


def timed(fn, repeat: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the best time is kept (default 1)")
    args = ap.parse_args()
    raw = workload()
    z, _, _ = zscore_runs(raw)
    import hmmlearn.hmm  # noqa: F401 - import cost outside the timings

    base = timed(lambda: plain_hmmlearn(z), args.repeat)
    one = timed(lambda: plain_hmmlearn(z, one_thread=True), args.repeat)
    sel_holder = {}
    ours = timed(lambda: sel_holder.update(sel=select_model(z, k_max=K_MAX, restarts=RESTARTS)), args.repeat)
    runs = [RunFeatures(f"run{i}", np.arange(CHECKPOINTS), None, x, FEATURES) for i, x in enumerate(raw)]
    full = timed(lambda: fit_dynamics(runs, DynamicsOptions(k_max=K_MAX, restarts=RESTARTS)), args.repeat)
    sel = sel_holder["sel"]
    print(f"workload: K = 1..{K_MAX} x {RESTARTS} restarts on {RUNS} runs x {CHECKPOINTS} checkpoints x {len(FEATURES)} features")
    print(f"{'':30s} {'wall':>8s} {'cpu':>8s}  wall ratio")
    for label, (wall, cpu) in (("plain hmmlearn (baseline)", base), ("plain hmmlearn, 1 thread", one), ("select_model", ours), ("fit_dynamics (+ decoding)", full)):
        print(f"{label:30s} {wall:7.2f}s {cpu:7.2f}s  {wall / base[0]:.2f}x")
    print(f"select_model chose K = {sel.best_k}; {len(sel.issues)} captured fit issues")
    verdict = "met" if full[0] < TARGET_S else "NOT met"
    print(f"target < {TARGET_S:.0f} s wall for the fitting: {verdict} ({full[0]:.2f} s)")

if __name__ == "__main__":
    main()
