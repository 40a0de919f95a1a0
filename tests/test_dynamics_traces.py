"""Dynamics analyzer on traces: features from weight records, a run with known phases and a
detour by construction, and real MLP runs on load_digits (several seeds).

Weight records are written with :class:`tracefmt.TraceWriter` from real arrays, with the
reference statistics of :mod:`tracefmt.stats` (the definition every adapter meets),
including the aggregate 'all:weight' / 'all:bias' records at the root container node.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import tracefmt
from tracefmt.analyzers.dynamics import FEATURES, STATES, DynamicsAnalyzer, DynamicsOptions, extract_features, read_states
from tracefmt.errors import UsageError
from tracefmt.schema import spec_column_table
from tracefmt.stats import matrix_stats, tensor_stats

ROOT = Path(__file__).resolve().parent.parent


# -- writing weight traces ------------------------------------------------------------------
def node_rows(layers: list[str]) -> list[dict]:
    rows = [dict(node_id=0, name="", scope="", op_type="Model", parent=None, container=True, inputs=[], outputs=[], param_count=0, order=None)]
    for i, name in enumerate(layers, start=1):
        rows.append(dict(node_id=i, name=name, scope=name, op_type="Linear", parent=0, container=False,
                         inputs=[f"t{i - 1}"], outputs=[f"t{i}"], param_count=0, order=i - 1))  # fmt: skip
    return rows


def weight_rows(step: int, params: dict[tuple[int, str], np.ndarray]) -> list[dict]:
    """Per-parameter weight records plus the aggregate records at the root node (id 0)."""
    rows = []
    for (nid, slot), w in params.items():
        rec = dict(step=step, phase="train", node_id=nid, kind="weight", slot=slot, call=0, **tensor_stats(w, binning=None))
        rec.update(matrix_stats(w) or {})
        rows.append(rec)
    for slot, want_bias in (("all:weight", False), ("all:bias", True)):
        parts = [w.ravel() for (_, s), w in params.items() if ("bias" in s) == want_bias]
        if parts:
            rows.append(dict(step=step, phase="train", node_id=0, kind="weight", slot=slot, call=0,
                             **tensor_stats(np.concatenate(parts), binning=None, median=True)))  # fmt: skip
    return rows


def write_run(path: Path, layers: list[str], checkpoints: list[tuple[int, dict]], scalars: list[tuple[int, int, str, str, float]] = (), run_id=None):
    with tracefmt.TraceWriter(path, run_id=run_id, flush_interval=0) as w:
        w.write_nodes(node_rows(layers))
        for step, params in checkpoints:
            w.write_records(weight_rows(step, params))
        for step, epoch, phase, name, value in scalars:
            w.log_scalar(name, value, step=step, phase=phase, epoch=epoch)
    return tracefmt.open(path)


# -- features ---------------------------------------------------------------------------------
def test_features_match_direct_numpy(tmp_path):
    rng = np.random.default_rng(0)
    ckpts = []
    for step in (0, 10, 20):
        ckpts.append((step, {(1, "weight"): rng.normal(size=(6, 4)), (1, "bias"): rng.normal(size=6),
                             (2, "weight"): rng.normal(size=(3, 6)), (2, "bias"): rng.normal(size=3),
                             (3, "weight"): rng.normal(size=(2, 3, 3, 3))}))  # fmt: skip
    trace = write_run(tmp_path / "t", ["fc1", "fc2", "conv"], ckpts)
    run = extract_features(trace)
    assert run.names == FEATURES and list(run.steps) == [0, 10, 20]
    for row, (_, p) in zip(run.values, ckpts):
        mats = [p[(1, "weight")], p[(2, "weight")]]
        every = mats + [p[(3, "weight")]]
        sv = [np.linalg.svd(m, compute_uv=False) for m in mats]
        allw = np.concatenate([a.ravel() for a in every])
        allb = np.concatenate([p[(1, "bias")], p[(2, "bias")]])
        expect = {
            "l1": np.mean([np.abs(a).sum() for a in every]),
            "l2": np.mean([np.sqrt((a**2).sum()) for a in every]),
            "code_sparsity": np.mean([np.abs(a).sum() / np.sqrt((a**2).sum()) for a in every]),
            "trace": np.mean([np.trace(m) for m in mats]),
            "spectral": np.mean([s[0] for s in sv]),
            "computational_sparsity": np.mean([np.trace(m) / s[0] for m, s in zip(mats, sv)]),
            "sv_mean": np.mean([s.mean() for s in sv]),
            "sv_var": np.mean([s.var() for s in sv]),
            "w_mean": allw.mean(), "w_var": allw.var(), "w_median": np.sort(allw)[(allw.size - 1) // 2],
            "b_mean": allb.mean(), "b_var": allb.var(), "b_median": np.sort(allb)[(allb.size - 1) // 2],
        }  # fmt: skip
        np.testing.assert_allclose(row, [expect[f] for f in FEATURES], rtol=1e-9, atol=1e-12)
    # The reference code's conventions: unbiased variances (torch.var).
    run1 = extract_features(trace, DynamicsOptions(variance_ddof=1))
    p = ckpts[0][1]
    allw = np.concatenate([a.ravel() for k, a in p.items() if k[1] == "weight"])
    assert run1.values[0, FEATURES.index("w_var")] == pytest.approx(allw.var(ddof=1), rel=1e-9)
    svs = [np.linalg.svd(p[(n, "weight")], compute_uv=False) for n in (1, 2)]
    assert run1.values[0, FEATURES.index("sv_var")] == pytest.approx(np.mean([s.var(ddof=1) for s in svs]), rel=1e-9)
    # Hook points restrict the averaged matrices (the global statistics stay global).
    only = extract_features(trace, DynamicsOptions(nodes=("fc2",)))
    assert only.values[0, FEATURES.index("l1")] == pytest.approx(np.abs(p[(2, "weight")]).sum())
    with pytest.raises(UsageError, match="unknown node 'fc9'.*available: conv, fc1, fc2"):
        extract_features(trace, DynamicsOptions(nodes=("fc9",)))


def test_missing_aggregates_and_matrix_stats_degrade_with_findings(tmp_path):
    rng = np.random.default_rng(1)
    with tracefmt.TraceWriter(tmp_path / "t", flush_interval=0) as w:
        w.write_nodes(node_rows(["fc1"]))
        for step in range(4):
            a = rng.normal(size=(5, 5))
            # Plain statistics only: no matrix statistics, no aggregate records.
            w.write_records([dict(step=step, phase="train", node_id=1, kind="weight", slot="weight", call=0, **tensor_stats(a, binning=None))])
    run = extract_features(tracefmt.open(tmp_path / "t"))
    assert run.names == ("l1", "l2", "code_sparsity")
    # One finding per cause, naming the features it drops; bookkeeping about the analyzer's
    # inputs, not a claim about the training run: info.
    missing = {f.metric: f.message for f in run.findings if f.code == "dynamics-feature-missing"}
    assert set(missing) == {"trace,spectral,computational_sparsity,sv_mean,sv_var", "w_mean,w_var,w_median", "b_mean,b_var,b_median"}
    assert all(f.severity == "info" for f in run.findings)
    assert "all:weight" in missing["w_mean,w_var,w_median"] and "matrix statistics" in missing["trace,spectral,computational_sparsity,sv_mean,sv_var"]


def test_midpoint_median_from_raw_tensors(tmp_path):
    rng = np.random.default_rng(2)
    with tracefmt.TraceWriter(tmp_path / "t", flush_interval=0) as w:
        w.write_nodes(node_rows(["fc1"]))
        for step in range(3):
            p = {(1, "weight"): rng.normal(size=(4, 4)), (1, "bias"): rng.normal(size=4)}
            w.write_records(weight_rows(step, p))
            for (nid, slot), a in p.items():
                w.write_tensor(a, step=step, node_id=nid, kind="weight", slot=slot)
            if step == 0:
                first = p
    trace = tracefmt.open(tmp_path / "t")
    lower = extract_features(trace)
    mid = extract_features(trace, DynamicsOptions(median="midpoint"))
    wv = first[(1, "weight")].ravel()
    assert mid.values[0, FEATURES.index("w_median")] == pytest.approx(np.median(wv))
    assert lower.values[0, FEATURES.index("w_median")] == pytest.approx(np.sort(wv)[7])
    assert np.median(wv) != np.sort(wv)[7]


# -- a run with known phases and a detour -----------------------------------------------------
def phased_runs(tmp_path, detour_lengths=(5, 6, 7, 8, 9, 10), n_ckpt=60, first_phase=12, seed=100):
    """Runs of a 2-layer net whose weights live in three regimes by construction.

    Phase A (checkpoints 0..11), detour D (the next L_r checkpoints), phase B (the rest)
    differ in three independent directions: the diagonal added to fc1 (trace), the scale
    of fc2 (L2) and the offset of the biases (b_mean); each gets its own noise at every
    checkpoint. Accuracy crosses 0.9 one or two checkpoints into B, so the time spent in
    D delays convergence.
    """
    diag, scale, offset = (0.0, 1.5, 0.6), (1.0, 1.6, 0.5), (0.0, 0.5, -0.4)
    traces, truth = [], []
    for r, length in enumerate(detour_lengths):
        rng = np.random.default_rng(seed + r)
        base1, base2 = rng.normal(size=(8, 8)), rng.normal(size=(4, 8))
        b1, b2 = rng.normal(size=8), rng.normal(size=4)
        ckpts, scalars = [], []
        delay = int(rng.integers(1, 3))
        for t in range(n_ckpt):
            ph = 0 if t < first_phase else 1 if t < first_phase + length else 2
            e = rng.normal(0, 0.1, size=3)
            p = {(1, "weight"): base1 + (diag[ph] + e[0]) * np.eye(8), (1, "bias"): b1 + offset[ph] + e[2],
                 (2, "weight"): (scale[ph] + e[1]) * base2, (2, "bias"): b2 + offset[ph] + e[2]}  # fmt: skip
            step = 100 * t
            ckpts.append((step, p))
            acc = 0.95 if t >= first_phase + length + delay else 0.3 + 0.01 * t
            scalars.append((step, t, "eval", "accuracy", acc))
        traces.append(write_run(tmp_path / f"run{r}", ["fc1", "fc2"], ckpts, scalars, run_id=f"seed{r}"))
        truth.append((100 * first_phase, 100 * (first_phase + length)))
    return traces, truth


PHASE_FEATURES = "trace,l2,b_mean"


def test_known_phases_and_detour_in_traces(tmp_path):
    traces, truth = phased_runs(tmp_path)
    # The three features that carry the construction's independent noise (the other
    # metrics follow them deterministically, which a diagonal covariance cannot express).
    # Asked explicitly: analysis writes into a trace only when told to.
    result = DynamicsAnalyzer().analyze_runs(traces, {"k_max": 4, "restarts": 2, "holdout_min_runs": 99, "features": PHASE_FEATURES, "write_states": "trace"})
    data = result.data
    assert data["n_states"] == 3
    for t, (a_to_d, d_to_b) in zip(traces, truth):
        changes = data["change_points"][t.run_id]
        assert len(changes) == 2
        assert abs(changes[0] - a_to_d) <= 100 and abs(changes[1] - d_to_b) <= 100
    finds = [f for f in result.findings if f.code == "dynamics-phase-change"]
    first = data["change_points"][traces[0].run_id][0]
    assert any(f.step_last == first and f.value == 1.0 and traces[0].run_id in f.message for f in finds)
    detours = [f for f in result.findings if f.code == "dynamics-detour-state"]
    assert len(detours) == 1 and "state 1 " in detours[0].message
    d1 = next(d for d in data["detours"] if d["state"] == 1)
    assert d1["r"] > 0.9 and d1["p_value"] < 0.05
    # Two-sided Pearson p-value, recomputed here from r and n.
    from scipy import stats

    n = d1["n_runs"]
    tstat = d1["r"] * np.sqrt((n - 2) / (1 - d1["r"] ** 2))
    assert d1["p_value"] == pytest.approx(2 * stats.t.sf(abs(tstat), n - 2), rel=1e-6)
    # The state table is in each trace, one row per checkpoint of that run.
    table = read_states(traces[2].path)
    assert table.schema.equals(STATES.schema, check_metadata=False)
    assert table.num_rows == 60 and set(table.column("run_id").to_pylist()) == {traces[2].run_id}
    assert table.column("state").to_pylist()[:12] == [0] * 12
    assert (Path(traces[2].path) / "dynamics" / "model.json").is_file()
    # A -> D raises the diagonal (trace) and the scale of fc2 (L2); D -> B lowers the scale.
    edges = {(e["source"], e["target"]): e for e in data["edges"]}
    assert set(edges) == {(0, 1), (1, 2)}
    top = dict(edges[(0, 1)]["top"])
    assert top.get("trace", 0) > 0 and top.get("l2", 0) > 0
    assert edges[(1, 2)]["top"][0][0] == "l2" and edges[(1, 2)]["top"][0][1] < 0


def test_too_few_runs_for_detours_is_said(tmp_path):
    traces, _ = phased_runs(tmp_path, detour_lengths=(4, 8), n_ckpt=30)
    result = DynamicsAnalyzer().analyze_runs(traces, {"k_max": 3, "restarts": 1, "write_states": "none", "features": PHASE_FEATURES})
    skipped = [f for f in result.findings if f.code == "dynamics-detours-skipped"]
    assert skipped and "at least 3 runs" in skipped[0].message
    assert result.data["detours"] == [] and "at least 3 runs" in result.data["detour_note"]
    assert not (Path(traces[0].path) / "dynamics").exists()
    # No detours: no empty panel; the reason is in the finding and the data.
    assert "detours" not in result.figures


def test_single_run_analyze(tmp_path):
    traces, truth = phased_runs(tmp_path, detour_lengths=(6,), n_ckpt=30)
    result = DynamicsAnalyzer().analyze(traces[0], {"k_max": 4, "restarts": 2, "features": PHASE_FEATURES})
    assert result.data["n_states"] == 3
    assert result.data["change_points"][traces[0].run_id][0] == pytest.approx(truth[0][0], abs=100)
    assert result.data["heldout_runs"] == []


def test_no_weights_is_a_finding_not_a_crash(tmp_path):
    with tracefmt.TraceWriter(tmp_path / "t", flush_interval=0) as w:
        w.write_nodes(node_rows(["fc1"]))
        w.log_scalar("loss", 1.0, step=0)
    result = DynamicsAnalyzer().analyze(tracefmt.open(tmp_path / "t"), {})
    assert {f.code for f in result.findings} == {"dynamics-no-weights", "dynamics-no-data"}
    assert result.figures == {}


def test_spec_documents_the_state_table():
    spec = (ROOT / "spec" / "DYNAMICS.md").read_text()
    m = re.search(r"<!-- BEGIN GENERATED: dynamics_states -->\n(.*?)\n<!-- END GENERATED: dynamics_states -->", spec, re.S)
    assert m, "spec/DYNAMICS.md lacks the generated state-table region"
    assert m.group(1) == spec_column_table(STATES)
    for name in FEATURES:
        assert f"`{name}`" in spec
    assert pa.types.is_int64(STATES.schema.field("step").type)
