"""Analyzer parameters: resolution of user settings against each analyzer's declared defaults.

Settings arrive flat (``{'dead.threshold': 0.9}``, the CLI's ``--set dead.threshold=0.9``)
or nested (``{'dead': {'threshold': 0.9}}``). Every name is checked against what exists,
and values given as text are converted to the type of the parameter's default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tracefmt.errors import UsageError

from .base import Analyzer

__all__ = ["resolve_params", "parse_assignment", "coerce_value"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce_value(value: Any, default: Any, *, what: str) -> Any:
    """Convert ``value`` to the type of ``default`` (text from the CLI included).

    Args:
        value: The value given by the user.
        default: The parameter's default, whose type is the target.
        what: Name used in error messages (``analyzer.param``).

    Raises:
        UsageError: The value cannot be read as that type.
    """
    if default is None:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    target = type(default)
    if isinstance(value, str) and target is not str:
        text = value.strip()
        try:
            if target is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError(text)
            if target is int:
                return int(text)
            if target is float:
                return float(text)
            if target in (tuple, list):
                return target(t.strip() for t in text.split(",") if t.strip())
        except ValueError:
            raise UsageError(f"parameter {what}: cannot read {value!r} as {target.__name__}") from None
        return value
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target in (tuple, list) and isinstance(value, (tuple, list)):
        return target(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise UsageError(f"parameter {what}: expected {target.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``'analyzer.param=value'`` into ``('analyzer.param', 'value')``.

    Raises:
        UsageError: The text is not of that form.
    """
    key, sep, value = text.partition("=")
    if not sep or "." not in key or not key.split(".", 1)[0] or not key.split(".", 1)[1]:
        raise UsageError(f"--set expects ANALYZER.PARAM=VALUE, got {text!r}")
    return key.strip(), value


def _flatten(params: Mapping[str, Any] | None) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        elif "." in key:
            flat[key] = value
        else:
            raise UsageError(f"parameter {key!r} must be 'analyzer.param' or a nested mapping {{analyzer: {{param: value}}}}")
    return flat


def resolve_params(classes: Mapping[str, type[Analyzer]], params: Mapping[str, Any] | None, *, known: list[str]) -> dict[str, dict[str, Any]]:
    """Complete, checked parameters for each analyzer in ``classes``.

    Args:
        classes: Analyzer name -> class, for the analyzers that will run.
        params: User settings, flat or nested (see the module docstring).
        known: Every registered analyzer name (settings for registered analyzers that are
            not selected are accepted and ignored).

    Returns:
        Analyzer name -> {param: value}, defaults filled in.

    Raises:
        UsageError: An unknown analyzer or parameter, or a value of the wrong type.
    """
    resolved = {name: cls.defaults() for name, cls in classes.items()}
    for key, value in _flatten(params).items():
        analyzer, pname = key.split(".", 1)
        if analyzer not in resolved:
            if analyzer in known:
                continue
            raise UsageError(f"unknown analyzer {analyzer!r} in parameter {key!r}; available: {', '.join(known)}")
        defaults = classes[analyzer].defaults()
        if pname not in defaults:
            raise UsageError(f"unknown parameter {key!r}; {analyzer} has: {', '.join(defaults) or '(no parameters)'}")
        value = coerce_value(value, defaults[pname], what=key)
        declared = next((p for p in classes[analyzer].params if p.name == pname), None)
        resolved[analyzer][pname] = declared.check(value, what=key) if declared is not None else value
    return resolved
