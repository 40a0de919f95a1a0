"""Loss curve analysis: divergence, spikes, plateaus, noise and the train/validation gap.

Sources:
    * fast.ai learning-rate finder (Smith 2015, "Cyclical Learning Rates"; fastai
      ``lr_find``): training has diverged once the (smoothed) loss exceeds 4 x the lowest
      loss seen so far.
    * Robust outlier detection with the median absolute deviation (Hampel filter): a spike
      is a point far above the running median, measured in scaled MADs.
    * Goodfellow, Bengio & Courville, "Deep Learning" (2016), section 7.8 (early stopping):
      validation loss rising while training loss keeps falling is overfitting; a large
      generalisation gap means the model memorises its training set.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.compute as pc

from tracefmt import Trace
from tracefmt.findings import Finding

from .base import Analyzer, AnalyzerResult, Needs, NotApplicable, Param
from .causes import lr_rise_note

__all__ = ["LossAnalyzer", "rolling_median"]

#: 1 / Phi^-1(3/4): scales a median absolute deviation to a normal standard deviation.
MAD_SCALE = 1.4826
#: Points kept for plateau and noise analysis of very long curves (bucket means).
_MAX_POINTS = 4096


def rolling_median(y: np.ndarray, window: int, *, include_current: bool = True) -> np.ndarray:
    """Trailing median of ``y`` over ``window`` points (fewer at the start; NaN before the first point if not ``include_current``)."""
    n = len(y)
    out = np.full(n, np.nan)
    if n == 0:
        return out
    w = max(1, int(window))
    pad = np.concatenate([np.full(w - 1, np.nan), y])
    views = np.lib.stride_tricks.sliding_window_view(pad, w)
    if include_current:
        out[:] = np.nanmedian(views, axis=1) if w > 1 else y
    else:
        out[1:] = np.nanmedian(views[:-1], axis=1) if w > 1 else y[:-1]
    return out


class LossAnalyzer(Analyzer):
    """Divergence, spikes, plateaus, noisy loss and train/validation gap from the scalars table."""

    name = "loss"
    description = "Loss divergence (NaN, or growth past 4 x its minimum), spikes, plateaus, noisy loss, and the train/validation gap (overfitting), from the scalars table."
    needs = Needs(tables=("scalars",))
    params = (
        Param("loss_name", "loss", "scalar series holding the training loss"),
        Param("val_names", ("val_loss", "valid_loss", "validation_loss", "eval_loss", "test_loss"), "series holding the validation loss (else loss_name in the eval phase)"),
        Param("smooth", 5, "points in the trailing median that smooths the curve", low=1),
        Param("diverge_factor", 4.0, "diverged once the smoothed loss exceeds this multiple of its running minimum and its initial value", low=1),
        Param("spike_ratio", 3.0, "a spike is at least this multiple of the running median ...", low=1),
        Param("spike_z", 6.0, "... and this many scaled MADs above it", low=0),
        Param("spike_min_rise", 0.1, "... and rises by at least this fraction of the loss range (initial - best)", low=0),
        Param("plateau_fraction", 0.2, "a plateau lasts at least this fraction of the run ...", low=0, low_open=True, high=1),
        Param("plateau_rel", 0.01, "... with a relative improvement below this", low=0),
        Param("noise_cv", 0.5, "scaled MAD of the residual around the smoothed curve, relative to its level, above which the loss is noisy (info)", low=0),
        Param("gap_ratio", 2.0, "validation loss at least this multiple of the training loss is a generalisation gap (info) ...", low=1),
        Param("gap_ratio_warn", 10.0, "... and at least this multiple, a memorised training set (warning)", low=1),
        Param("gap_min", 0.1, "... if the difference is at least this fraction of the initial training loss", low=0),
        Param("val_rise", 0.1, "validation loss this fraction above its minimum while training loss falls is overfitting", low=0),
    )

    def analyze(self, trace: Trace, params: dict[str, Any]) -> AnalyzerResult:
        """Analyze the loss curves of ``trace``."""
        scalars = trace.scalars
        name = str(params["loss_name"])
        names = set(pc.unique(scalars.column("name")).to_pylist())
        if name not in names:
            raise NotApplicable(f"no scalar series named {name!r} (present: {', '.join(sorted(names)) or 'none'})")
        steps, y = _series(scalars, name, "train")
        if not len(steps):
            phases = sorted(set(pc.unique(scalars.filter(pc.equal(scalars.column("name"), name)).column("phase")).to_pylist()))
            steps, y = _series(scalars, name, phases[0])
        val_steps, val = _validation(scalars, params, names)
        result = AnalyzerResult()
        result.data.update(steps=steps.tolist(), loss=y.tolist(), val_steps=val_steps.tolist(), val_loss=val.tolist())
        w = max(1, int(params["smooth"]))
        bad = np.flatnonzero(~np.isfinite(y))
        end = int(bad[0]) if len(bad) else len(y)
        fin_steps, fin = steps[:end], y[:end]
        sm = rolling_median(fin, w)
        # The first point is the reference: a run that explodes within its first few steps
        # would otherwise drag a median of the opening window up with it.
        init = float(fin[0]) if len(fin) else np.nan
        result.data["smoothed"] = sm.tolist()
        found = _divergence(fin, sm, init, params)
        if found is not None or len(bad):
            div = _divergence_finding(steps, y, fin, sm, found, bad, params)
            note = lr_rise_note(trace)(int(div.step_first)) if div.step_first is not None else ""
            result.findings.append(replace(div, message=div.message + note) if note else div)
        stop = found[0] if found is not None else end
        if stop >= 3:
            result.findings += _spikes(fin_steps[:stop], fin[:stop], init, params)
            result.findings += _plateaus(fin_steps[:stop], sm[:stop], params)
            result.findings += _noise(fin_steps[:stop], fin[:stop], sm[:stop], params)
        if len(val) >= 1 and len(fin):
            result.findings += _gap(steps, y, val_steps, val, init, params)
        result.figures["loss"] = lambda: _plot(steps, y, sm, val_steps, val, result.findings)
        return result


def _series(scalars: Any, name: str, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one series (mean over ranks and repeats of a step), sorted by step."""
    t = scalars.filter(pc.and_(pc.equal(scalars.column("name"), name), pc.equal(scalars.column("phase"), phase)))
    if not t.num_rows:
        return np.array([], dtype=np.int64), np.array([])
    steps = t.column("step").to_numpy()
    vals = t.column("value").to_numpy()
    uniq, inv = np.unique(steps, return_inverse=True)
    if len(uniq) == len(steps):
        order = np.argsort(steps, kind="stable")
        return steps[order], vals[order].astype(np.float64)
    # NaN stays NaN in the mean: a non-finite value on any rank is a non-finite loss.
    sums = np.bincount(inv, weights=vals)
    return uniq, sums / np.bincount(inv)


def _validation(scalars: Any, params: dict[str, Any], names: set[str]) -> tuple[np.ndarray, np.ndarray]:
    for n in params["val_names"]:
        if n in names:
            for phase in ("eval", "train", "infer"):
                s, v = _series(scalars, n, phase)
                if len(s):
                    return s, v
    return _series(scalars, str(params["loss_name"]), "eval")


def _divergence(fin: np.ndarray, sm: np.ndarray, init: float, params: dict[str, Any]) -> tuple[int, int | None] | None:
    """``(onset, recovered)`` of the first diverged stretch of the finite curve, or None.

    Diverged: the smoothed loss (a trailing median, so one or two outliers never count) is
    above ``diverge_factor`` x its running minimum and above the initial loss. ``recovered``
    is the index where the smoothed loss is back below that bound for good, None if it
    stays diverged to the end.
    """
    if len(sm) < 2:
        return None
    runmin = np.minimum.accumulate(sm)
    bad = (sm > params["diverge_factor"] * runmin) & (sm > init) & (runmin > 0)
    if not bad.any():
        return None
    start = int(np.flatnonzero(bad)[0])
    recovered = None if bad[-1] else int(np.flatnonzero(bad)[-1]) + 1
    # The smoothed curve lags: the first raw point of the rise lies within one window before.
    w = max(1, int(params["smooth"]))
    lo = max(0, start - w + 1)
    ref = runmin[max(0, lo - 1)]
    raw = np.flatnonzero((fin[lo : start + 1] > params["diverge_factor"] * ref) & (fin[lo : start + 1] > init))
    return (lo + int(raw[0]) if len(raw) else start), recovered


def _divergence_finding(steps: np.ndarray, y: np.ndarray, fin: np.ndarray, sm: np.ndarray, found: tuple[int, int | None] | None, bad: np.ndarray, params: dict[str, Any]) -> Finding:
    nan_step = int(steps[bad[0]]) if len(bad) else None
    what = "NaN" if len(bad) and np.isnan(y[bad[0]]) else "Inf"
    if found is not None:
        onset, recovered = found
        best = float(np.min(sm[: onset + 1]))
        if nan_step is not None:
            tail, sev = f", then becomes {what} at step {nan_step}", "error"
        elif recovered is None:
            tail, sev = f", reaching {float(np.nanmax(fin[onset:])):.4g}", "error"
        else:
            # Still an error: the run lost everything it had learnt, whatever came after.
            tail, sev = f", reaching {float(np.nanmax(fin[onset:recovered])):.4g}, and only falls back by step {int(steps[recovered])}", "error"
        return Finding(
            "loss", "divergence", sev,
            f"Loss diverges from step {int(steps[onset])}: it rises above {params['diverge_factor']:g} x its best value ({best:.4g}){tail}.",
            step_first=int(steps[onset]), step_last=int(steps[recovered - 1] if recovered is not None and nan_step is None else steps[-1]),
            metric="loss", value=float(fin[onset]), threshold=params["diverge_factor"] * best,
        )  # fmt: skip
    return Finding(
        "loss", "divergence", "error", f"Loss becomes {what} at step {nan_step}.",
        step_first=nan_step, step_last=int(steps[-1]), metric="loss", value=float(y[bad[0]]), threshold=None,
    )  # fmt: skip


def _spikes(steps: np.ndarray, y: np.ndarray, init: float, params: dict[str, Any]) -> list[Finding]:
    w = max(3, int(params["smooth"]))
    med = rolling_median(y, w, include_current=False)
    resid = np.abs(y - rolling_median(y, w))
    mad = rolling_median(resid, w, include_current=False) * MAD_SCALE
    span = max(init - float(np.min(y)), 0.0)
    with np.errstate(invalid="ignore"):
        hit = (y > params["spike_ratio"] * med) & (y - med > params["spike_z"] * mad) & (y - med > params["spike_min_rise"] * span) & (med > 0)
    hit[:w] = False
    idx = np.flatnonzero(hit)
    if not len(idx):
        return []
    ratio = y[idx] / med[idx]
    listed = ", ".join(str(int(s)) for s in steps[idx][:5]) + (" ..." if len(idx) > 5 else "")
    return [Finding(
        "loss", "loss-spike", "warning",
        f"{len(idx)} loss spike(s) at step {listed}: up to {float(ratio.max()):.3g} x the running median.",
        step_first=int(steps[idx[0]]), step_last=int(steps[idx[-1]]), metric="loss_to_median", value=float(ratio.max()), threshold=params["spike_ratio"],
    )]  # fmt: skip


def _downsample(steps: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(y) <= _MAX_POINTS:
        return steps, y
    edges = np.linspace(0, len(y), _MAX_POINTS + 1).astype(int)
    return steps[edges[:-1]], np.add.reduceat(y, edges[:-1]) / np.diff(edges)


def _plateaus(steps: np.ndarray, sm: np.ndarray, params: dict[str, Any]) -> list[Finding]:
    s, v = _downsample(steps, sm)
    n = len(v)
    length = max(3, int(np.ceil(params["plateau_fraction"] * n)))
    if n < length + 1:
        return []
    # Improvement available from each point within the next `length` points.
    future_min = np.lib.stride_tricks.sliding_window_view(np.concatenate([v, np.full(length, np.inf)]), length + 1)[:n].min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = (v - future_min) / np.abs(v)
    flat = gain < params["plateau_rel"]
    flat[n - length :] = False  # not enough future to judge
    out = []
    head = min(n - 1, 5)
    start = float(np.median(v[:head]))
    best = float(v[head:].min())
    total_gain = (start - best) / abs(start) if start else 0.0
    # Progress is judged only on a curve long enough to judge: the smoothed curve lags by
    # `smooth` points, so it needs an opening and a closing window of `smooth` points each
    # and at least as much again between them (4 x smooth), else "no progress" is the lag.
    enough = n >= 4 * max(1, int(params["smooth"]))
    if enough and total_gain < params["plateau_rel"]:
        out.append(Finding(
            "loss", "no-progress", "warning",
            f"The loss never improves by {params['plateau_rel']:.0%} over the run (from {start:.4g}, best {best:.4g}): the model does not learn.",
            step_first=int(s[0]), step_last=int(s[-1]), metric="relative_improvement", value=total_gain, threshold=params["plateau_rel"],
        ))  # fmt: skip
        return out
    runs = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(np.int8), [0]])))
    for a, b in zip(runs[::2], runs[1::2]):
        last = min(n - 1, b - 1 + length)
        out.append(Finding(
            "loss", "plateau", "info",
            f"The loss stalls between steps {int(s[a])} and {int(s[last])} (improves by less than {params['plateau_rel']:.0%}) at about {v[a]:.4g}.",
            step_first=int(s[a]), step_last=int(s[last]), metric="relative_improvement", value=float(np.nanmax(gain[a:b])), threshold=params["plateau_rel"],
        ))  # fmt: skip
    return out


def _noise(steps: np.ndarray, y: np.ndarray, sm: np.ndarray, params: dict[str, Any]) -> list[Finding]:
    level = float(np.median(np.abs(sm)))
    if not level > 0:
        return []
    cv = MAD_SCALE * float(np.median(np.abs(y - sm))) / level
    if cv < params["noise_cv"]:
        return []
    return [Finding(
        "loss", "noisy-loss", "info",
        f"The loss is noisy: its step-to-step scatter is {cv:.2f} x its level (a small batch or a high learning rate).",
        step_first=int(steps[0]), step_last=int(steps[-1]), metric="residual_cv", value=cv, threshold=params["noise_cv"],
    )]  # fmt: skip


def _gap(steps: np.ndarray, y: np.ndarray, val_steps: np.ndarray, val: np.ndarray, init: float, params: dict[str, Any]) -> list[Finding]:
    fin = np.isfinite(val)
    if not fin.any():
        return []
    vs, vv = val_steps[fin], val[fin]
    ok = np.isfinite(y)
    ts, ty = steps[ok], y[ok]
    if not len(ty):
        return []
    w = max(1, int(params["smooth"]))

    def train_at(step: int) -> float:
        k = int(np.searchsorted(ts, step, side="right"))
        return float(np.mean(ty[max(0, k - w) : max(1, k)]))

    out = []
    t_last = train_at(int(vs[-1]))
    v_last = float(vv[-1])
    if t_last > 0 and v_last >= params["gap_ratio"] * t_last and v_last - t_last >= params["gap_min"] * init:
        severe = v_last >= params["gap_ratio_warn"] * t_last
        out.append(Finding(
            "loss", "train-val-gap", "warning" if severe else "info",
            f"Validation loss {v_last:.4g} is {v_last / t_last:.3g} x the training loss {t_last:.4g} at step {int(vs[-1])}: the model fits its training set far better than unseen data.",
            step_first=int(vs[0]), step_last=int(vs[-1]), metric="val_to_train_loss", value=v_last / t_last, threshold=params["gap_ratio_warn" if severe else "gap_ratio"],
        ))  # fmt: skip
    best = int(np.argmin(vv))
    if best < len(vv) - 1 and v_last >= (1 + params["val_rise"]) * vv[best] and t_last < train_at(int(vs[best])):
        out.append(Finding(
            "loss", "overfitting", "warning",
            f"Validation loss rises from {vv[best]:.4g} at step {int(vs[best])} to {v_last:.4g} while the training loss keeps falling: overfitting (best checkpoint near step {int(vs[best])}).",
            step_first=int(vs[best]), step_last=int(vs[-1]), metric="val_loss_rise", value=v_last / vv[best], threshold=1 + params["val_rise"],
        ))  # fmt: skip
    return out


def _plot(steps: np.ndarray, y: np.ndarray, sm: np.ndarray, val_steps: np.ndarray, val: np.ndarray, findings: list[Finding]) -> Any:
    from .figures import SERIES_COLORS, SEVERITY_COLORS, new_figure

    fig, ax = new_figure(width=8, height=4.5)
    ok = np.isfinite(y)
    ax.plot(steps[ok], y[ok], lw=0.6, color=SERIES_COLORS[0], alpha=0.5, label="train loss")
    ax.plot(steps[: len(sm)], sm, lw=1.5, color=SERIES_COLORS[0], label="train (smoothed)")
    if len(val):
        ax.plot(val_steps, val, "o-", ms=3, lw=1.2, color=SERIES_COLORS[1], label="validation loss")
    for f in findings:
        if f.step_first is not None and f.severity.rank > 0:
            ax.axvline(f.step_first, color=SEVERITY_COLORS[f.severity.value], ls="--", lw=0.8)
    if ok.any() and np.nanmin(y[ok]) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend(fontsize=7)
    return fig
