"""The activations analyzer: telemetry, colorful dimension, saturation (real runs), rising crash (written)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _analyzer_runs import cached, healthy_mlp, mlp, train

import tracefmt
import tracefmt.analyzers as ta
from tracefmt.stats import tensor_stats


def _codes(report, code):
    return [f for f in report.findings_list if f.code == code]


def _saturating(path):
    model = mlp(activation="tanh")
    with torch.no_grad():
        for i in (1, 3, 5):
            model[i].weight.mul_(20.0)  # pre-activations of scale 5-20: tanh at +-1
    return train(path, model, steps=12, channels=False, weight_updates=False)


def test_tanh_with_oversized_weights_is_saturated(tmp_path):
    report = ta.run(_saturating(tmp_path / "sat.trace"), names=["activations"])
    sat = {f.node for f in _codes(report, "saturated")}
    rms = {k: float(np.nanmean(v)) for k, v in report.results["activations"].data["saturation"].items()}
    assert {"4", "6"} <= sat, rms  # the tanh layers fed by large pre-activations
    assert all(f.severity == "warning" for f in _codes(report, "saturated"))
    assert not sat & {"1", "3", "5", "7"}  # Linear layers are unbounded: never judged


def test_healthy_tanh_is_not_saturated(tmp_path):
    report = ta.run(train(tmp_path / "tanh.trace", mlp(activation="tanh"), steps=12, channels=False), names=["activations"])
    assert not _codes(report, "saturated")
    assert set(report.results["activations"].data["saturation"]) == {"2", "4", "6"}


def test_telemetry_matches_the_records():
    path = cached("healthy-mlp", healthy_mlp)
    res = ta.run(path, names=["activations"]).results["activations"]
    trace = tracefmt.open(path)
    rows = trace.read(columns=["step", "std"], nodes=["4"], kinds=["activation"], phases=["train"]).to_pydict()
    want = dict(zip(rows["step"], rows["std"]))
    got = dict(zip(res.data["steps"], res.data["telemetry"]["4"]["std"]))
    assert got.keys() == want.keys()
    assert all(got[s] == pytest.approx(want[s]) for s in want)


def test_figures_are_lazy_and_save_as_png_and_svg(tmp_path):
    res = ta.run(cached("healthy-mlp", healthy_mlp), names=["activations"]).results["activations"]
    assert set(res.figures) == {"telemetry", "colorful_dimension"}
    fig = res.figure("colorful_dimension")
    from tracefmt.analyzers.figures import save_figure

    paths = save_figure(fig, tmp_path / "colorful", formats=("png", "svg"))
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in paths[1].read_bytes()[:500]


def _written(tmp_path, stds):
    """One layer whose activations have the given std at each step (real tensors, reference stats)."""
    path = tmp_path / "crash.trace"
    rng = np.random.default_rng(0)
    with tracefmt.TraceWriter(path) as w:
        w.write_nodes([{"node_id": 0, "name": "conv1", "scope": "conv1", "op_type": "Conv2d", "container": False, "inputs": [], "outputs": [], "param_count": 10, "order": 0}])
        for step, s in enumerate(stds):
            x = rng.standard_normal(4096) * s
            w.write_records([{"step": step, "phase": "train", "node_id": 0, "kind": "activation", "slot": "0", "call": 0, **tensor_stats(x)}])
    return path


def test_rising_crash_found_early(tmp_path):
    # fast.ai's pattern: exponential growth over the first steps, then a collapse.
    stds = [1.0 * 1.6**k for k in range(10)] + [0.05] * 10 + [1.0] * 60
    report = ta.run(_written(tmp_path, stds), names=["activations"])
    crash = _codes(report, "rising-crash")
    assert len(crash) == 1 and crash[0].node == "conv1"
    assert "step 9" in crash[0].message


def test_steady_growth_without_crash_is_not_a_crash(tmp_path):
    stds = [1.0 * 1.05**k for k in range(80)]
    assert not _codes(ta.run(_written(tmp_path, stds), names=["activations"]), "rising-crash")
