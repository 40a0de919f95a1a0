"""Matplotlib figures of the dynamics analyzer: model selection, metrics by state, detours.

Figures come from the shared helpers of :mod:`tracefmt.analyzers.figures` (Agg-backed,
no pyplot state); states take their colours from its series cycle.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .detours import StateCorrelation
    from .fitting import Selection

__all__ = ["state_colour", "bic_figure", "metrics_figure", "detour_figure"]


def state_colour(state: int) -> str:
    """Hex colour of a state (the shared series cycle), used by the plots and the graph alike."""
    from ..figures import SERIES_COLORS

    return SERIES_COLORS[state % len(SERIES_COLORS)]


def bic_figure(selection: Selection) -> Figure:
    """BIC (and log-likelihoods) against K, the chosen K marked."""
    from ..figures import new_figure

    fig, ax = new_figure(width=6.4, height=4.0)
    ks = [f.k for f in selection.fits]
    bics = [f.bic if math.isfinite(f.bic) else np.nan for f in selection.fits]
    ax.plot(ks, bics, "o-", color="C0", label="BIC (fitting runs)")
    ax.axvline(selection.best_k, color="C3", ls="--", label=f"chosen K = {selection.best_k}")
    ax.set_xlabel("number of states K")
    ax.set_ylabel("BIC (lower is better)")
    ax.set_xticks(ks)
    if selection.heldout_runs:
        ax2 = ax.twinx()
        held = [f.heldout_loglik if f.heldout_loglik is not None and math.isfinite(f.heldout_loglik) else np.nan for f in selection.fits]
        ax2.plot(ks, held, "s:", color="C2", label="held-out log-likelihood")
        ax2.set_ylabel("held-out log-likelihood")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize="small")
    else:
        ax.legend(loc="best", fontsize="small")
    ax.set_title(f"HMM model selection ({len(selection.train_runs)} fitting, {len(selection.heldout_runs)} held-out runs)")
    return fig


def metrics_figure(
    xs: list[np.ndarray],
    values: list[np.ndarray],
    paths: list[np.ndarray],
    feature_names: tuple[str, ...],
    *,
    run_labels: list[str],
    x_label: str = "step",
) -> Figure:
    """Each feature against the checkpoint, one line per run, points coloured by state.

    Phase changes (checkpoints where a run's Viterbi state differs from the previous one)
    are marked with a black triangle on the curve; with a single run also with a dashed
    vertical line.
    """
    from matplotlib.lines import Line2D

    from ..figures import new_figure

    n = len(feature_names)
    cols = 4 if n > 6 else min(n, 3) or 1
    rows = max(1, math.ceil(n / cols))
    fig, axes = new_figure(nrows=rows, ncols=cols, width=3.2 * cols, height=2.4 * rows + 0.6, squeeze=False)
    axes = axes.ravel()
    n_states = int(max((p.max() for p in paths if len(p)), default=0)) + 1
    for f, name in enumerate(feature_names):
        ax = axes[f]
        for x, v, p in zip(xs, values, paths):
            ax.plot(x, v[:, f], color="0.75", lw=0.8, zorder=1)
            ax.scatter(x, v[:, f], c=[state_colour(int(s)) for s in p], s=9, zorder=2, linewidths=0)
            change = np.flatnonzero(np.diff(p) != 0) + 1
            if change.size:
                ax.scatter(x[change], v[change, f], marker="v", s=26, color="black", zorder=3)
                if len(xs) == 1:
                    for c in change:
                        ax.axvline(x[c], color="black", ls="--", lw=0.7, zorder=0)
        ax.set_title(name, fontsize="medium")
        ax.tick_params(labelsize="x-small")
    for ax in axes[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="o", ls="", color=state_colour(s), label=f"state {s}") for s in range(n_states)]
    handles.append(Line2D([], [], marker="v", ls="", color="black", label="phase change"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize="small")
    fig.suptitle(f"Weight metrics by {x_label}, coloured by HMM state ({len(xs)} run{'s' if len(xs) != 1 else ''}: {', '.join(run_labels[:4])}{' ...' if len(run_labels) > 4 else ''})", fontsize="medium")
    return fig


def detour_figure(
    dwell: np.ndarray,
    conv_steps: np.ndarray,
    correlations: list[StateCorrelation],
    *,
    note: str = "",
    metric: str = "",
) -> Figure:
    """Dwell in each state against the convergence step, one panel per state, r and p in the title.

    With too few converged runs the figure shows ``note`` instead.
    """
    from ..figures import new_figure

    if not correlations:
        fig, ax = new_figure(width=6.4, height=2.0)
        ax.axis("off")
        ax.text(0.5, 0.5, note or "detour states not assessed", ha="center", va="center", wrap=True)
        fig.suptitle("Detour states")
        return fig
    k = len(correlations)
    cols = min(k, 4)
    rows = math.ceil(k / cols)
    fig, axes = new_figure(nrows=rows, ncols=cols, width=3.0 * cols, height=2.6 * rows + 0.5, squeeze=False)
    axes = axes.ravel()
    for c in correlations:
        ax = axes[c.state]
        ax.scatter(dwell[:, c.state], conv_steps, color=state_colour(c.state), s=18)
        stat = "no correlation (same dwell in every run)" if math.isnan(c.r) else f"r = {c.r:+.2f}, p = {c.p_value:.3g}"
        ax.set_title(f"state {c.state}{' (detour)' if c.detour else ''}\n{stat}", fontsize="small", color="C3" if c.detour else "black")
        ax.set_xlabel("checkpoints in state", fontsize="small")
        ax.set_ylabel("convergence step", fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[k:]:
        ax.set_visible(False)
    fig.suptitle(f"Detour states: dwell vs convergence ({metric}; {correlations[0].n_runs} runs)", fontsize="medium")
    return fig

