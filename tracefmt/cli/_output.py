"""Terminal and JSON output shared by every command (one place for formatting)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def add_format_option(parser: Any, choices: Sequence[str] = ("table", "json"), default: str = "table") -> None:
    """Add the standard ``--format`` option."""
    parser.add_argument("--format", choices=list(choices), default=default, help=f"output format (default: {default})")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _clean(o: Any) -> Any:
    """Replace NaN/Inf (not valid JSON) by strings so any JSON parser reads the output."""
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def emit_json(obj: Any, out: TextIO | None = None) -> None:
    """Print ``obj`` as JSON (NaN/Inf become strings)."""
    (out or sys.stdout).write(json.dumps(_clean(obj), indent=2, default=_json_default) + "\n")


def fmt_value(v: Any) -> str:
    """Compact human formatting of a cell."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO | None = None, *, max_width: int = 60) -> None:
    """Print rows as an aligned text table with a header line."""
    out = out or sys.stdout
    cells = [[fmt_value(r.get(c)) for c in columns] for r in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def number_at_least(low: float, *, integer: bool = False, open_low: bool = False) -> Any:
    """An argparse ``type`` reading a finite number ``>= low`` (``> low`` if ``open_low``).

    A tolerance, a limit or a depth out of range is bad usage (exit 2), never silently used.
    """

    def parse(text: str) -> float | int:
        import argparse

        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if integer else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if open_low else value < low):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {'>' if open_low else '>='} {low:g}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse
