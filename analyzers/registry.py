"""The analyzer registry: every analyzer, built-in or third-party, is an entry point.

Analyzers are declared in the entry-point group ``tracefmt.analyzers`` (``name =
"package.module:Class"``). Listing the registry reads only the installed distributions'
metadata; a plugin's module is imported when the plugin is first used, so a plugin that
fails to import is reported when it is selected, never at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from tracefmt.errors import TraceError, UsageError

from .base import Analyzer

__all__ = ["GROUP", "PluginLoadError", "AnalyzerEntry", "entries", "names", "get", "refresh"]

#: The entry-point group analyzers register in.
GROUP = "tracefmt.analyzers"


class PluginLoadError(TraceError):
    """A registered analyzer could not be imported or is not an :class:`Analyzer`."""


@dataclass
class AnalyzerEntry:
    """One registered analyzer: its name, where it lives and (once loaded) its class.

    Attributes:
        name: The registered name (the entry point's name).
        target: ``module:Class`` as declared.
        distribution: Name of the distribution that declared it ('' when unknown).
    """

    name: str
    target: str
    distribution: str = ""
    _cls: type[Analyzer] | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)
    _ep: Any = field(default=None, repr=False)

    def load(self) -> type[Analyzer]:
        """Import the analyzer class (once).

        Raises:
            PluginLoadError: The module fails to import or the object is not an Analyzer.
        """
        if self._cls is not None:
            return self._cls
        if self._error is None:
            try:
                obj = self._ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported, not raised
                self._error = f"{type(exc).__name__}: {exc}"
            else:
                if isinstance(obj, type) and issubclass(obj, Analyzer):
                    self._cls = obj
                    return obj
                self._error = f"{self.target} is not a subclass of tracefmt.analyzers.Analyzer"
        raise PluginLoadError(f"analyzer {self.name!r} ({self.target}) could not be loaded: {self._error}")

    @property
    def error(self) -> str | None:
        """Why loading failed, or None (loads the plugin if it was not tried yet)."""
        try:
            self.load()
        except PluginLoadError:
            return self._error
        return None


_ENTRIES: dict[str, AnalyzerEntry] | None = None


def refresh() -> None:
    """Forget the cached registry (after installing a plugin in the running process)."""
    global _ENTRIES
    _ENTRIES = None
    metadata.distributions.cache_clear() if hasattr(metadata.distributions, "cache_clear") else None


def entries() -> dict[str, AnalyzerEntry]:
    """Every registered analyzer by name, sorted by name (nothing is imported)."""
    global _ENTRIES
    if _ENTRIES is None:
        found: dict[str, AnalyzerEntry] = {}
        for ep in metadata.entry_points(group=GROUP):
            if ep.name in found:
                # An editable install can expose the same distribution twice; the first wins.
                continue
            dist = getattr(ep, "dist", None)
            found[ep.name] = AnalyzerEntry(ep.name, ep.value, getattr(dist, "name", "") or "", _ep=ep)
        _ENTRIES = dict(sorted(found.items()))
    return _ENTRIES


def names() -> list[str]:
    """Names of every registered analyzer, sorted."""
    return list(entries())


def get(name: str) -> type[Analyzer]:
    """The analyzer class registered as ``name``.

    Raises:
        UsageError: No analyzer of that name is registered.
        PluginLoadError: It is registered but cannot be loaded.
    """
    entry = entries().get(name)
    if entry is None:
        raise UsageError(f"unknown analyzer {name!r}; available: {', '.join(names()) or '(none)'}")
    return entry.load()
