"""Silence on healthy real architectures: every zoo model trains (its loss falls) under a
TorchTracer with its defaults, ``tracefmt analyze`` exits 0 with no warning and no error,
the trace covers every parameter, and analysis writes nothing into the trace.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

pytest.importorskip("transformers")

from zoo import ZOO, train_zoo  # noqa: E402

import tracefmt  # noqa: E402
from tracefmt.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each zoo model trained once: name -> (trace path, losses, model)."""
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for name, zoo in ZOO.items():
        model = zoo.build()
        path, losses = train_zoo(zoo, root / f"{name}.trace", model=model)
        out[name] = (path, losses, model)
    return out


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_zoo_has_the_families_asked_for():
    families = {z.family for z in ZOO.values()}
    assert len([z for z in ZOO.values() if z.family != "recurrent"]) >= 15
    assert {"cnn", "vision-transformer", "encoder", "decoder", "encoder-decoder", "audio", "recurrent"} <= families


@pytest.mark.parametrize("name", list(ZOO))
def test_healthy_zoo_model_trains_and_analyze_is_silent(runs, name, capsys):
    path, losses, _ = runs[name]
    head, tail = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert tail < 0.95 * head, f"{name}: loss did not fall ({head:.4f} -> {tail:.4f})"
    before = _snapshot(path)
    code = main(["analyze", str(path), "--format", "json", "--no-progress"])
    data = json.loads(capsys.readouterr().out)
    alarms = [(f["severity"], f["analyzer"], f["code"], f["node"], f["message"]) for f in data["findings"] if f["severity"] != "info"]
    assert alarms == [] and code == 0, alarms
    assert data["verdict"] == "No problems found."
    # Analysis never writes into a trace unless asked (--write).
    assert _snapshot(path) == before


@pytest.mark.parametrize("name", list(ZOO))
def test_default_trace_covers_every_parameter_and_container_output(runs, name):
    path, _, model = runs[name]
    trace = tracefmt.open(path)
    nodes = trace.nodes.to_pylist()
    by_id = {n["node_id"]: n["name"] for n in nodes}
    root = next(n["name"] for n in nodes if n["node_id"] == 0)
    weights = trace.scan("records", columns=["node_id", "slot"], kinds=["weight"])
    seen = set()
    for batch in weights:
        for nid, slot in zip(batch.column("node_id").to_pylist(), batch.column("slot").to_pylist()):
            name = by_id[nid]
            seen.add(slot if name == root else f"{name}.{slot}")
    params = dict(model.named_parameters(remove_duplicate=False))
    covered = {id(p) for n, p in params.items() if n in seen}
    assert covered == {id(p) for p in params.values()}, sorted(set(params) - seen)[:10]


def test_analyze_writes_into_the_trace_only_with_write(runs, tmp_path, capsys):
    path = tmp_path / "copy.trace"
    shutil.copytree(runs["resnet"][0], path)
    before = _snapshot(path)
    out = tmp_path / "out"
    assert main(["analyze", str(path), "--out", str(out), "--no-progress", "--only", "dynamics", "--set", "dynamics.restarts=1"]) == 0
    capsys.readouterr()
    assert _snapshot(path) == before
    assert (out / "dynamics-states.arrow").exists() and (out / "findings.json").exists()
    assert main(["analyze", str(path), "--write", "--no-progress", "--only", "dynamics", "--set", "dynamics.restarts=1"]) == 0
    assert (path / "dynamics" / "states.arrow").exists() and (path / "findings" / "dynamics.parquet").exists()
    assert os.path.isdir(path / "findings")
