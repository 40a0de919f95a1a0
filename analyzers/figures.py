"""Shared matplotlib helpers: the one place for colour maps, figure creation and saving.

Figures are built with the non-interactive Agg backend (no display needed) through
:class:`matplotlib.figure.Figure` directly, so nothing touches pyplot's global state.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracefmt.errors import MissingDependencyError, UsageError

__all__ = [
    "SEQUENTIAL_CMAP",
    "DIVERGING_CMAP",
    "SEVERITY_COLORS",
    "SERIES_COLORS",
    "new_figure",
    "save_figure",
    "FIGURE_FORMATS",
    "TOP_K",
    "MAX_ROWS",
    "plot_layer_lines",
    "pick_rows",
    "value_scale",
    "sparse_ticks",
]

#: Layers drawn as labelled lines in a per-layer line plot; the rest are one summary band.
TOP_K = 8
#: Rows (layers) of a per-layer heat map or bar chart before the rest are summarised.
MAX_ROWS = 40

#: Colour map of magnitude images (the colorful dimension, confusion matrices).
SEQUENTIAL_CMAP = "viridis"
#: Colour map of signed quantities (differences, ratios on a log scale).
DIVERGING_CMAP = "coolwarm"
#: Line/marker colour per finding severity.
SEVERITY_COLORS = {"info": "#4c72b0", "warning": "#dd8452", "error": "#c44e52"}
#: Cycle for per-layer lines.
SERIES_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
#: File formats :func:`save_figure` writes.
FIGURE_FORMATS = ("png", "svg", "pdf")


def new_figure(*, nrows: int = 1, ncols: int = 1, width: float = 7.0, height: float = 4.0, squeeze: bool = True, **subplots: Any) -> tuple[Any, Any]:
    """A new Agg-backed Figure and its axes (``fig, axes`` as ``Figure.subplots`` returns).

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("matplotlib", "analyzers", "figures") from None
    from .notebook import register_inline_figures

    register_inline_figures()  # a bare Figure shows inline in a notebook without %matplotlib
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **subplots)
    return fig, axes


def save_figure(fig: Any, stem: str | Path, *, formats: Sequence[str] = ("png",), dpi: int = 110) -> list[Path]:
    """Save ``fig`` as ``<stem>.<fmt>`` for each format.

    Args:
        fig: A matplotlib Figure.
        stem: Path without suffix; its directory is created.
        formats: Any of 'png', 'svg', 'pdf'. Defaults to ('png',).
        dpi: Resolution of raster formats. Defaults to 110.

    Returns:
        The files written.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        if fmt not in FIGURE_FORMATS:
            raise UsageError(f"unknown figure format {fmt!r}; available: {', '.join(FIGURE_FORMATS)}")
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(str(path), format=fmt, dpi=dpi)
        out.append(path)
    return out


def short_label(name: str | None, limit: int = 28) -> str:
    """A node name shortened for axis labels (keeps the end, the most specific part)."""
    name = name or "?"
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def value_scale(values: Any, *, signed: bool = False) -> str:
    """The axis scale that keeps values spanning orders of magnitude legible.

    ``'log'`` for positive values whose finite non-zero magnitudes span more than two
    decades, ``'symlog'`` for signed ones that do, else ``'linear'``.
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    mag = np.abs(v[np.isfinite(v) & (v != 0)])
    if len(mag) < 2 or mag.max() / mag.min() <= 100:
        return "linear"
    return "symlog" if signed or (v[np.isfinite(v)] < 0).any() else "log"


def apply_scale(ax: Any, scale: str, values: Any, axis: str = "y") -> None:
    """Set ``scale`` on ``ax`` (symlog with a linear zone around zero at the data's small values)."""
    import numpy as np

    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    if scale != "symlog":
        setter(scale)
        return
    v = np.abs(np.asarray(values, dtype=np.float64).reshape(-1))
    v = v[np.isfinite(v) & (v > 0)]
    # The linear zone spans the typical magnitude, so only the outliers get log decades.
    setter("symlog", linthresh=float(np.percentile(v, 50)) if len(v) else 1.0)


def pick_rows(score: Any, limit: int = MAX_ROWS) -> tuple[list[int], list[int]]:
    """(kept, rest): the ``limit - 1`` highest-scoring rows in their original order, and the others.

    All rows are kept when there are at most ``limit``. NaN scores rank last.
    """
    import numpy as np

    s = np.asarray(score, dtype=np.float64)
    n = len(s)
    if n <= limit:
        return list(range(n)), []
    order = np.argsort(np.where(np.isfinite(s), -s, np.inf), kind="stable")
    keep = sorted(order[: limit - 1].tolist())
    rest = sorted(order[limit - 1 :].tolist())
    return keep, rest


def sparse_ticks(n: int, most: int = MAX_ROWS) -> list[int]:
    """At most ``most`` evenly spaced tick positions out of ``n`` (first and last included)."""
    if n <= most:
        return list(range(n))
    step = -(-n // most)
    ticks = list(range(0, n, step))
    return ticks if ticks[-1] == n - 1 else [*ticks, n - 1]


def plot_layer_lines(
    ax: Any,
    x: Any,
    values: Any,
    labels: Sequence[str],
    *,
    score: Any = None,
    k: int = TOP_K,
    signed: bool = False,
    scale: str | None = None,
) -> str:
    """Per-layer lines that stay legible for any number of layers.

    The ``k`` layers with the highest ``score`` (default: their largest absolute value) are
    drawn as labelled lines; the others as one grey band (their range per step) with their
    median, labelled "other N layers". A single step is drawn as markers. The y scale follows
    :func:`value_scale` unless ``scale`` is given. A legend is always drawn.

    Returns:
        The scale used.
    """
    import numpy as np

    vals = np.asarray(values, dtype=np.float64)
    x = np.asarray(x)
    if vals.ndim != 2 or not vals.shape[0]:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return "linear"
    if score is None:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            score = np.nanmax(np.where(np.isfinite(vals), np.abs(vals), np.nan), axis=1) if vals.shape[1] else np.zeros(len(vals))
    keep, rest = pick_rows(score, k + 1)
    marker = "o" if vals.shape[1] <= 2 else None
    if rest:
        block = vals[rest]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps of the summarised layers
            lo, hi, med = np.nanmin(block, axis=0), np.nanmax(block, axis=0), np.nanmedian(block, axis=0)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(x[ok], lo[ok], hi[ok], color="0.85", lw=0, label=f"other {len(rest)} layers (range)")
        ax.plot(x[ok], med[ok], color="0.55", lw=1, ls="--", marker=marker, label=f"other {len(rest)} layers (median)")
    for j, i in enumerate(keep):
        ok = np.isfinite(vals[i])
        ax.plot(x[ok], vals[i][ok], lw=1.2, marker=marker, color=SERIES_COLORS[j % len(SERIES_COLORS)], label=short_label(labels[i]))
    used = scale or value_scale(vals, signed=signed)
    apply_scale(ax, used, vals)
    ax.legend(fontsize=7, ncol=2 if len(keep) + (2 if rest else 0) > 6 else 1, loc="best")
    return used
