"""The dead analyzer on real traced runs whose dead layers and units are known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _analyzer_runs import cached, mlp, train

import tracefmt.analyzers as ta
from tracefmt.adapters.torch import FASTAI_BINNING

# deep_mlp(depth=3): '0' Flatten, '1' Linear, '2' ReLU, '3' Linear, '4' ReLU, '5' Linear, '6' ReLU, '7' Linear.


def _killed(path):
    model = mlp()
    with torch.no_grad():
        model[3].bias.fill_(-100.0)  # every pre-activation of ReLU '4' is about -100
    return train(path, model, steps=30, optimizer="adam", lr=1e-2)


def _half_killed(path):
    model = mlp()
    with torch.no_grad():
        model[3].bias[:16] = -100.0  # units 0..15 of ReLU '4' die, 16..31 live
    return train(path, model, steps=30, optimizer="adam", lr=1e-2)


@pytest.fixture(scope="module")
def killed():
    return cached("dead-bias", _killed)


def _by_code(report, code):
    return [f for f in report.findings_list if f.code == code]


def test_dead_layer_is_the_killed_relu_and_its_linear(killed):
    report = ta.run(killed, names=["dead"])
    dead = _by_code(report, "dead-layer")
    assert [f.node for f in dead] == ["4"]
    assert dead[0].severity == "error" and dead[0].value == pytest.approx(1.0)
    assert dead[0].step_first == 0
    assert "'3'" in dead[0].message  # the cause: its input from the Linear with the bias
    assert [f.node for f in _by_code(report, "negative-preactivation")] == ["3"]
    alarming = {f.node for f in report.findings_list if f.severity != "info"}
    assert alarming == {"3", "4"}


def test_dead_fraction_data_separates_dead_from_healthy(killed):
    res = ta.run(killed, names=["dead"]).results["dead"]
    frac = {k: np.nanmean(v) for k, v in res.data["dead_fraction"].items()}
    assert frac["4"] == pytest.approx(1.0)
    assert frac["2"] < 0.9 and frac["6"] < 0.9


def test_threshold_parameter_is_honoured(killed):
    report = ta.run(killed, names=["dead"], params={"dead": {"threshold": 1.01, "error_threshold": 1.01}})
    assert not _by_code(report, "dead-layer")


def test_dead_units_counted_per_channel(tmp_path):
    report = ta.run(_half_killed(tmp_path / "half.trace"), names=["dead"])
    units = [f for f in _by_code(report, "dead-units") if f.node == "4"]
    assert len(units) == 1
    dead_units = set(report.results["dead"].data["dead_units"]["4"])
    assert set(range(16)) <= dead_units  # every unit given the -100 bias
    assert len(dead_units - set(range(16))) < 8  # most of the others live
    assert units[0].value == pytest.approx(len(dead_units) / 32)
    assert units[0].severity == "warning"
    assert not _by_code(report, "dead-layer")


def test_fastai_binning_bottom_bin_definition(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[3].bias.fill_(-100.0)
    path = train(tmp_path / "fastai.trace", model, steps=12, histogram=FASTAI_BINNING, channels=False, weight_updates=False)
    # fast.ai's definition: the bottom bin of histc(|x|, 40, 0, 10), i.e. |x| < 0.25.
    report = ta.run(path, names=["dead"], params={"dead.near_zero": 0.25})
    dead = _by_code(report, "dead-layer")
    assert "4" in {f.node for f in dead} and not {"1", "2", "3"} & {f.node for f in dead}
    # Layers after it output (almost) only their bias: dead too in fast.ai's sense, and
    # marked as consequences of the first dead layer.
    assert all("downstream of the dead layer '4'" in f.message for f in dead if f.node != "4")


def test_constant_output_of_a_frozen_layer_that_ignores_its_input(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[3].weight.zero_()
    model[3].weight.requires_grad_(False)
    model[3].bias.requires_grad_(False)
    report = ta.run(train(tmp_path / "const.trace", model, steps=16, optimizer="adam", lr=1e-2), names=["dead"])
    const = {f.node: f for f in _by_code(report, "constant-output")}
    assert const["3"].severity == "warning"
    assert "'1'" not in const and "1" not in const


class FunctionalNet(torch.nn.Module):
    """Linear layers with ``F.relu`` between them: the rectifiers are graph nodes without records."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 32)
        self.fc3 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu(self.fc1(self.flat(x)))
        x = torch.nn.functional.relu(self.fc2(x))
        return self.fc3(x)


@pytest.mark.parametrize("bias", [-100.0, None])
def test_functional_relu_dead_layer_named_by_its_linear(tmp_path, bias):
    torch.manual_seed(0)
    model = FunctionalNet()
    if bias is not None:
        with torch.no_grad():
            model.fc2.bias.fill_(bias)
    report = ta.run(train(tmp_path / "functional.trace", model, steps=20, optimizer="adam", lr=1e-2, channels=False), names=["dead"])
    alarming = [(f.code, f.node) for f in report.findings_list if f.severity != "info"]
    assert alarming == ([("dead-layer", "fc2")] if bias is not None else [])
