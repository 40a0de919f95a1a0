"""The colour scale of annotated graphs and its legend (the one place for graph colours).

A :class:`ColorScale` maps a metric's values to fill colours. Three families are used,
chosen by what the metric means:

- ``badness`` (dead fraction, non-finite fraction, diff error): higher is worse, drawn from
  pale yellow to dark red (matplotlib ``YlOrRd``) on a fixed or data range;
- ``magnitude`` (std, L2 norm, mean |x|): sequential ``viridis``, on a log scale when the
  values span more than two decades;
- ``signed`` (mean, min, max): diverging ``coolwarm`` centred on zero.

Colours for states that are not values (NaN/Inf present, no data, finding severities) are
defined here too, so the graph, its legend and the HTML report agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tracefmt.enums import Severity

from ..escaping import html_text
from ..figures import DIVERGING_CMAP, SEQUENTIAL_CMAP
from ..figures import SEVERITY_COLORS as _FIGURE_SEVERITY_COLORS

__all__ = [
    "ColorScale",
    "NONFINITE_FILL",
    "NONFINITE_BORDER",
    "NO_DATA_FILL",
    "SEVERITY_COLORS",
    "SCALE_FAMILIES",
    "text_color",
    "scale_for",
    "legend_label",
    "format_value",
]

#: Fill of a node whose tensor holds NaN or Inf: saturated magenta, unlike any scale colour.
NONFINITE_FILL = "#d4006a"
#: Border of a NaN/Inf node.
NONFINITE_BORDER = "#000000"
#: Fill of a node that has no value for the chosen metric (not observed at that step).
NO_DATA_FILL = "#f0f0f0"
#: Border colour per finding severity: the analyzers' figure colours, so graph and plots agree.
SEVERITY_COLORS: dict[Severity, str] = {Severity(k): v for k, v in _FIGURE_SEVERITY_COLORS.items()}
#: Scale family -> matplotlib colormap name (magnitude and signed as in the analyzers' figures).
SCALE_FAMILIES: dict[str, str] = {"badness": "YlOrRd", "magnitude": SEQUENTIAL_CMAP, "signed": DIVERGING_CMAP}
# Ratio max/min of positive values beyond which a magnitude scale becomes logarithmic.
_LOG_SPAN = 100.0


def _hex(rgba: Iterable[float]) -> str:
    r, g, b = list(rgba)[:3]
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def text_color(fill: str) -> str:
    """Black or white, whichever reads better on ``fill`` (WCAG relative luminance)."""
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    # Contrast ratio against black (lum + .05)/.05 vs white 1.05/(lum + .05): equal at ~0.179.
    return "#000000" if lum > 0.179 else "#ffffff"


def format_value(v: float | None) -> str:
    """Short human formatting of a metric value (4 significant digits)."""
    if v is None:
        return "-"
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


@dataclass(frozen=True)
class ColorScale:
    """A mapping from metric values to colours.

    Args:
        family: ``'badness'``, ``'magnitude'`` or ``'signed'`` (see the module docstring).
        vmin: Value drawn with the first colour of the map.
        vmax: Value drawn with the last colour.
        log: Map ``log10(value)`` instead of the value (magnitude scales only).
        label: What the scale shows, for the legend (e.g. ``'dead fraction (activation)'``).
    """

    family: str
    vmin: float
    vmax: float
    log: bool = False
    label: str = ""

    @property
    def cmap_name(self) -> str:
        """The matplotlib colormap name of the scale's family."""
        return SCALE_FAMILIES[self.family]

    def position(self, value: float) -> float:
        """Where ``value`` lies on the scale, clipped to [0, 1]."""
        lo, hi, v = self.vmin, self.vmax, value
        if self.log:
            tiny = max(lo, 1e-300)
            lo, hi, v = math.log10(tiny), math.log10(max(hi, tiny)), math.log10(max(v, tiny))
        if self.family == "signed":
            # Zero stays at the centre of the diverging map even for a lopsided range.
            bound = max(abs(lo), abs(hi)) or 1.0
            return min(1.0, max(0.0, 0.5 + 0.5 * v / bound))
        if hi <= lo:
            return 0.5 if self.family != "badness" else (1.0 if v > 0 else 0.0)
        return min(1.0, max(0.0, (v - lo) / (hi - lo)))

    def color(self, value: float) -> str:
        """Fill colour (``#rrggbb``) of ``value``; NaN/Inf get :data:`NONFINITE_FILL`."""
        if not math.isfinite(value):
            return NONFINITE_FILL
        import matplotlib

        # The scale is kept to the inner 85 % of the map: the extremes of YlOrRd and
        # viridis are too pale or too dark for labels drawn on top of them.
        pos = 0.075 + 0.85 * self.position(value) if self.family != "badness" else 0.05 + 0.9 * self.position(value)
        return _hex(matplotlib.colormaps[self.cmap_name](pos))

    def ticks(self, n: int = 6) -> list[float]:
        """``n`` values evenly spaced along the scale (log-spaced for log scales)."""
        lo, hi = self.vmin, self.vmax
        if self.family == "signed":
            bound = max(abs(lo), abs(hi)) or 1.0
            lo, hi = -bound, bound
        if self.log and lo > 0 and hi > lo:
            a, b = math.log10(lo), math.log10(hi)
            return [10 ** (a + (b - a) * i / (n - 1)) for i in range(n)]
        if hi <= lo:
            return [lo]
        return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def scale_for(family: str, values: Iterable[float], *, fixed: tuple[float, float] | None = None, label: str = "") -> ColorScale:
    """The scale for ``values``: a fixed range, or the finite values' range.

    Args:
        family: Scale family (see :data:`SCALE_FAMILIES`).
        values: The metric values to be drawn (non-finite ones are ignored).
        fixed: A fixed ``(vmin, vmax)`` (e.g. ``(0, 1)`` for fractions). Defaults to the data range.
        label: Legend title.

    Returns:
        The colour scale.
    """
    if family not in SCALE_FAMILIES:
        raise ValueError(f"unknown scale family {family!r}")
    finite = [v for v in values if math.isfinite(v)]
    if fixed is not None:
        return ColorScale(family, float(fixed[0]), float(fixed[1]), label=label)
    if not finite:
        return ColorScale(family, 0.0, 1.0, label=label)
    lo, hi = min(finite), max(finite)
    log = False
    if family == "magnitude":
        positive = [v for v in finite if v > 0]
        if positive and min(positive) * _LOG_SPAN < max(positive):
            lo, log = min(positive), True
    if family == "badness":
        lo = min(lo, 0.0)
    return ColorScale(family, lo, hi, log=log, label=label)


def legend_label(scale: ColorScale | None, *, title: str, extras: Iterable[tuple[str, str]] = ()) -> str:
    """A Graphviz HTML-like label drawing the legend: colour swatches with their values.

    Args:
        scale: The scale to draw, or None for a legend of markers only.
        title: First line of the legend.
        extras: ``(colour, text)`` pairs for markers (severities, NaN/Inf, no data).

    Returns:
        The label, to be passed wrapped in ``<...>`` to a Graphviz node.
    """
    rows = [f'<TR><TD COLSPAN="2" BORDER="0"><B>{html_text(title)}</B></TD></TR>']
    if scale is not None:
        if scale.log:
            rows.append('<TR><TD COLSPAN="2" BORDER="0"><I>log scale</I></TD></TR>')
        for v in reversed(scale.ticks()):
            fill = scale.color(v)
            rows.append(f'<TR><TD BGCOLOR="{fill}" WIDTH="28" FIXEDSIZE="FALSE"> </TD><TD BORDER="0" ALIGN="LEFT">{html_text(format_value(v))}</TD></TR>')
    for fill, text in extras:
        rows.append(f'<TR><TD BGCOLOR="{fill}" WIDTH="28"> </TD><TD BORDER="0" ALIGN="LEFT">{html_text(text)}</TD></TR>')
    return '<TABLE BORDER="1" CELLBORDER="1" CELLSPACING="2" CELLPADDING="3" BGCOLOR="white">' + "".join(rows) + "</TABLE>"
