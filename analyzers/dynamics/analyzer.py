"""The ``dynamics`` analyzer: latent phases of training with a Gaussian HMM (spec/DYNAMICS.md).

Hu, Chen, Saphra & Cho, "Latent State Models of Training Dynamics" (TMLR 2023): weight
metrics at every checkpoint are the observations of a hidden Markov model whose states are
the phases of training. Given one trace per seed, the analyzer computes the 14 features,
z-scores them per run, fits GaussianHMMs for K = 1..k_max (restarts, held-out runs),
picks K by BIC, decodes the Viterbi state of every checkpoint, explains every observed
transition by the features that drive it, and tests which states go with slower
convergence (detours).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracefmt.findings import Finding

from ..base import Analyzer, AnalyzerResult, Needs, Param
from .analysis import DynamicsFit, change_points, fit_dynamics
from .detours import MIN_RUNS, run_convergence, state_correlations
from .features import ANALYZER, FEATURES, common_features, extract_features
from .options import DynamicsOptions
from .states import MODEL_LOCATION, STATES_LOCATION, states_table, write_model, write_table

if TYPE_CHECKING:
    from tracefmt import Trace

__all__ = ["DynamicsAnalyzer"]

_D = DynamicsOptions()


class DynamicsAnalyzer(Analyzer):
    """Phases of training from weight metrics (Hu et al., TMLR 2023), across one or more runs."""

    name = "dynamics"
    description = "Training phases from weight metrics with a Gaussian HMM: states per checkpoint, transitions and their drivers, detour states."
    needs = Needs(tables=("records",), kinds=("weight",))
    multi_run = True
    params = (
        Param("k_max", _D.k_max, "Largest number of states tried (K = 1..k_max).", low=1),
        Param("restarts", _D.restarts, "Fits per K, each with its own random_state = seed + 1000 K + restart.", low=1),
        Param("covariance_type", _D.covariance_type.value, "Emission covariance: diag, full, spherical or tied."),
        Param("n_iter", _D.n_iter, "Maximum EM iterations per fit.", low=1),
        Param("tol", _D.tol, "EM convergence threshold on the log-likelihood gain.", low=0),
        Param("seed", _D.seed, "Base seed of the restarts and of the held-out split.", low=0),
        Param("holdout_fraction", _D.holdout_fraction, "Fraction of runs held out to choose among restarts.", low=0, high=1),
        Param("holdout_min_runs", _D.holdout_min_runs, "Hold runs out only when there are at least this many.", low=0),
        Param("nodes", None, "Hook points: node names or scopes whose weight matrices are averaged (default: every 2-D or conv weight)."),
        Param("features", None, f"Subset of the features to use (default all: {', '.join(FEATURES)})."),
        Param("phase", None, "Phase of the weight records to read (default: any)."),
        Param("variance_ddof", _D.variance_ddof, "Delta degrees of freedom of the variances (0: population, as recorded; 1: the reference code's torch.var).", low=0),
        Param("median", _D.median.value, "Median of all weights/biases: 'lower' (recorded, torch.median) or 'midpoint' (numpy.median; needs raw tensors)."),
        Param("convergence_metric", _D.convergence_metric, "Scalar series whose threshold crossing defines convergence (detour states)."),
        Param("convergence_phase", None, "Phase of that series (default: eval if present, else train)."),
        Param("convergence_threshold", _D.convergence_threshold, "Threshold of the convergence metric; nan (or none) disables detour analysis.", allow_nan=True),
        Param("convergence_direction", _D.convergence_direction.value, "'above' (metric >= threshold, accuracy) or 'below' (loss)."),
        Param("correlation", _D.correlation.value, "Correlation for detour states: pearson or spearman (two-sided p-values)."),
        Param("alpha", _D.alpha, "Significance level for calling a state a detour.", low=0, low_open=True, high=1),
        Param("write_states", _D.write_states, "'none' (default: the states stay in the result data; analysis never writes into a trace unless asked); 'trace': write dynamics/states.arrow and model.json into each trace (set by analyze --write); or a file path for one table of all runs (analyze --out DIR writes DIR/dynamics-states.arrow)."),
    )

    def analyze(self, trace: Trace, params: dict[str, Any]) -> AnalyzerResult:
        """Analyze a single run (same as :meth:`analyze_runs` with one trace)."""
        return self.analyze_runs([trace], params)

    def analyze_runs(self, traces: list[Trace], params: dict[str, Any]) -> AnalyzerResult:
        """Fit the phase model across ``traces`` (one per seed) and report states and transitions."""
        opts = DynamicsOptions.from_params(params)
        findings: list[Finding] = []
        runs = []
        for t in traces:
            r = extract_features(t, opts)
            findings.extend(r.findings)
            if r.values.shape[0] >= 2 and r.values.shape[1]:
                runs.append((t, r))
            elif r.values.shape[0] < 2 and r.values.shape[1]:
                findings.append(Finding(ANALYZER, "dynamics-run-skipped", "info", f"{t.path}: only {r.values.shape[0]} checkpoint(s); at least 2 are needed"))
        names, lost = common_features([r for _, r in runs])
        findings.extend(lost)
        if not runs or not names:
            findings.append(Finding(ANALYZER, "dynamics-no-data", "info", "no run has weight features at two or more checkpoints; nothing to fit"))
            return AnalyzerResult(findings=findings)
        fitted = fit_dynamics([r.select(names) for _, r in runs], opts)
        findings.extend(fitted.findings)
        if fitted.model is None:
            return AnalyzerResult(findings=findings, data={"features": list(names)})
        run_traces = [t for t, _ in runs]
        findings.extend(_phase_findings(fitted))
        detours, detour_note, conv = _detours(run_traces, fitted, opts, findings)
        table = _states(fitted)
        _write(run_traces, fitted, table, opts, findings)
        data = _data(fitted, table, detours, detour_note, conv)
        return AnalyzerResult(findings=findings, data=data, figures=_figures(fitted, detours, detour_note, conv, opts))


def _phase_findings(fit: DynamicsFit) -> list[Finding]:
    sel = fit.selection
    out = [Finding(
        ANALYZER, "dynamics-model", "info",
        f"{sel.best_k} phase(s) selected by BIC among K = 1..{sel.fits[-1].k} over {len(fit.runs)} run(s) "
        f"({len(sel.heldout_runs)} held out) and {len(fit.features)} features",
        metric="n_states", value=float(sel.best_k),
    )]  # fmt: skip
    for run, path in zip(fit.runs, fit.paths):
        for c in change_points(path):
            out.append(Finding(
                ANALYZER, "dynamics-phase-change", "info",
                f"run {run.run_id}: phase change from state {path[c - 1]} to state {path[c]} at step {run.steps[c]}",
                step_first=int(run.steps[c - 1]), step_last=int(run.steps[c]), metric="state", value=float(path[c]),
            ))  # fmt: skip
    return out


def _detours(traces: list[Trace], fit: DynamicsFit, opts: DynamicsOptions, findings: list[Finding]) -> tuple[list, str, dict[str, int | None]]:
    conv: dict[str, int | None] = {}
    if opts.convergence_threshold is None:
        return [], "detour analysis disabled (convergence_threshold is none)", conv
    reasons = []
    for t, run in zip(traces, fit.runs):
        step, why = run_convergence(t, metric=opts.convergence_metric, phase=opts.convergence_phase,
                                    threshold=opts.convergence_threshold, direction=opts.convergence_direction)  # fmt: skip
        conv[run.run_id] = step
        if step is None:
            reasons.append(f"{run.run_id}: {why}")
    ok = [i for i, run in enumerate(fit.runs) if conv[run.run_id] is not None]
    if reasons:
        findings.append(Finding(ANALYZER, "dynamics-not-converged-run", "info",
                                f"{len(reasons)} run(s) excluded from the detour analysis: {'; '.join(reasons[:3])}{' ...' if len(reasons) > 3 else ''}"))  # fmt: skip
    if len(ok) < MIN_RUNS:
        note = (f"detour states need at least {MIN_RUNS} runs that reach {opts.convergence_metric} "
                f"{'>=' if opts.convergence_direction == 'above' else '<='} {opts.convergence_threshold}; "
                f"{len(ok)} of {len(fit.runs)} do, so no correlation is meaningful (trace more seeds)")  # fmt: skip
        findings.append(Finding(ANALYZER, "dynamics-detours-skipped", "info", note))
        return [], note, conv
    dwell = fit.dwell()[ok]
    steps = np.array([conv[fit.runs[i].run_id] for i in ok], dtype=np.float64)
    corr = state_correlations(dwell, steps, method=opts.correlation, alpha=opts.alpha)
    for c in corr:
        if c.detour:
            findings.append(Finding(
                ANALYZER, "dynamics-detour-state", "warning",
                f"state {c.state} is a detour: time spent in it correlates with later convergence "
                f"({opts.correlation} r = {c.r:+.2f}, two-sided p = {c.p_value:.3g}, {c.n_runs} runs)",
                metric="p_value", value=c.p_value, threshold=opts.alpha,
            ))  # fmt: skip
    return corr, "", conv


def _states(fit: DynamicsFit) -> Any:
    rows: dict[str, list[Any]] = {"run_id": [], "step": [], "epoch": [], "state": [], "posterior": [], "heldout": []}
    held = set(fit.selection.heldout_runs)
    for i, (run, path, post) in enumerate(zip(fit.runs, fit.paths, fit.posteriors)):
        n = len(path)
        rows["run_id"] += [run.run_id] * n
        rows["step"] += run.steps.tolist()
        rows["epoch"] += run.epochs if run.epochs is not None else [None] * n
        rows["state"] += path.tolist()
        rows["posterior"] += post.tolist()
        rows["heldout"] += [i in held] * n
    return states_table(rows, n_states=fit.n_states, features=fit.features)


def _model_json(fit: DynamicsFit) -> dict[str, Any]:
    m = fit.model
    return {
        "n_states": fit.n_states,
        "features": list(fit.features),
        "covariance_type": str(m.covariance_type),
        "startprob": m.startprob_,
        "transmat": m.transmat_,
        "means_z": m.means_,
        "covars_z": m.covars_,
        "bic": {str(f.k): (f.bic if math.isfinite(f.bic) else None) for f in fit.selection.fits},
        "runs": [r.run_id for r in fit.runs],
        "heldout_runs": [fit.runs[i].run_id for i in fit.selection.heldout_runs],
    }


def _write(traces: list[Trace], fit: DynamicsFit, table: Any, opts: DynamicsOptions, findings: list[Finding]) -> None:
    import pyarrow.compute as pc

    target = opts.write_states
    if target.lower() == "none":
        return
    try:
        if target.lower() == "trace":
            for t, run in zip(traces, fit.runs):
                write_table(table.filter(pc.equal(table.column("run_id"), run.run_id)), Path(t.path) / STATES_LOCATION)
                write_model(_model_json(fit), Path(t.path) / MODEL_LOCATION)
        else:
            write_table(table, target)
            write_model(_model_json(fit), Path(target).with_suffix(".json"))
    except OSError as exc:
        findings.append(Finding(ANALYZER, "dynamics-write-failed", "info", f"could not write the state table ({exc}); it is still in the result data"))


def _data(fit: DynamicsFit, table: Any, detours: list, note: str, conv: dict[str, int | None]) -> dict[str, Any]:
    sel = fit.selection
    m = fit.model
    return {
        "features": list(fit.features),
        "n_states": fit.n_states,
        "bic": {f.k: (f.bic if math.isfinite(f.bic) else None) for f in sel.fits},
        "n_params": {f.k: f.n_params for f in sel.fits},
        "heldout_loglik": {f.k: f.heldout_loglik for f in sel.fits},
        "runs": [r.run_id for r in fit.runs],
        "heldout_runs": [fit.runs[i].run_id for i in sel.heldout_runs],
        "states": table,
        "change_points": {r.run_id: [int(r.steps[c]) for c in change_points(p)] for r, p in zip(fit.runs, fit.paths)},
        "transmat": m.transmat_.tolist(),
        "means_z": m.means_.tolist(),
        "edges": [{"source": e.source, "target": e.target, "count": e.count, "probability": float(m.transmat_[e.source, e.target]),
                   "gradient": e.gradient.tolist(), "top": [list(t) for t in e.top]} for e in fit.edges],  # fmt: skip
        "convergence_step": conv,
        "detours": [{"state": c.state, "r": c.r, "p_value": c.p_value, "n_runs": c.n_runs, "detour": c.detour} for c in detours],
        "detour_note": note,
        "transition_dot": transition_dot(fit),
    }


def _figures(fit: DynamicsFit, detours: list, note: str, conv: dict[str, int | None], opts: DynamicsOptions) -> dict[str, Any]:
    from . import graph, plots

    def bic() -> Any:
        return plots.bic_figure(fit.selection)

    def transitions() -> Any:
        return graph.graph_figure(_graph(fit))

    def metrics() -> Any:
        use_epoch = all(r.epochs is not None and all(e is not None for e in r.epochs) for r in fit.runs)
        xs = [np.asarray(r.epochs if use_epoch else r.steps, dtype=np.float64) for r in fit.runs]
        return plots.metrics_figure(xs, [r.values for r in fit.runs], fit.paths, fit.features,
                                    run_labels=[r.run_id for r in fit.runs], x_label="epoch" if use_epoch else "step")  # fmt: skip

    def detour() -> Any:
        ok = [i for i, r in enumerate(fit.runs) if conv.get(r.run_id) is not None]
        dwell = fit.dwell()[ok] if detours else np.zeros((0, fit.n_states))
        steps = np.array([conv[fit.runs[i].run_id] for i in ok], dtype=np.float64) if detours else np.zeros(0)
        return plots.detour_figure(dwell, steps, detours, note=note, metric=f"{opts.convergence_metric} threshold {opts.convergence_threshold}")

    figures = {"bic": bic, "transitions": transitions, "metrics": metrics}
    if detours:  # without a convergence series (or detours) the panel would be empty
        figures["detours"] = detour
    return figures


def _graph(fit: DynamicsFit) -> Any:
    from .graph import transition_graph

    total = fit.dwell().sum(axis=0)
    return transition_graph(fit.model.transmat_, total, fit.edges, title=f"Training phases: K = {fit.n_states} ({len(fit.runs)} runs)")


def transition_dot(fit: DynamicsFit) -> str:
    """DOT source of the state-transition graph of ``fit``."""
    return _graph(fit).source

