"""The same pathology, made in PyTorch, JAX/Flax and Keras, is found by the same analyzers
at the same layer and step (see tests/_pathology_runs.py for the constructions)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: no TensorFlow here

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("keras")

from _pathology_runs import LR_STEP, NAN_STEP, RUNNERS  # noqa: E402

import tracefmt  # noqa: E402
from tracefmt.analyzers import run  # noqa: E402
from tracefmt.analyzers.nan_origin import find_nan_origin  # noqa: E402

pytestmark = pytest.mark.slow
FRAMEWORKS = ("torch", "jax", "keras")
PATHOLOGIES = ("dead", "nan", "lr")


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    root = tmp_path_factory.mktemp("pathologies")
    out = {}
    for fw in FRAMEWORKS:
        for pathology in PATHOLOGIES:
            path = RUNNERS[fw](root / f"{fw}-{pathology}.trace", pathology)
            assert tracefmt.validate(str(path)).valid, (fw, pathology)
            report = run(str(path), names=["dead", "gradients", "loss"])
            rows = report.findings.to_pylist()
            out[fw, pathology] = ([r for r in rows if r["severity"] != "info"], path)
    return out


def _found(rows, code):
    return sorted((r["node"], r["step_first"]) for r in rows if r["code"] == code)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_dead_rectifier_found_at_the_same_layer(findings, fw):
    rows, _ = findings[fw, "dead"]
    assert _found(rows, "dead-layer") == [("act2", 0)]
    assert _found(rows, "negative-preactivation") == [("fc2", 0)]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_nan_origin_at_the_same_layer_and_step(findings, fw):
    rows, path = findings[fw, "nan"]
    assert _found(rows, "divergence") == [(None, NAN_STEP)]
    origin = find_nan_origin(tracefmt.open(str(path)))
    names = tracefmt.open(str(path)).nodes.column("name").to_pylist()
    assert (names[origin.node_id], origin.step, origin.kind) == ("fc2", NAN_STEP, "activation")
    if fw != "keras":  # the gradients analyzer reports it; a Keras trace has no gradient records
        assert _found(rows, "nan-origin") == [("fc2", NAN_STEP)]
    # Nothing is called dead or exploding before the NaN.
    assert not [r for r in rows if r["code"] in ("dead-layer", "exploding-gradient")]


def test_exploding_learning_rate_found_at_the_same_step(findings):
    per_fw = {fw: findings[fw, "lr"][0] for fw in FRAMEWORKS}
    spikes = {fw: _found(rows, "loss-spike") for fw, rows in per_fw.items()}
    divergence = {fw: _found(rows, "divergence") for fw, rows in per_fw.items()}
    # The update of step LR_STEP blows the weights up: the loss of the next step spikes.
    assert all(s == [(None, LR_STEP + 1)] for s in spikes.values()), spikes
    assert len({tuple(d) for d in divergence.values()}) == 1 and divergence["torch"], divergence
    # The norm of all gradients together explodes at that step in both frameworks that record
    # gradients (the layer it is shown at is the one whose gradient grew most, which depends on
    # which gradients a framework records; the step does not).
    exploding = {fw: {step for _, step in _found(per_fw[fw], "exploding-gradient")} for fw in ("torch", "jax")}
    assert all(LR_STEP + 1 in steps for steps in exploding.values()), exploding
    # Healthy steps before the jump: no finding starts earlier.
    assert all(r["step_first"] is None or r["step_first"] > LR_STEP or r["code"] == "no-progress" for rows in per_fw.values() for r in rows)
