"""How trace series are named as TensorBoard tags, and read back.

Exported tags (``kind`` is a record kind, ``node`` the node's name):

- scalars: the scalar's name (``loss``); other phases than ``train`` get ``@phase``
  (``loss@eval``);
- histograms: ``kind/node`` (``activation/layer1.conv1``), with ``@phase`` after the kind
  for other phases, ``:slot`` after the node for a named slot and ``#call`` for repeated
  calls;
- statistic series: ``kind.metric/node`` (``activation.std/layer1.conv1``), same suffixes:
  TensorBoard groups them by ``kind.metric``, one chart per layer.

A text summary ``tracefmt/trace`` holds the nodes table and the exact identity of every
tag, so an import of an export restores node ids, slots, calls and phases exactly. Logs
written by other tools are read by the rules in :func:`parse_foreign_tag`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tracefmt.enums import Kind, Phase

__all__ = ["SeriesKey", "METRICS", "TRACE_TAG", "histogram_tag", "metric_tag", "scalar_tag", "parse_foreign_tag"]

#: The text summary that carries the trace's nodes and tag identities.
TRACE_TAG = "tracefmt/trace"

#: Record columns exported as statistic series (when not null).
METRICS = (
    "numel", "nan_count", "inf_count", "zero_count", "pos_count", "mean", "std", "min", "max", "abs_mean", "l2",
    "median", "mat_trace", "mat_spectral", "mat_sv_mean", "mat_sv_var",
)  # fmt: skip


@dataclass(frozen=True)
class SeriesKey:
    """The identity of a record series: (phase, node_id, kind, slot, call)."""

    phase: str
    node_id: int
    kind: str
    slot: str
    call: int


def _suffix(node: str, key: SeriesKey) -> str:
    out = node
    if key.slot:
        out += f":{key.slot}"
    if key.call:
        out += f"#{key.call}"
    return out


def _phase(key_phase: str) -> str:
    return "" if key_phase == Phase.TRAIN else f"@{key_phase}"


def histogram_tag(node: str, key: SeriesKey) -> str:
    """The histogram tag of a series (``kind[@phase]/node[:slot][#call]``)."""
    return f"{key.kind}{_phase(key.phase)}/{_suffix(node, key)}"


def metric_tag(node: str, key: SeriesKey, metric: str) -> str:
    """The tag of one statistic series (``kind.metric[@phase]/node[:slot][#call]``)."""
    return f"{key.kind}.{metric}{_phase(key.phase)}/{_suffix(node, key)}"


def scalar_tag(name: str, phase: str) -> str:
    """The tag of a named scalar series (``name[@phase]``)."""
    return f"{name}{_phase(phase)}"


_PARAM = re.compile(r"^(?P<node>.+?)[./](?P<param>weight|bias|[A-Za-z_]*(?:weight|bias)[A-Za-z_0-9]*)(?P<grad>[./_]grad)?$")
_KINDS = {k.value for k in Kind}


def parse_foreign_tag(tag: str) -> tuple[str, str, str]:
    """(node name, kind, slot) of a histogram tag written by another tool.

    ``kind/node`` with a known kind keeps that kind; ``layer.weight`` / ``layer/bias``
    (optionally ``.grad`` / ``_grad`` / ``/grad`` after it) are the parameter's values or
    gradients (kinds ``weight`` / ``weight_grad``, slot = the parameter name); anything else
    is the activation of a node named after the tag.
    """
    head, sep, rest = tag.partition("/")
    if sep and head in _KINDS and rest:
        return rest, head, ""
    m = _PARAM.match(tag)
    if m:
        return m.group("node"), Kind.WEIGHT_GRAD.value if m.group("grad") else Kind.WEIGHT.value, m.group("param")
    return tag, Kind.ACTIVATION.value, ""
