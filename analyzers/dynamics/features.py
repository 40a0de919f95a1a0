"""Weight metrics -> the 14 training-dynamics features per checkpoint (spec/DYNAMICS.md 'Features').

The features of Hu, Chen, Saphra & Cho, "Latent State Models of Training Dynamics"
(TMLR 2023), computed from weight *records* only, so any adapter can supply them:

* per weight matrix W at a hook point (records with ``kind='weight'``, a slot without
  'bias', 2 dimensions): ``L1 = sum |w|`` (= ``abs_mean`` x finite count), ``L2`` (Frobenius,
  the record's ``l2``), ``trace`` (``mat_trace``), ``spectral`` (``mat_spectral``), code
  sparsity ``L1/L2``, computational sparsity ``trace/spectral``, ``sv_mean``
  (``mat_sv_mean``) and ``sv_var`` (``mat_sv_var``); each averaged over the matrices;
  conv kernels (more than 2 dimensions) contribute to L1, L2 and L1/L2 only;
* global mean, variance and median of all weights and of all biases, from the aggregate
  records with slots ``'all:weight'`` and ``'all:bias'`` (mean, std, median).

Features that cannot be computed (no matrix statistics, no aggregate records) are
dropped with a warning finding; nothing here raises on missing data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tracefmt.errors import UsageError
from tracefmt.findings import Finding

from .options import DynamicsOptions, MedianKind

if TYPE_CHECKING:
    from tracefmt import Trace

__all__ = ["FEATURES", "MATRIX_FEATURES", "GLOBAL_FEATURES", "RunFeatures", "extract_features", "common_features"]

ANALYZER = "dynamics"

#: Features averaged over the weight matrices at the hook points, in spec order.
MATRIX_FEATURES = ("l1", "l2", "trace", "spectral", "code_sparsity", "computational_sparsity", "sv_mean", "sv_var")
#: Global distribution statistics of all weights (w_) and of all biases (b_).
GLOBAL_FEATURES = ("w_mean", "w_var", "w_median", "b_mean", "b_var", "b_median")
#: All 14 features, in the order of the feature matrix's columns.
FEATURES = MATRIX_FEATURES + GLOBAL_FEATURES
#: Features defined for conv kernels (more than 2 dimensions) too.
_KERNEL_FEATURES = ("l1", "l2", "code_sparsity")
_AGGREGATE_SLOTS = {"w": "all:weight", "b": "all:bias"}
_COLUMNS = [
    "step", "phase", "node_id", "slot", "call", "shape", "numel", "nan_count", "inf_count",
    "mean", "std", "abs_mean", "l2", "median", "mat_trace", "mat_spectral", "mat_sv_mean", "mat_sv_var",
]  # fmt: skip


@dataclass
class RunFeatures:
    """The feature matrix of one run.

    Attributes:
        run_id: The run's identifier (from the trace manifest).
        steps: Checkpoint steps, ascending, shape (T,).
        epochs: Epoch of each checkpoint from the scalars table, or None when unknown.
        values: Feature values, shape (T, F), raw units (not z-scored).
        names: The F feature names (a subset of :data:`FEATURES`, in its order).
        findings: Warnings about dropped features or checkpoints.
    """

    run_id: str
    steps: np.ndarray
    epochs: list[int | None] | None
    values: np.ndarray
    names: tuple[str, ...]
    findings: list[Finding] = field(default_factory=list)

    def select(self, names: tuple[str, ...]) -> RunFeatures:
        """The same run restricted to ``names`` (which must all be present)."""
        idx = [self.names.index(n) for n in names]
        return RunFeatures(self.run_id, self.steps, self.epochs, self.values[:, idx], tuple(names), list(self.findings))


def _warn(code: str, message: str, **kw: object) -> Finding:
    # What the features could not use is bookkeeping about the analyzer's inputs, never a
    # claim that the training run is wrong: info.
    return Finding(ANALYZER, code, "info", message, **kw)  # type: ignore[arg-type]


def _finite_count(t: dict[str, np.ndarray]) -> np.ndarray:
    return (t["numel"] - t["nan_count"] - t["inf_count"]).astype(np.float64)


def _ddof_factor(n: np.ndarray, ddof: int) -> np.ndarray:
    """Multiply a population variance by this to get the variance with ``ddof`` (NaN if n <= ddof)."""
    n = np.asarray(n, dtype=np.float64)
    if ddof == 0:
        return np.ones_like(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > ddof, n / (n - ddof), np.nan)


def _read_weight_records(trace: Trace, opts: DynamicsOptions) -> dict[str, np.ndarray]:
    table = trace.read("records", kinds="weight", phases=opts.phase, columns=_COLUMNS)
    if table.num_rows:
        # One row per (step, node, slot): a parameter observed twice in a step (several
        # phases or calls) is the same tensor, so the first row is kept.
        table = table.sort_by([("step", "ascending"), ("node_id", "ascending"), ("slot", "ascending"), ("call", "ascending")])
    cols: dict[str, np.ndarray] = {}
    for name in _COLUMNS:
        col = table.column(name)
        if name in ("slot", "phase"):
            cols[name] = np.asarray(col.to_pylist(), dtype=object)
        elif name == "shape":
            cols["ndim"] = np.asarray([len(s) for s in col.to_pylist()], dtype=np.int64)
            cols["min_dim"] = np.asarray([min(s) if s else 0 for s in col.to_pylist()], dtype=np.int64)
        elif pa.types.is_floating(col.type):
            cols[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        else:
            cols[name] = col.to_numpy(zero_copy_only=False).astype(np.int64)
    seen: set[tuple] = set()
    keep = []
    for i, key in enumerate(zip(cols["step"].tolist(), cols["node_id"].tolist(), cols["slot"].tolist())):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) < len(cols["step"]):
        cols = {k: v[keep] for k, v in cols.items()}
    return cols


def _epochs_for(trace: Trace, steps: np.ndarray) -> list[int | None] | None:
    if not trace.has("scalars"):
        return None
    sc = trace.scalars
    if not sc.num_rows:
        return None
    s = sc.column("step").to_numpy()
    e = sc.column("epoch").to_pylist()
    known = {int(st): ep for st, ep in zip(s, e) if ep is not None}
    if not known:
        return None
    return [known.get(int(st)) for st in steps]


def _hook_mask(trace: Trace, rec: dict[str, np.ndarray], opts: DynamicsOptions) -> np.ndarray:
    slots = rec["slot"]
    is_param = np.array([not s.startswith("all:") and "bias" not in s for s in slots], dtype=bool)
    mask = is_param & (rec["ndim"] >= 2)
    if opts.nodes is not None:
        nodes = trace.nodes
        wanted = set(opts.nodes)
        rows = list(zip(nodes.column("node_id").to_pylist(), nodes.column("name").to_pylist(), nodes.column("scope").to_pylist()))
        known = {name for _, name, _ in rows} | {scope for _, _, scope in rows}
        missing = sorted(wanted - known)
        if missing:
            names = sorted(n for n in known if n)
            raise UsageError(f"dynamics: {trace.path}: unknown node {missing[0]!r} in 'nodes'; available: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
        ids = {nid for nid, name, scope in rows if name in wanted or scope in wanted}
        mask &= np.isin(rec["node_id"], list(ids))
    return mask


def _matrix_features(rec: dict[str, np.ndarray], steps: np.ndarray, opts: DynamicsOptions) -> dict[str, np.ndarray]:
    """Per-step means over the hook-point matrices; NaN where a step has no value."""
    n = _finite_count(rec)
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = rec["abs_mean"] * n
        per = {
            "l1": l1,
            "l2": rec["l2"],
            "code_sparsity": np.where(rec["l2"] > 0, l1 / rec["l2"], np.nan),
            "trace": rec["mat_trace"],
            "spectral": rec["mat_spectral"],
            "computational_sparsity": np.where(rec["mat_spectral"] > 0, rec["mat_trace"] / rec["mat_spectral"], np.nan),
            "sv_mean": rec["mat_sv_mean"],
            # min(shape) singular values: the record's population variance rescaled for ddof.
            "sv_var": rec["mat_sv_var"] * _ddof_factor(rec["min_dim"], opts.variance_ddof),
        }
    is_matrix = rec["ndim"] == 2
    step_idx = np.searchsorted(steps, rec["step"])
    out = {}
    for name, v in per.items():
        usable = np.ones_like(is_matrix) if name in _KERNEL_FEATURES else is_matrix
        sums = np.zeros(len(steps))
        cnts = np.zeros(len(steps))
        ok = usable & np.isfinite(v)
        np.add.at(sums, step_idx[ok], v[ok])
        np.add.at(cnts, step_idx[ok], 1.0)
        # A step where some hook matrix lacks the value would average over a different
        # set of matrices: make it NaN rather than silently comparable.
        need = np.zeros(len(steps))
        np.add.at(need, step_idx[usable], 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.where((cnts == need) & (cnts > 0), sums / cnts, np.nan)
    return out


def _global_features(
    trace: Trace, rec: dict[str, np.ndarray], steps: np.ndarray, opts: DynamicsOptions, findings: list[Finding]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for prefix, slot in _AGGREGATE_SLOTS.items():
        sel = rec["slot"] == slot
        vals = {k: np.full(len(steps), np.nan) for k in ("mean", "var", "median")}
        if sel.any():
            idx = np.searchsorted(steps, rec["step"][sel])
            inside = (idx < len(steps)) & (steps[np.minimum(idx, len(steps) - 1)] == rec["step"][sel])
            n = _finite_count({k: rec[k][sel] for k in ("numel", "nan_count", "inf_count")})
            vals["mean"][idx[inside]] = rec["mean"][sel][inside]
            vals["var"][idx[inside]] = (rec["std"][sel] ** 2 * _ddof_factor(n, opts.variance_ddof))[inside]
            vals["median"][idx[inside]] = rec["median"][sel][inside]
        if opts.median == MedianKind.MIDPOINT:
            vals["median"] = _midpoint_medians(trace, steps, bias=(prefix == "b"), findings=findings, fallback=vals["median"])
        for k, v in vals.items():
            out[f"{prefix}_{k}"] = v
    return out


def _midpoint_medians(trace: Trace, steps: np.ndarray, *, bias: bool, findings: list[Finding], fallback: np.ndarray) -> np.ndarray:
    """numpy.median of all weights (or biases) per step, from raw tensors when the trace has them."""
    per_step: dict[int, list[np.ndarray]] = {}
    if trace.has("tensors"):
        for key, arr in trace.tensors(kinds="weight"):
            slot = str(key["slot"])
            if slot.startswith("all:") or (("bias" in slot) != bias):
                continue
            per_step.setdefault(int(key["step"]), []).append(np.asarray(arr, dtype=np.float64).reshape(-1))
    if not per_step:
        what = "biases" if bias else "weights"
        findings.append(_warn("dynamics-median-fallback", f"median='midpoint' needs raw weight tensors in {trace.path}; "
                              f"none found for the {what}, so the lower median of the aggregate records is used"))  # fmt: skip
        return fallback
    out = np.full(len(steps), np.nan)
    for i, s in enumerate(steps):
        parts = per_step.get(int(s))
        if parts:
            a = np.concatenate(parts)
            a = a[np.isfinite(a)]
            out[i] = float(np.median(a)) if a.size else np.nan
    return out


def extract_features(trace: Trace, opts: DynamicsOptions | None = None) -> RunFeatures:
    """Compute the feature matrix of one run from its weight records.

    Checkpoints are the steps with weight records at the hook points. A feature that is
    NaN at every checkpoint is dropped (warning finding); checkpoints where a kept feature
    is still missing are dropped (warning finding).

    Args:
        trace: The run's trace.
        opts: Analyzer options (hook points ``nodes``, ``phase``, ``variance_ddof``, ``median``,
            ``features``). Defaults to the defaults.

    Returns:
        The run's :class:`RunFeatures`; ``values`` has zero rows if the trace has no
        usable weight records.
    """
    opts = opts or DynamicsOptions()
    findings: list[Finding] = []
    rec = _read_weight_records(trace, opts)
    hook = _hook_mask(trace, rec, opts)
    wanted = tuple(f for f in FEATURES if opts.features is None or f in opts.features)
    steps = np.unique(rec["step"][hook]) if hook.any() else np.zeros(0, dtype=np.int64)
    run_id = trace.run_id or str(trace.path)
    if not len(steps):
        findings.append(_warn("dynamics-no-weights", f"{trace.path}: no weight records of 2-D (or conv) weights at the hook points; "
                              "record weights (e.g. TorchTracer(weights=True, matrix_stats=True))"))  # fmt: skip
        return RunFeatures(run_id, steps, None, np.zeros((0, 0)), (), findings)
    cols = _matrix_features({k: v[hook] for k, v in rec.items()}, steps, opts)
    cols.update(_global_features(trace, rec, steps, opts, findings))
    names = [f for f in wanted if not np.isnan(cols[f]).all()]
    by_reason: dict[str, list[str]] = {}
    for f in wanted:
        if f not in names:
            by_reason.setdefault(_why_missing(f), []).append(f)
    for why, feats in by_reason.items():
        listed = ", ".join(f"'{f}'" for f in feats)
        findings.append(_warn("dynamics-feature-missing", f"{trace.path}: feature{'s' if len(feats) > 1 else ''} {listed} dropped: {why}",
                              metric=",".join(feats), value=float(len(feats))))  # fmt: skip
    values = np.stack([cols[f] for f in names], axis=1) if names else np.zeros((len(steps), 0))
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        findings.append(_warn(
            "dynamics-checkpoint-dropped",
            f"{trace.path}: {int(bad.sum())} of {len(steps)} checkpoints dropped: a feature is missing or not finite there "
            "(non-finite weights, or hook points not recorded at that step)",
            step_first=int(steps[bad][0]), step_last=int(steps[bad][-1]), value=float(bad.sum()),
        ))  # fmt: skip
        steps, values = steps[~bad], values[~bad]
    return RunFeatures(run_id, steps, _epochs_for(trace, steps), values, tuple(names), findings)


def _why_missing(feature: str) -> str:
    if feature.startswith("w_"):
        return "no aggregate weight record (kind='weight', slot='all:weight') with this statistic"
    if feature.startswith("b_"):
        return "no aggregate bias record (kind='weight', slot='all:bias') with this statistic (a model without biases?)"
    if feature in ("trace", "spectral", "computational_sparsity", "sv_mean", "sv_var"):
        return "no 2-D weight record with matrix statistics (mat_trace, mat_spectral, mat_sv_mean, mat_sv_var); enable matrix_stats"
    return "no finite value at any checkpoint"


def common_features(runs: list[RunFeatures]) -> tuple[tuple[str, ...], list[Finding]]:
    """Features present in every run (in :data:`FEATURES` order), with a finding per feature lost."""
    present = [set(r.names) for r in runs if r.values.shape[0]]
    if not present:
        return (), []
    common = set.intersection(*present)
    union = set.union(*present)
    findings = [
        _warn("dynamics-feature-missing", f"feature '{f}' dropped: present in only some runs", metric=f)
        for f in FEATURES if f in union and f not in common
    ]  # fmt: skip
    return tuple(f for f in FEATURES if f in common), findings
