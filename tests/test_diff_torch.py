"""Trace diff between two PyTorch runs: identical, before/after a change, fp32 vs bf16."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from models import digits, residual_cnn

from tracefmt.adapters.torch import trace_forward
from tracefmt.analyzers.diff import diff_traces
from tracefmt.errors import UsageError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    model = residual_cnn(channels=8).eval()
    x = digits(4)[0]
    trace_forward(model, x, root / "base")
    trace_forward(model, x, root / "again")
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    trace_forward(bf16, x.to(torch.bfloat16), root / "bf16")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.layer1.conv1.weight.mul_(1.002)  # a few times the fp32 tolerance
        changed.layer2.conv2.weight.mul_(3.0)  # a large, amplifying change further on
    trace_forward(changed, x, root / "changed")
    return root


def test_identical_runs_agree_and_match_every_module(runs):
    result = diff_traces(runs / "again", runs / "base")
    assert result.first_divergence is None and not result.unmatched_a and not result.unmatched_b
    assert len(result.compared) == 17 and all(c.error == 0 for c in result.compared)
    assert [c.call for c in result.compared if c.key == "layer2.relu"] == [0, 1]


def test_changed_weights_first_divergence_and_amplification(runs):
    result = diff_traces(runs / "changed", runs / "base")
    statuses = {(c.key, c.call): c.status for c in result.compared}
    assert result.first_divergence.key == "layer1.conv1"
    assert statuses[("stem.2", 0)] == "ok"
    # layer2.conv2 already receives out-of-tolerance inputs, but multiplies the error by far
    # more than the growth factor: a second origin. Its successors only inherit.
    assert statuses[("layer2.conv2", 0)] == "origin"
    assert statuses[("layer2.bn2", 0)] == "divergent"
    assert [k for k, s in statuses.items() if s == "origin"] == [("layer1.conv1", 0), ("layer2.conv2", 0)]
    assert diff_traces(runs / "changed", runs / "base", growth=1e9).compared[-1].status == "divergent"
    curve = result.curve
    assert [p["position"] for p in curve] == list(range(17)) and curve[0]["error"] == 0
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["divergent"] is True and doc["first_divergence"]["key"] == "layer1.conv1"


def test_fp32_vs_bf16_uses_the_looser_dtype_tolerance(runs):
    result = diff_traces(runs / "bf16", runs / "base")
    assert result.first_divergence is None
    assert {c.dtype for c in result.compared} == {"bfloat16/float32"}
    assert {(c.atol, c.rtol) for c in result.compared} == {(1e-2, 5e-2)}
    assert max(c.error for c in result.compared) > 0.01  # real bf16 rounding, within tolerance
    strict = diff_traces(runs / "bf16", runs / "base", atol=1e-5, rtol=1e-4)
    assert strict.first_divergence is not None and strict.first_divergence.key == "stem.0"


def test_bad_options_are_usage_errors(runs):
    with pytest.raises(UsageError, match="join key"):
        diff_traces(runs / "base", runs / "again", by="module")
    with pytest.raises(UsageError, match="phase 'train'"):
        diff_traces(runs / "base", runs / "again", phase_a="train")
