"""The loss analyzer: divergence, memorisation (real traced runs), spikes/plateaus/noise (written curves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _analyzer_runs import LR_JUMP_STEP, cached, healthy_mlp, lr_jump, memorise

import tracefmt
import tracefmt.analyzers as ta
from tracefmt.errors import UsageError


def _codes(report, code):
    return [f for f in report.findings_list if f.code == code]


def test_learning_rate_jump_diverges_at_the_jump():
    report = ta.run(cached("lr-jump", lr_jump), names=["loss"])
    div = _codes(report, "divergence")
    assert len(div) == 1 and div[0].severity == "error"
    # The step that uses lr=50 is LR_JUMP_STEP; its effect shows in the loss of the next step.
    assert LR_JUMP_STEP <= div[0].step_first <= LR_JUMP_STEP + 3


def test_memorised_training_set_shows_the_gap_and_overfitting():
    report = ta.run(cached("memorise", memorise), names=["loss"])
    gap = _codes(report, "train-val-gap")
    assert len(gap) == 1 and gap[0].severity == "warning" and gap[0].value >= 10
    assert _codes(report, "overfitting")
    assert not _codes(report, "divergence")


def test_healthy_run_loss_has_no_alarms():
    report = ta.run(cached("healthy-mlp", healthy_mlp), names=["loss"])
    assert [f for f in report.findings_list if f.severity != "info"] == []


def _curve(tmp_path, values, *, name="loss", val=None):
    path = tmp_path / "curve.trace"
    with tracefmt.TraceWriter(path) as w:
        for step, v in enumerate(values):
            w.log_scalar(name, float(v), step=step)
        for step, v in (val or {}).items():
            w.log_scalar("val_loss", float(v), step=step, phase="eval")
    return path


def _decay(n=200, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    return 2.3 * np.exp(-np.arange(n) / 60) + 0.1 + noise * rng.standard_normal(n)


def test_clean_decaying_curve_has_no_alarms(tmp_path):
    report = ta.run(_curve(tmp_path, _decay()), names=["loss"])
    assert [f for f in report.findings_list if f.severity != "info"] == []


def test_spike_found_at_its_step(tmp_path):
    y = _decay()
    y[120] = 3.0
    report = ta.run(_curve(tmp_path, y), names=["loss"])
    spikes = _codes(report, "loss-spike")
    assert len(spikes) == 1 and spikes[0].step_first == 120 == spikes[0].step_last
    assert not _codes(report, "divergence")


def test_nan_loss_is_divergence_at_that_step(tmp_path):
    y = _decay(60)
    y[37:] = math.nan
    div = _codes(ta.run(_curve(tmp_path, y), names=["loss"]), "divergence")
    assert len(div) == 1 and div[0].step_first == 37 and "NaN" in div[0].message


def test_gradual_blow_up_is_divergence(tmp_path):
    y = np.concatenate([_decay(100), 0.6 * np.exp(np.arange(40) / 5)])
    div = _codes(ta.run(_curve(tmp_path, y), names=["loss"]), "divergence")
    assert len(div) == 1
    # 0.6 exp(k / 5) passes 4 x the best (~0.5) and the initial 2.4 near k = 7..8.
    assert 105 <= div[0].step_first <= 110


def test_flat_loss_is_no_progress(tmp_path):
    y = 2.3 + 0.01 * np.random.default_rng(1).standard_normal(100)
    report = ta.run(_curve(tmp_path, y), names=["loss"])
    assert [f.severity for f in _codes(report, "no-progress")] == ["warning"]


def test_noisy_loss_is_reported_as_info(tmp_path):
    report = ta.run(_curve(tmp_path, _decay(noise=0.0) * np.exp(np.random.default_rng(2).normal(0, 0.8, 200))), names=["loss"])
    noisy = _codes(report, "noisy-loss")
    assert len(noisy) == 1 and noisy[0].severity == "info"


def test_mild_generalisation_gap_is_info(tmp_path):
    y = _decay()
    val = {s: 3.0 * y[s] + 0.05 for s in range(19, 200, 20)}
    report = ta.run(_curve(tmp_path, y, val=val), names=["loss"])
    gap = _codes(report, "train-val-gap")
    assert [f.severity for f in gap] == ["info"]
    assert not _codes(report, "overfitting")


def test_loss_name_parameter_and_missing_series(tmp_path):
    path = _curve(tmp_path, _decay(), name="train/nll")
    report = ta.run(path, names=["loss"])
    assert "no scalar series named 'loss'" in report.skipped["loss"] and "train/nll" in report.skipped["loss"]
    report = ta.run(path, names=["loss"], params={"loss.loss_name": "train/nll"})
    assert "loss" in report.results
    with pytest.raises(UsageError, match="loss.smooth"):
        ta.run(path, names=["loss"], params={"loss.smooth": "five"})


def test_blow_up_that_falls_back_is_still_divergence(tmp_path):
    y = _decay()
    y[100:108] = 500.0  # eight steps far above everything, then training resumes
    report = ta.run(_curve(tmp_path, y), names=["loss"])
    div = _codes(report, "divergence")
    assert len(div) == 1 and div[0].step_first == 100 and div[0].severity == "error"
    assert "falls back by step" in div[0].message
