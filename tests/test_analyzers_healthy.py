"""No false alarms: healthy real training runs give no warning or error from any core analyzer."""

from __future__ import annotations

import pytest
import torch
from _analyzer_runs import cached, healthy_mlp, train
from models import residual_cnn

import tracefmt.analyzers as ta

CORE = ["activations", "dead", "gradients", "loss", "confusion"]


def _alarms(report):
    return [(f.analyzer, f.code, f.node, f.message) for f in report.findings_list if f.severity != "info"]


def test_healthy_mlp_raises_no_alarm():
    report = ta.run(cached("healthy-mlp", healthy_mlp), names=CORE)
    assert set(report.results) == set(CORE) and not report.skipped
    assert _alarms(report) == []


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.trace"
    return train(path, residual_cnn(channels=8), steps=30, optimizer="adam", lr=3e-3, batch=32, eval_every=10, predictions=True)


def test_healthy_residual_cnn_with_batchnorm_raises_no_alarm(cnn_run):
    report = ta.run(cnn_run, names=CORE)
    assert _alarms(report) == []
    # The ReLU module called twice per block is analysed as one node with two calls.
    assert "layer1.relu" in report.results["activations"].data["telemetry"]
