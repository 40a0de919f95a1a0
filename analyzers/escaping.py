"""Text from a trace made safe for Graphviz and HTML (spec principle: a trace is data).

Every string a trace supplies (model, node, scope, op type, finding messages) passes
through here before it reaches a DOT file or a report: control characters (NUL
included) and unpaired surrogates are replaced, and DOT labels are marked as plain
text so Graphviz never reads them as HTML-like labels, whatever their brackets.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["clean_text", "dot_text", "dot_lines", "html_text"]

#: C0/C1 control characters and unpaired UTF-16 surrogates (not encodable as UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def clean_text(value: Any) -> str:
    """``str(value)`` with control characters and unpaired surrogates replaced by U+FFFD."""
    return _UNSAFE.sub(REPLACEMENT, str(value))


def _dot_escape(value: Any) -> str:
    # A backslash starts a DOT escape (\n, \N, \G ...) and a final one swallows the
    # closing quote: doubled, each stays a literal backslash. Quotes are escaped by graphviz.
    return clean_text(value).replace("\\", "\\\\")


def dot_text(value: Any) -> Any:
    """A DOT attribute value showing ``value`` literally (never an HTML-like label)."""
    import graphviz

    return graphviz.nohtml(_dot_escape(value))


def dot_lines(lines: Iterable[Any], *, limit: int | None = None) -> Any:
    """Lines of text as one DOT label (centred line breaks), optionally cut to ``limit`` characters first."""
    import graphviz

    text = "\n".join(clean_text(line) for line in lines)
    if limit is not None:
        text = text[:limit]
    return graphviz.nohtml("\\n".join(line.replace("\\", "\\\\") for line in text.split("\n")))


def html_text(value: Any) -> str:
    """``value`` escaped for HTML text and attribute values (quotes included), control characters replaced."""
    return html.escape(clean_text(value), quote=True)
