"""Pathologies built into real architectures of the zoo, each on two families: the analyzers
name the broken node and the step it broke, and the verdict puts that root cause first.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from zoo import ZOO, bert, train_zoo  # noqa: E402

import tracefmt.analyzers as ta  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 20


def _find(report, code, severity=None):
    return [f for f in report.findings_list if f.code == code and (severity is None or f.severity == severity)]


def _run(tmp_path, name, **options):
    path, losses = train_zoo(ZOO[name], tmp_path / f"{name}.trace", steps=options.pop("steps", STEPS), **options)
    return ta.run(path), losses


def _set_at(step, module, attr, value):
    """before_step: at ``step``, overwrite ``module.attr`` (a parameter) with ``value``."""

    def hook(model, s):
        if s == step:
            with torch.no_grad():
                getattr(model.get_submodule(module), attr).fill_(value)

    return hook


# -- a dead rectifier layer (its BatchNorm / bias shifted far below zero at step 3) -----------
DEAD = [
    ("regnet", None, "regnet.encoder.stages.0.layers.0.layer.0.normalization", "regnet.encoder.stages.0.layers.0.layer.0.activation"),
    ("bert", {"hidden_act": "relu"}, "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.intermediate.intermediate_act_fn"),
]


@pytest.mark.parametrize(("name", "config", "shifted", "rectifier"), DEAD, ids=[d[0] for d in DEAD])
def test_dead_rectifier_is_the_root_cause_from_its_step(tmp_path, name, config, shifted, rectifier):
    model = bert(**config) if config else None
    report, _ = _run(tmp_path, name, model=model, before_step=_set_at(3, shifted, "bias", -50.0))
    dead = {f.node: f for f in _find(report, "dead-layer")}
    assert rectifier in dead and dead[rectifier].step_first == 3, report.verdict
    assert report.verdict.startswith(f"Root cause: '{rectifier}' at step 3 (dead-layer)"), report.verdict


# -- NaN injected at a chosen module and step (a forward hook) --------------------------------
NAN = [("llama", "model.layers.0.mlp.down_proj", 4), ("vit", "vit.layers.1.mlp.fc1", 6)]


@pytest.mark.parametrize(("name", "module", "step"), NAN, ids=[n[0] for n in NAN])
def test_nan_origin_is_the_injected_module_and_step(tmp_path, name, module, step):
    model = ZOO[name].build()
    state = {"step": -1}

    def hook(mod, args, out):
        if state["step"] == step:
            out = out.clone()
            out.view(-1)[0] = float("nan")
            return out
        return None

    model.get_submodule(module).register_forward_hook(hook)
    report, _ = _run(tmp_path, name, model=model, steps=step + 4, before_step=lambda m, s: state.update(step=s))
    origin = _find(report, "nan-origin")
    assert [(f.node, f.step_first) for f in origin] == [(module, step)]
    assert report.verdict.startswith(f"Root cause: '{module}' at step {step} (nan-origin)"), report.verdict


# -- a learning rate that explodes: doubled every step from step 8 -----------------------------
@pytest.mark.parametrize("name", ["gpt2", "regnet"])
def test_exploding_learning_rate_is_named_before_the_divergence(tmp_path, name):
    base = ZOO[name].lr
    report, _ = _run(tmp_path, name, steps=24, lr=lambda s: base * 2.0 ** max(0, s - 8))
    effects = _find(report, "divergence") + _find(report, "exploding-gradient") + _find(report, "nan-origin")
    assert effects and min(f.step_first for f in effects) >= 9, report.verdict
    # 2^4 = 16 > 10: the rate passed ten times its start at step 12, before what followed.
    assert report.verdict.startswith("Root cause: the learning rate at step 12 (learning-rate-rise)"), report.verdict


# -- vanishing gradients: a deep sigmoid stack as the head of a real backbone ------------------
def _sigmoid_head(width, depth=10):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 4))


@pytest.mark.parametrize(("name", "width"), [("vit", 32), ("regnet", 32)])
def test_vanishing_gradient_under_a_deep_sigmoid_stack(tmp_path, name, width):
    model = ZOO[name].build()
    if name == "regnet":
        model.classifier = nn.Sequential(nn.Flatten(), _sigmoid_head(width))
    else:
        model.classifier = _sigmoid_head(width)
    report, _ = _run(tmp_path, name, model=model)
    vanishing = _find(report, "vanishing-gradient")
    assert len(vanishing) == 1, report.verdict
    # The fading run starts at the input side and ends inside the sigmoid stack.
    assert vanishing[0].node.startswith("classifier.") and "from the input side" in vanishing[0].message
    assert report.verdict.startswith(f"Root cause: '{vanishing[0].node}'"), report.verdict


# -- saturation: a bounded activation driven into its flat tails ------------------------------
def test_saturated_tanh_pooler_in_bert(tmp_path):
    model = bert()
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(40.0)
    report, _ = _run(tmp_path, "bert", model=model)
    assert "bert.pooler.activation" in {f.node for f in _find(report, "saturated", "warning")}, report.verdict


def test_saturated_tanh_head_on_a_cnn(tmp_path):
    model = ZOO["regnet"].build()
    big = nn.Linear(32, 32)
    with torch.no_grad():
        big.weight.mul_(60.0)
    model.classifier = nn.Sequential(nn.Flatten(), big, nn.Tanh(), nn.Linear(32, 4))
    report, _ = _run(tmp_path, "regnet", model=model)
    assert "classifier.2" in {f.node for f in _find(report, "saturated", "warning")}, report.verdict


# -- a layer whose weights never update -------------------------------------------------------
def test_zero_learning_rate_for_one_param_group(tmp_path):
    frozen = "model.layers.0.mlp"

    def optimizer(model, lr):
        mine = [p for n, p in model.named_parameters() if n.startswith(frozen + ".")]
        rest = [p for n, p in model.named_parameters() if not n.startswith(frozen + ".")]
        return torch.optim.Adam([{"params": rest, "lr": lr}, {"params": mine, "lr": 0.0}], lr=lr)

    report, _ = _run(tmp_path, "llama", optimizer=optimizer)
    stuck = {f.node for f in _find(report, "not-updated", "warning")}
    assert stuck == {f"{frozen}.gate_proj", f"{frozen}.up_proj", f"{frozen}.down_proj"}, report.verdict


# With the zero-learning-rate group above (a decoder), two families whose weights never update.
@pytest.mark.parametrize(("name", "layer"), [("regnet", "regnet.encoder.stages.1.layers.0.layer.1.convolution")])
def test_layer_frozen_by_mistake_in_the_middle(tmp_path, name, layer):
    model = ZOO[name].build()
    for p in model.get_submodule(layer).parameters():
        p.requires_grad_(False)
    report, _ = _run(tmp_path, name, model=model)
    assert {f.node for f in _find(report, "frozen-in-path", "warning")} == {layer}, report.verdict
