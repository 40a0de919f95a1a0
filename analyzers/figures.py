"""Shared matplotlib helpers: the one place for colour maps, figure creation and saving.

Figures are built with the non-interactive Agg backend (no display needed) through
:class:`matplotlib.figure.Figure` directly, so nothing touches pyplot's global state.
"""

from __future__ import annotations

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
]

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


def new_figure(
    *, nrows: int = 1, ncols: int = 1, width: float = 7.0, height: float = 4.0, squeeze: bool = True, **subplots: Any
) -> tuple[Any, Any]:
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
