"""The gradients analyzer on real traced runs: vanishing, exploding, update ratio, NaN origin."""

from __future__ import annotations

import pytest
import tracefmt.analyzers as ta
from _analyzer_runs import LR_JUMP_STEP, cached, lr_jump, mlp, train


def _codes(report, code):
    return [f for f in report.findings_list if f.code == code]


@pytest.fixture(scope="module")
def sigmoid_run():
    # Glorot & Bengio (2010): a deep sigmoid network; 8 hidden layers '1', '3', ..., '15', head '17'.
    return cached("deep-sigmoid", lambda p: train(p, mlp(depth=8, activation="sigmoid"), steps=20))


def test_deep_sigmoid_vanishes_in_the_early_layers(sigmoid_run):
    report = ta.run(sigmoid_run, names=["gradients"])
    vanishing = {f.node for f in _codes(report, "vanishing-gradient")}
    assert {"1", "3", "5"} <= vanishing
    assert "17" not in vanishing and "15" not in vanishing
    depth = {d["node"]: d["rms"] for d in report.results["gradients"].data["depth"]}
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
