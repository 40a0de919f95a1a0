"""Joining two traces node by node (trace diff): which observation of A goes with which of B.

Three cases, by the granularity of each side (:mod:`tracefmt.analyzers.diff_sides`):

* module vs module (two PyTorch traces): observations join on (scope, call, slot) —
  or (name, call, slot) with ``by='name'`` — falling back to the node name;
* op vs op (two ONNX traces): on (scope, op_type, occurrence within the scope, slot) —
  or (name, slot) — falling back to the node name, then to the output tensor name;
* module vs op (PyTorch vs ONNX): the operator nodes whose scope is the module's scope
  or below it form the module's op *group*; a module called several times per forward
  (one ReLU used twice) yields several groups with the same scope, split where a new node
  does not read the current group although the group's output has already been used
  outside it (by a node of another scope, or by an unscoped node whose outputs do not all
  return into the scope: exporters leave shape arithmetic unscoped inside a module);
  groups are matched to the module's calls in execution order. The module's
  output is the group's tensor that leaves the group (read outside it, or a graph
  output) with the same shape, the latest in execution order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tracefmt.errors import UsageError

from .diff_compare import compare_stats, tolerance_for
from .diff_sides import Side

__all__ = ["Obs", "Pair", "Unmatched", "match_sides"]

Obs = tuple[int, str, int]  # (node_id, slot, call)


@dataclass
class Pair:
    """Two observations of the same tensor, one per trace.

    Attributes:
        key: The join key (scope or name).
        call: Call index on the module side (0 for op-level joins).
        a: ``(node_id, slot, call)`` on side A.
        b: ``(node_id, slot, call)`` on side B.
        order: Execution-order sort key.
        group: Op-side node_ids computing this tensor (module vs op), else the op node.
        op_side: 'a' or 'b', the side whose data-flow graph links pairs; None if neither.
        match: 'identity' (the join key, or the only tensor that can be this output) or
            'inferred' (told apart from same-shaped outputs by statistics signature).
    """

    key: str
    call: int
    a: Obs
    b: Obs
    order: tuple
    group: frozenset[int] = frozenset()
    op_side: str | None = None
    match: str = "identity"


@dataclass
class Unmatched:
    """An observation (or op node) of one side with no counterpart in the other."""

    side: str
    node_id: int
    name: str
    scope: str
    call: int
    slot: str
    reason: str
    op_type: str = ""
    leaf: bool = True


@dataclass
class _Units:
    """Module-side units: (key, call) -> observations in slot order, with their seq."""

    obs: dict[tuple[str, int], list[Obs]] = field(default_factory=dict)
    seq: dict[tuple[str, int], int] = field(default_factory=dict)


def _slot_key(slot: str) -> tuple:
    return (0, int(slot), "") if slot.isdigit() else (1, 0, slot)


def _first(per_step: dict) -> dict:
    return per_step[min(per_step)]


def _shape(side: Side, obs: Obs) -> tuple[int, ...]:
    return tuple(int(s) for s in (_first(side.records[obs]).get("shape") or []) if int(s) != 1)


def _signature(side: Side, obs: Obs) -> tuple:
    """Shape (size-1 dims dropped) and element type: what the graph says about a tensor."""
    return (_shape(side, obs), str(_first(side.records[obs]).get("dtype") or ""))


def _seq(side: Side, obs: Obs) -> int:
    s = _first(side.records[obs]).get("seq")
    return int(s) if s is not None else side.nodes[obs[0]].order


def _key(side: Side, node_id: int, by: str) -> str:
    node = side.nodes[node_id]
    return node.scope if by == "scope" else node.name


def _module_units(side: Side, by: str) -> _Units:
    units = _Units()
    grouped: dict[tuple[str, int], list[Obs]] = defaultdict(list)
    for obs in side.records:
        if obs[0] not in side.nodes:
            continue
        grouped[(_key(side, obs[0], by), obs[2])].append(obs)
    for unit, obs in grouped.items():
        obs.sort(key=lambda o: _slot_key(o[1]))
        units.obs[unit] = obs
        units.seq[unit] = min(_seq(side, o) for o in obs)
    return units


class _OpGroups:
    """Op-level side: the groups of operator nodes standing for a module's calls."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.nodes = sorted((n for n in side.nodes.values() if not n.container), key=lambda n: n.order)
        self._cache: dict[str, list[list[int]]] = {}

    def groups(self, scope: str) -> list[list[int]]:
        if scope in self._cache:
            return self._cache[scope]
        prefix = scope + "."
        members = [n for n in self.nodes if not scope or n.scope == scope or n.scope.startswith(prefix)]
        if not scope or not members:
            out = [[n.node_id for n in members]] if members else []
            self._cache[scope] = out
            return out
        member_ids = {n.node_id for n in members}
        order = {n.node_id: n.order for n in self.nodes}
        out: list[list[int]] = []
        current: list[int] = []
        produced: set[str] = set()

        def outside(c: int) -> bool:
            # An unscoped helper (shape arithmetic the exporter left without a scope) whose
            # outputs all return into this scope is not a use outside the group.
            if c in member_ids:
                return False
            node = self.side.nodes[c]
            if node.scope:
                return True
            readers = [r for t in node.outputs if t for r in self.side.consumers(t)]
            return not readers or any(r not in member_ids for r in readers)

        for n in members:
            if current and not any(t in produced for t in n.inputs):
                used_outside = any(outside(c) and order.get(c, -1) < n.order for t in produced for c in self.side.consumers(t))
                if used_outside:
                    out.append(current)
                    current, produced = [], set()
            current.append(n.node_id)
            produced.update(t for t in n.outputs if t)
        if current:
            out.append(current)
        self._cache[scope] = out
        return out

    def leaving(self, group: list[int]) -> list[Obs]:
        """Observed outputs of ``group`` read outside it or by nobody (graph outputs)."""
        members = set(group)
        out = []
        for nid in group:
            node = self.side.nodes[nid]
            for slot, t in enumerate(node.outputs):
                obs = (nid, str(slot), 0)
                if not t or obs not in self.side.records:
                    continue
                readers = self.side.consumers(t)
                if not readers or any(r not in members for r in readers):
                    out.append(obs)
        return out


def match_sides(a: Side, b: Side, *, by: str = "scope") -> tuple[list[Pair], list[Unmatched], list[Unmatched]]:
    """Join the observations of two sides.

    Args:
        a: Side A.
        b: Side B.
        by: 'scope' (default) or 'name': the primary join key.

    Returns:
        ``(pairs, unmatched_a, unmatched_b)``; pairs sorted in execution order.
    """
    if by not in ("scope", "name"):
        raise UsageError(f"unknown join key {by!r}; available: scope, name")
    if a.op_level and b.op_level:
        pairs, ua, ub = _match_ops(a, b, by)
    elif not a.op_level and not b.op_level:
        pairs, ua, ub = _match_modules(a, b, by)
    elif not a.op_level:
        pairs, ua, ub = _match_module_to_ops(a, b, by, module_label="a")
    else:
        pairs, ub, ua = _match_module_to_ops(b, a, by, module_label="b")
    pairs.sort(key=lambda p: p.order)
    return pairs, ua, ub


def _unmatched(side: Side, obs: Obs, reason: str) -> Unmatched:
    node = side.nodes[obs[0]]
    return Unmatched(side.label, obs[0], node.name, node.scope, obs[2], obs[1], reason, node.op_type, not node.container)


def _match_modules(a: Side, b: Side, by: str) -> tuple[list[Pair], list[Unmatched], list[Unmatched]]:
    b_index: dict[tuple, Obs] = {}
    b_names: dict[tuple, Obs] = {}
    for obs in b.records:
        if obs[0] in b.nodes:
            b_index.setdefault((_key(b, obs[0], by), obs[2], obs[1]), obs)
            b_names.setdefault((b.nodes[obs[0]].name, obs[2], obs[1]), obs)
    used: set[Obs] = set()
    pairs, ua = [], []
    for obs in sorted((o for o in a.records if o[0] in a.nodes), key=lambda o: _seq(a, o)):
        key = _key(a, obs[0], by)
        hit = b_index.get((key, obs[2], obs[1]))
        if hit is None or hit in used:
            hit = b_names.get((a.nodes[obs[0]].name, obs[2], obs[1]))
        if hit is None or hit in used:
            ua.append(_unmatched(a, obs, f"no node with this {by} in B"))
            continue
        used.add(hit)
        pairs.append(Pair(key, obs[2], obs, hit, (_seq(a, obs), obs[0])))
    ub = [_unmatched(b, o, f"no node with this {by} in A") for o in b.records if o[0] in b.nodes and o not in used]
    return pairs, ua, ub


def _op_keys(side: Side, by: str) -> dict[Obs, tuple]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    occurrence: dict[int, int] = {}
    for node in sorted(side.nodes.values(), key=lambda n: n.order):
        occurrence[node.node_id] = counts[(node.scope, node.op_type)]
        counts[(node.scope, node.op_type)] += 1
    keys = {}
    for obs in side.records:
        node = side.nodes.get(obs[0])
        if node is None:
            continue
        keys[obs] = (node.scope, node.op_type, occurrence[node.node_id], obs[1]) if by == "scope" else (node.name, obs[1])
    return keys


def _tensor(side: Side, obs: Obs) -> str:
    outs = side.nodes[obs[0]].outputs
    slot = int(obs[1]) if obs[1].isdigit() else -1
    return outs[slot] if 0 <= slot < len(outs) else ""


def _match_ops(a: Side, b: Side, by: str) -> tuple[list[Pair], list[Unmatched], list[Unmatched]]:
    a_keys, b_keys = _op_keys(a, by), _op_keys(b, by)
    b_primary = {k: o for o, k in b_keys.items()}
    b_names = {(b.nodes[o[0]].name, o[1]): o for o in b_keys}
    b_tensors = {_tensor(b, o): o for o in b_keys if _tensor(b, o)}
    used: set[Obs] = set()
    pairs, ua = [], []
    for obs in sorted(a_keys, key=lambda o: (a.nodes[o[0]].order, _slot_key(o[1]))):
        hit = None
        for candidate in (b_primary.get(a_keys[obs]), b_names.get((a.nodes[obs[0]].name, obs[1])), b_tensors.get(_tensor(a, obs))):
            if candidate is not None and candidate not in used:
                hit = candidate
                break
        if hit is None:
            ua.append(_unmatched(a, obs, f"no node with this {by}, name or tensor in B"))
            continue
        used.add(hit)
        key = a.nodes[obs[0]].scope if by == "scope" else a.nodes[obs[0]].name
        pairs.append(Pair(key, 0, obs, hit, (a.nodes[obs[0]].order, _slot_key(obs[1])), frozenset({obs[0]}), "a"))
    ub = [_unmatched(b, o, f"no node with this {by}, name or tensor in A") for o in b_keys if o not in used]
    return pairs, ua, ub


def _match_module_to_ops(m: Side, o: Side, by: str, *, module_label: str) -> tuple[list[Pair], list[Unmatched], list[Unmatched]]:
    units = _module_units(m, by)
    ops = _OpGroups(o)
    pairs: list[Pair] = []
    um: list[Unmatched] = []
    covered: set[int] = set()
    paired: set[Obs] = set()
    for unit in sorted(units.obs, key=lambda u: units.seq[u]):
        key, call = unit
        groups = ops.groups(key) if by == "scope" else [[n.node_id for n in ops.nodes if n.name == key]]
        groups = [g for g in groups if g]
        if call >= len(groups):
            reason = "no ONNX node with this scope" if not groups else f"call {call} has no op group ({len(groups)} found)"
            um.extend(_unmatched(m, obs, reason) for obs in units.obs[unit])
            continue
        group = groups[call]
        # A tensor may stand for several modules (a block's output is its last ReLU's),
        # so op outputs are shared across units, never within one unit's slots.
        assigned = _assign_slots(m, o, units.obs[unit], ops.leaving(group))
        for obs in units.obs[unit]:
            hit, how = assigned.get(obs, (None, ""))
            if hit is None:
                um.append(_unmatched(m, obs, "no output of the op group has this shape and dtype"))
                continue
            paired.add(hit)
            if key:
                covered.update(group)
            depth = key.count(".") + 1 if key else 0
            order = (o.nodes[hit[0]].order, -depth, units.seq[unit])
            a_obs, b_obs = (obs, hit) if module_label == "a" else (hit, obs)
            pairs.append(Pair(key, call, a_obs, b_obs, order, frozenset(group), "b" if module_label == "a" else "a", how))
    uo = [
        _unmatched(o, x, "outside every matched module") for x in o.records if x[0] in o.nodes and x[0] not in covered and x not in paired
    ]
    return pairs, um, uo


def _same_type(m: Side, o: Side, slot: Obs, tensor: Obs) -> bool:
    sm, so = _signature(m, slot), _signature(o, tensor)
    return sm[0] == so[0] and (not sm[1] or not so[1] or sm[1] == so[1])


def _assign_slots(m: Side, o: Side, slots: list[Obs], leaving: list[Obs]) -> dict[Obs, tuple[Obs, str]]:
    """Which leaving op tensor is which module output slot (see the module doc)."""
    out: dict[Obs, tuple[Obs, str]] = {}
    latest = sorted(leaving, key=lambda x: o.nodes[x[0]].order, reverse=True)
    if len(slots) == 1:
        same = [x for x in latest if _same_type(m, o, slots[0], x)]
        if same:
            out[slots[0]] = (same[0], "identity")
        return out
    classes: dict[tuple, list[Obs]] = defaultdict(list)
    for obs in slots:
        classes[_signature(m, obs)].append(obs)
    for members in classes.values():
        cands = [x for x in latest if _same_type(m, o, members[0], x)]
        if len(cands) == 1 and len(members) == 1:
            out[members[0]] = (cands[0], "identity")
        elif cands:
            out.update({s: (t, "inferred") for s, t in _by_signature(m, o, members, cands).items()})
    return out


_MAX_PERMUTED = 6


def _by_signature(m: Side, o: Side, slots: list[Obs], cands: list[Obs]) -> dict[Obs, Obs]:
    """Assign same-shaped slots to candidate tensors by their statistics (smallest worst error, then sum)."""
    import itertools

    def cost(s: Obs, t: Obs) -> float:
        rs, rt = _first(m.records[s]), _first(o.records[t])
        tol = tolerance_for(str(rs.get("dtype")), str(rt.get("dtype")))
        err = compare_stats(rs, rt, tol).error
        return err if err == err else float("inf")

    costs = {(s, t): cost(s, t) for s in slots for t in cands}
    if len(cands) <= _MAX_PERMUTED:
        best: tuple | None = None
        for perm in itertools.permutations(cands, min(len(slots), len(cands))):
            errs = [costs[(s, t)] for s, t in zip(slots, perm)]
            score = (max(errs), sum(errs))
            if best is None or score < best[0]:
                best = (score, perm)
        return dict(zip(slots, best[1])) if best else {}
    out: dict[Obs, Obs] = {}
    for (s, t), _ in sorted(costs.items(), key=lambda kv: kv[1]):  # greedy for many candidates
        if s not in out and t not in out.values():
            out[s] = t
    return out
