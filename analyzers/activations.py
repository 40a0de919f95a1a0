"""Activation health: per-layer telemetry, the colorful dimension, saturation, the rising crash.

Sources:
    * fast.ai course part 2 (2019 lesson 10 "looking inside the model", 2022 lesson 16
      ``ActivationStats``): per-layer mean and standard deviation over the batches
      ("telemetry"), the "colorful dimension" plot (each step's activation histogram as
      one column, log1p of the counts as colour), and the pattern where activations grow
      exponentially early in training and then suddenly collapse ("rising then crashing",
      which wastes training and often leaves dead units).
    * Glorot & Bengio (2010): sigmoid and tanh units saturating near their bounds, where
      their derivative vanishes (the top hidden layer of a deep sigmoid network saturates
      at 0 early in training).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tracefmt import Trace
from tracefmt.findings import Finding
from tracefmt.op_classes import OpClass

from .base import AnalyzerResult, Needs, Param, RecordConsumer, StreamingAnalyzer
from .scan import node_table, training_grid
from .series import BucketHistograms, BucketStats, HistBlock, LayerSeries

__all__ = ["ActivationsAnalyzer", "BOUNDED_OPS", "saturation_rms", "saturated_fraction_bound"]

#: Activation functions with a bounded output: op_type (lower case) -> (low, high).
BOUNDED_OPS = {
    "tanh": (-1.0, 1.0),
    "hardtanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "hardsigmoid": (0.0, 1.0),
    "logsigmoid": None,
}


def _bounds(op_type: str) -> tuple[float, float] | None:
    return BOUNDED_OPS.get((op_type or "").lower())


def saturation_rms(mean: np.ndarray, std: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Root mean square of the output rescaled from ``[lo, hi]`` to ``z`` in ``[-1, 1]``.

    ``E[z^2] = ((mean - mid) / half)^2 + (std / half)^2`` with ``mid``, ``half`` the centre
    and half-width of the range: 0 when every output sits at the centre (the linear
    regime), 1 when every output sits on a bound (the flat, saturated regime).
    """
    half = (hi - lo) / 2.0
    mid = (hi + lo) / 2.0
    m2 = ((mean - mid) / half) ** 2 + (std / half) ** 2
    return np.sqrt(np.clip(m2, 0.0, 1.0))


def saturated_fraction_bound(rms: float, level: float) -> float:
    """Lower bound on the fraction of outputs with ``|z| >= level`` given their RMS (Markov).

    Markov's inequality applied to ``1 - z^2 >= 0``: ``P(|z| < level) <= (1 - rms^2) /
    (1 - level^2)``.
    """
    return float(max(0.0, 1.0 - (1.0 - rms**2) / (1.0 - level**2)))


class ActivationsAnalyzer(StreamingAnalyzer):
    """Per-layer telemetry, colorful dimension, saturation of bounded activations, rising crash."""

    name = "activations"
    description = "Per-layer activation mean/std over steps (telemetry), the colorful dimension (stacked histograms), saturation of tanh/sigmoid outputs, and fast.ai's early 'rising crash'."
    needs = Needs(tables=("records",), kinds=("activation",))
    params = (
        Param("saturation_rms", 0.9, "a bounded layer whose output, rescaled to [-1, 1], has a root mean square at least this over the window is saturated", low=0, high=1),
        Param("window", 0.25, "fraction of the last training steps over which saturation is judged", low=0, low_open=True, high=1),
        Param("early", 0.25, "fraction of the first training steps searched for a rising crash", low=0, low_open=True, high=1),
        Param("crash_rise", 5.0, "rising crash: std grows to at least this multiple of its initial value ...", low=1),
        Param("crash_drop", 0.2, "... then falls to at most this fraction of that peak", low=0, high=1),
        Param("max_buckets", 512, "step buckets kept per series for the telemetry", low=1),
        Param("hist_buckets", 128, "step columns kept per layer for the colorful dimension", low=1),
        Param("hist_samples", 8, "colorful dimension: steps summed per column (the first ones of each column's step range)", low=1),
        Param("max_layers", 16, "layers drawn in the colorful-dimension figure", low=1),
    )

    def consumer(self, trace: Trace, params: dict[str, Any]) -> _ActivationsConsumer:
        """The streaming part of the analysis (one pass shared with other analyzers)."""
        return _ActivationsConsumer(trace, params)


class _ActivationsConsumer(RecordConsumer):
    columns = ("mean", "std", "nan_count", "inf_count", "hist_scheme", "hist_lo", "hist_hi", "hist_counts", "hist_edges")

    def __init__(self, trace: Trace, params: dict[str, Any]) -> None:
        self.trace = trace
        self.params = params
        self.phases, self.grid = training_grid(trace, params["max_buckets"])
        self.stats = BucketStats(self.grid, ["mean", "std"], extremes=[]) if self.grid else None
        hist_grid = training_grid(trace, params["hist_buckets"])[1]
        self.hists = BucketHistograms(hist_grid) if hist_grid else None
        self.samples = max(1, int(params["hist_samples"]))
        self.index: Any = None

    def consume(self, view: Any) -> None:
        if self.stats is None:
            return
        self.index = view.index
        rows = view.rows(kinds=("activation",), phases=self.phases)
        if rows is not None and not len(rows):
            return
        values = {"mean": view.f64("mean"), "std": view.f64("std")}
        # Statistics of tensors holding NaN/Inf describe the damage (see gradients' NaN origin).
        broken = (view.f64("nan_count") > 0) | (view.f64("inf_count") > 0)
        if broken.any():
            values = {k: np.where(broken, np.nan, v) for k, v in values.items()}
        sid, steps = view.sid, view.steps
        if rows is not None:
            sid, steps, values = sid[rows], steps[rows], {k: v[rows] for k, v in values.items()}
        self.stats.add(sid, steps, values)
        selected = None
        if rows is not None:
            selected = np.zeros(view.num_rows, dtype=bool)
            selected[rows] = True
        hgrid = self.hists.grid
        if hgrid.width > self.samples:
            # A column of the picture sums the first `hist_samples` steps of its range: the
            # cost is bounded by the picture's size, not by the length of the run.
            sampled = (view.steps - hgrid.first) % hgrid.width < self.samples
            selected = sampled if selected is None else selected & sampled
        for block in view.hist_blocks():
            if selected is not None:
                keep = selected[block.rows]
                if not keep.all():
                    block = HistBlock(block.rows[keep], block.counts[keep], block.key)
            if len(block.rows):
                self.hists.add(view.sid, view.steps, block)

    def finish(self) -> AnalyzerResult:
        result = AnalyzerResult()
        if self.stats is None or self.index is None:
            return result
        params, nodes, grid, hists = self.params, node_table(self.trace), self.grid, self.hists
        series = LayerSeries(self.index, self.stats)
        mean, std = series.mean("mean"), series.mean("std")
        labels = [_label(nodes, k) for k in series.keys]
        result.data["steps"] = grid.starts.tolist()
        result.data["telemetry"] = {labels[i]: {"mean": mean[i].tolist(), "std": std[i].tolist()} for i in range(len(labels))}
        result.findings += _saturation(series, mean, std, nodes, params, result)
        result.findings += _rising_crash(series, std, nodes, params)
        result.figures["telemetry"] = lambda: _plot_telemetry(series, mean, std, labels)
        if hists.binning:
            hist_labels = {sid: _label(nodes, self.index.keys[sid]) for sid in hists.binning}
            result.figures["colorful_dimension"] = lambda: _plot_colorful(hists, hist_labels, int(params["max_layers"]))
        return result


def _name(nodes: dict[str, np.ndarray], nid: int) -> str:
    return str(nodes["name"][nid]) if 0 <= nid < len(nodes["name"]) and nodes["name"][nid] is not None else str(nid)


def _label(nodes: dict[str, np.ndarray], key: tuple) -> str:
    nid, _kind, slot = key
    return _name(nodes, nid) + (f":{slot}" if slot not in ("", "0") else "")


def _saturation(series: LayerSeries, mean: np.ndarray, std: np.ndarray, nodes: dict, params: dict, result: AnalyzerResult) -> list[Finding]:
    grid = series.grid
    w0 = min(grid.size - 1, int(np.floor(grid.size * (1.0 - float(params["window"])))))
    out = []
    sat_data = {}
    for i, key in enumerate(series.keys):
        nid = key[0]
        # The op class says whether it saturates; the function's name gives its bounds.
        if nid >= len(nodes["op_class"]) or nodes["op_class"][nid] != OpClass.BOUNDED_ACTIVATION:
            continue
        b = _bounds(str(nodes["op_type"][nid]))
        if b is None:
            continue
        rms = saturation_rms(mean[i], std[i], b[0], b[1])
        rms = np.where(np.isfinite(mean[i]) & np.isfinite(std[i]), rms, np.nan)
        sat_data[_label(nodes, key)] = rms.tolist()
        win = rms[w0:]
        if not np.isfinite(win).any():
            continue
        value = float(np.nanmean(win))
        if value >= params["saturation_rms"]:
            name = _name(nodes, nid)
            share = saturated_fraction_bound(value, 0.8)
            out.append(Finding(
                "activations", "saturated", "warning",
                f"'{name}' ({nodes['op_type'][nid]}) is saturated: its outputs sit at {value:.0%} of its bounds (RMS) over the last steps, so at least {share:.0%} lie beyond 80% of the range, where its gradient vanishes.",
                node_id=nid, node=name, step_first=int(grid.start(w0)), step_last=grid.last, metric="saturation_rms", value=value, threshold=params["saturation_rms"],
            ))  # fmt: skip
    result.data["saturation"] = sat_data
    return out


def _rising_crash(series: LayerSeries, std: np.ndarray, nodes: dict, params: dict) -> list[Finding]:
    grid = series.grid
    end = max(1, int(np.ceil(grid.size * float(params["early"]))))
    out = []
    for i, key in enumerate(series.keys):
        s = std[i, :end]
        ok = np.flatnonzero(np.isfinite(s) & (s > 0))
        if len(ok) < 4:
            continue
        base = s[ok[0]]
        p = ok[int(np.argmax(s[ok]))]
        rise = s[p] / base
        after = s[p + 1 :]
        after = after[np.isfinite(after)]
        if rise < params["crash_rise"] or not len(after):
            continue
        trough = float(after.min())
        if trough > params["crash_drop"] * s[p]:
            continue
        nid = key[0]
        name = _name(nodes, nid)
        out.append(Finding(
            "activations", "rising-crash", "warning",
            f"Activations of '{name}' rise then crash early in training: std grows {rise:.3g} x to {s[p]:.3g} at step {grid.start(int(p))}, then falls to {trough:.3g}.",
            node_id=nid, node=name, step_first=int(grid.start(int(ok[0]))), step_last=grid.end(end - 1), metric="std_rise", value=float(rise), threshold=params["crash_rise"],
        ))  # fmt: skip
    return out


def _plot_telemetry(series: LayerSeries, mean: np.ndarray, std: np.ndarray, labels: list[str]) -> Any:
    from .figures import new_figure, plot_layer_lines

    fig, (ax_m, ax_s) = new_figure(nrows=2, width=8, height=6.5, sharex=True)
    x = series.grid.starts
    # The same layers (largest std) in both panels, so a colour means one layer.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = np.nanmax(np.where(np.isfinite(std), std, np.nan), axis=1) if std.size else np.zeros(len(labels))
    plot_layer_lines(ax_m, x, mean, labels, score=score, signed=True)
    scale = plot_layer_lines(ax_s, x, std, labels, score=score)
    ax_m.set_ylabel("mean")
    ax_s.set_ylabel("std" + (" (log)" if scale == "log" else ""))
    ax_s.set_xlabel("step")
    shown = min(len(labels), 8)
    ax_m.set_title(
        f"Activation telemetry: {shown} of {len(labels)} layers by largest std" if len(labels) > 9 else "Activation telemetry per layer"
    )
    return fig


def _plot_colorful(hists: BucketHistograms, labels: dict[int, str], max_layers: int) -> Any:
    from .figures import SEQUENTIAL_CMAP, new_figure, short_label

    sums = hists.sums
    every = sorted(sums)
    # Small multiples of at most max_layers layers, evenly spaced by depth (first and last kept).
    pick = np.unique(np.linspace(0, len(every) - 1, min(max_layers, len(every))).round().astype(int)) if every else []
    sids = [every[i] for i in pick]
    ncols = min(4, len(sids))
    nrows = -(-len(sids) // ncols)
    fig, axes = new_figure(nrows=nrows, ncols=ncols, width=3.2 * ncols, height=2.4 * nrows + 0.4, squeeze=False)
    grid = hists.grid
    for ax in axes.flat[len(sids):]:
        ax.set_visible(False)
    for ax, sid in zip(axes.flat, sids):
        counts = sums[sid]
        edges = np.asarray(_edges(hists.binning[sid]))
        ax.imshow(np.log1p(counts.T), aspect="auto", origin="lower", cmap=SEQUENTIAL_CMAP, interpolation="nearest",
                  extent=(grid.first, grid.last + 1, 0, counts.shape[1]))  # fmt: skip
        ticks, names = _bin_ticks(edges)
        ax.set_yticks(ticks, names, fontsize=7)
        ax.set_title(short_label(labels[sid], 28), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    shown = f" ({len(sids)} of {len(every)} layers, evenly spaced by depth)" if len(sids) < len(every) else ""
    fig.suptitle(f"Colorful dimension: log1p(histogram counts) per step{shown}")
    return fig


def _bin_ticks(edges: np.ndarray) -> tuple[list[float], list[str]]:
    """About five y ticks at bin boundaries; a bin holding zero is labelled 0 at its centre."""
    n = len(edges) - 1
    zero = np.flatnonzero((edges[:-1] <= 0) & (edges[1:] >= 0))
    ticks: list[float] = []
    names: list[str] = []
    for t in np.linspace(0, n, 5).astype(int):
        ticks.append(float(t))
        names.append(_fmt_edge(edges[min(t, n)]))
    if len(zero):
        z = float(zero[0]) + 0.5
        keep = [i for i, t in enumerate(ticks) if abs(t - z) > n / 12]
        ticks, names = [ticks[i] for i in keep] + [z], [names[i] for i in keep] + ["0"]
    return ticks, names


def _edges(key: tuple) -> np.ndarray:
    from tracefmt.histogram import edges

    return edges(*key)


def _fmt_edge(v: float) -> str:
    return f"{v:.0e}" if np.isfinite(v) and v != 0 and abs(v) < 0.01 else (f"{v:.2g}" if np.isfinite(v) else ("-inf" if v < 0 else "inf"))
