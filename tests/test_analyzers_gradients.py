"""The gradients analyzer on real traced runs: vanishing, exploding, update ratio, NaN origin."""

from __future__ import annotations

import pytest
from _analyzer_runs import LR_JUMP_STEP, cached, lr_jump, mlp, train

import tracefmt.analyzers as ta


def _codes(report, code):
    return [f for f in report.findings_list if f.code == code]


@pytest.fixture(scope="module")
def sigmoid_run():
    # Glorot & Bengio (2010): a deep sigmoid network; 8 hidden layers '1', '3', ..., '15', head '17'.
    return cached("deep-sigmoid", lambda p: train(p, mlp(depth=8, activation="sigmoid"), steps=20))


def test_deep_sigmoid_vanishes_in_the_early_layers(sigmoid_run):
    report = ta.run(sigmoid_run, names=["gradients"])
    # One finding for the run of layers from the input side, named at its deepest layer.
    vanishing = _codes(report, "vanishing-gradient")
    assert len(vanishing) == 1 and vanishing[0].node in {"5", "7", "9", "11"}
    assert "from the input side ('1')" in vanishing[0].message
    depth = {d["node"]: d["size"] for d in report.results["gradients"].data["depth"]}
    # Gradients shrink monotonically from the output towards the input.
    chain = [depth[n] for n in ("1", "5", "9", "13", "17")]
    assert chain == sorted(chain)


def test_learning_rate_jump_explodes_at_the_jump():
    report = ta.run(cached("lr-jump", lr_jump), names=["gradients"])
    exploding = _codes(report, "exploding-gradient")
    assert exploding, report.findings_list
    first = min(f.step_first for f in exploding)
    assert LR_JUMP_STEP <= first <= LR_JUMP_STEP + 2
    assert all(f.severity == "error" for f in exploding)


@pytest.mark.parametrize(("module", "step"), [("3", 7), ("5", 4)])
def test_nan_origin_names_the_injected_module_and_step(tmp_path, module, step):
    path = train(tmp_path / "nan.trace", mlp(), steps=step + 4, nan_at=(module, step), channels=False)
    report = ta.run(path, names=["gradients"])
    origin = _codes(report, "nan-origin")
    assert len(origin) == 1
    assert origin[0].node == module and origin[0].step_first == step
    assert origin[0].severity == "error"
    assert report.results["gradients"].data["nan_origin"]["kind"] == "activation"


def test_tiny_learning_rate_updates_below_float32_resolution(tmp_path):
    path = train(tmp_path / "tiny.trace", mlp(), steps=6, lr=1e-9, channels=False)
    report = ta.run(path, names=["gradients"])
    small = {f.node for f in _codes(report, "update-too-small")}
    assert {"1", "3", "5", "7"} <= small


@pytest.mark.parametrize("updates", [True, False])
def test_far_too_high_learning_rate_replaces_weights_each_step(tmp_path, updates):
    path = train(tmp_path / "hi.trace", mlp(), steps=8, lr=50.0, channels=False, weight_updates=updates)
    report = ta.run(path, names=["gradients"])
    large = _codes(report, "update-too-large")
    assert {"1", "3"} <= {f.node for f in large}
    # Without recorded updates the ratio is the lower bound | |W_t| - |W_t-1| | / |W_t-1|.
    assert all(("lower bound" in f.message) is (not updates) for f in large)


def test_healthy_run_has_no_gradient_alarms():
    from _analyzer_runs import healthy_mlp

    report = ta.run(cached("healthy-mlp", healthy_mlp), names=["gradients"])
    assert [f for f in report.findings_list if f.severity != "info"] == []


def _nan_trace(tmp_path, rows, *, with_seq=True):
    """Hand-written records: a 3-layer chain a -> b -> c, NaN/Inf where ``rows`` says."""
    import tracefmt

    path = tmp_path / "order.trace"
    with tracefmt.TraceWriter(path) as w:
        w.write_nodes([
            {"node_id": i, "name": n, "scope": n, "op_type": "Linear", "container": False, "inputs": [], "outputs": [], "param_count": 4, "order": i}
            for i, n in enumerate("abc")
        ])  # fmt: skip
        out = []
        for step, phase, node, kind, seq, nan in rows:
            out.append({"step": step, "phase": phase, "node_id": node, "kind": kind, "slot": "0", "call": 0, "seq": seq if with_seq else None,
                        "dtype": "float32", "shape": [4], "numel": 4, "nan_count": nan, "inf_count": 0, "zero_count": 0, "pos_count": 0, "l2": 1.0})  # fmt: skip
        w.write_records(out)
    return path


def test_nan_origin_forward_precedes_backward_by_seq(tmp_path):
    # Step 3: the forward pass of 'b' (seq 1) goes bad before the backward of 'c' (seq 3),
    # although 'c' has the higher node order; step 2 and the eval phase hold no NaN.
    rows = [(2, "train", n, k, s, 0) for n, k, s in ((0, "activation", 0), (1, "activation", 1), (2, "activation", 2), (2, "gradient", 3))]
    rows += [(3, "train", 0, "activation", 0, 0), (3, "train", 1, "activation", 1, 2), (3, "train", 2, "activation", 2, 4),
             (3, "train", 2, "gradient", 3, 4), (3, "train", 1, "gradient", 4, 4), (3, "train", 0, "gradient", 5, 4)]  # fmt: skip
    for seq in (True, False):
        origin = [f for f in ta.run(_nan_trace(tmp_path / str(seq), rows, with_seq=seq), names=["gradients"]).findings_list if f.code == "nan-origin"]
        assert [(f.node, f.step_first) for f in origin] == [("b", 3)]


def test_nan_origin_in_backward_follows_reverse_order_without_seq(tmp_path):
    # Only gradients are bad: without seq, backward runs from the last node to the first.
    rows = [(5, "train", 0, "gradient", None, 3), (5, "train", 1, "gradient", None, 3), (5, "train", 0, "activation", None, 0)]
    report = ta.run(_nan_trace(tmp_path, rows, with_seq=False), names=["gradients"])
    origin = [f for f in report.findings_list if f.code == "nan-origin"]
    assert [(f.node, f.step_first) for f in origin] == [("b", 5)]
    assert report.results["gradients"].data["nan_origin"]["kind"] == "gradient"


def test_nan_origin_first_step_across_phases(tmp_path):
    # An eval pass at step 4 precedes a training NaN at step 6; at the same step train precedes eval.
    rows = [(6, "train", 0, "activation", 0, 1), (4, "eval", 2, "activation", 2, 1), (4, "train", 1, "activation", 1, 0), (4, "train", 1, "gradient", 3, 0)]
    origin = [f for f in ta.run(_nan_trace(tmp_path, rows), names=["gradients"]).findings_list if f.code == "nan-origin"]
    assert [(f.node, f.step_first) for f in origin] == [("c", 4)] and "(eval)" in origin[0].message


def test_gradient_overflowing_to_inf_is_exploding(tmp_path):
    import tracefmt

    path = tmp_path / "inf.trace"
    with tracefmt.TraceWriter(path) as w:
        w.write_nodes([{"node_id": 0, "name": "fc", "scope": "fc", "op_type": "Linear", "container": False, "inputs": [], "outputs": [], "param_count": 4, "order": 0}])
        w.write_records([
            {"step": s, "phase": "train", "node_id": 0, "kind": "gradient", "slot": "0", "call": 0, "dtype": "float32", "shape": [4], "numel": 4,
             "nan_count": 0, "inf_count": 4 if s >= 6 else 0, "zero_count": 0, "pos_count": 2, "l2": 0.0 if s >= 6 else 0.02}
            for s in range(10)
        ])  # fmt: skip
    report = ta.run(path, names=["gradients"])
    exploding = [f for f in report.findings_list if f.code == "exploding-gradient"]
    assert [(f.node, f.step_first) for f in exploding] == [("fc", 6)] and "Inf" in exploding[0].message
    assert [(f.code, f.step_first) for f in report.findings_list if f.code == "nan-origin"] == [("nan-origin", 6)]
