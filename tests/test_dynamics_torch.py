"""Dynamics analyzer on real training runs traced by the PyTorch adapter.

A small MLP learns sklearn's load_digits for several seeds; TorchTracer records the
weights once per epoch with matrix statistics (which also gives the 'all:weight' /
'all:bias' aggregates) and the eval accuracy. The analyzer must produce the four figures
and the state table, through the library, the pipeline and the command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import tracefmt  # noqa: E402
from tracefmt.adapters.torch import TorchTracer  # noqa: E402
from tracefmt.analyzers.dynamics import FEATURES, DynamicsAnalyzer, read_states  # noqa: E402

SEEDS = (0, 1, 2, 3)
EPOCHS = 16
BATCH = 100


def train_digits(path: Path, seed: int) -> float:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = split[:1200], split[1200:]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps_per_epoch = len(train) // BATCH
    with TorchTracer(model, path, optimizer=opt, activations=False, gradients=False, weight_grads=False,
                     weight_every=steps_per_epoch, matrix_stats=True, histogram=None, run_id=f"digits-seed{seed}") as tracer:  # fmt: skip
        for epoch in range(EPOCHS):
            tracer.epoch = epoch
            order = train[torch.randperm(len(train))]
            for b in range(steps_per_epoch):
                i = order[b * BATCH : (b + 1) * BATCH]
                torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
                opt.step()
                opt.zero_grad()
            with torch.no_grad(), tracer.phase("eval"):
                acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
                tracer.log_scalar("accuracy", acc)
    return acc


@pytest.fixture(scope="module")
def digit_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only contend with the other test workers
    try:
        accs = [train_digits(root / f"seed{s}", s) for s in SEEDS]
    finally:
        torch.set_num_threads(threads)
    return [root / f"seed{s}" for s in SEEDS], accs


def test_real_runs_give_states_and_four_figures(digit_runs, tmp_path):
    paths, accs = digit_runs
    assert min(accs) > 0.85  # the runs learned
    traces = [tracefmt.open(p) for p in paths]
    result = DynamicsAnalyzer().analyze_runs(traces, {"k_max": 5, "restarts": 2, "convergence_threshold": 0.8, "write_states": "trace"})
    data = result.data
    # The adapter's records supply every feature.
    assert data["features"] == list(FEATURES)
    assert not [f for f in result.findings if f.code in ("dynamics-feature-missing", "dynamics-no-data", "dynamics-fit-failed")]
    k = data["n_states"]
    assert 1 <= k <= 5 and data["bic"][k] == min(v for v in data["bic"].values() if v is not None)
    # Four runs: one held out to choose among restarts.
    assert len(data["heldout_runs"]) == 1
    # The state table: one row per weight checkpoint of every run, written into each trace.
    table = data["states"]
    for t in traces:
        steps = sorted(set(t.read("records", kinds="weight", slots="all:weight", columns=["step"]).column("step").to_pylist()))
        own = read_states(t.path)
        assert own.column("step").to_pylist() == steps
        assert set(own.column("run_id").to_pylist()) == {t.run_id}
        assert own.column("epoch").null_count <= 1  # the initial weights (step 0) precede every epoch
        states = np.asarray(own.column("state").to_pylist())
        assert states.min() >= 0 and states.max() < k
    assert table.num_rows == sum(read_states(t.path).num_rows for t in traces)
    # Accuracy >= 0.8 is reached by every run: the detour question is asked for every state.
    assert all(v is not None for v in data["convergence_step"].values())
    assert len(data["detours"]) == k
    assert all(np.isnan(d["p_value"]) or 0.0 <= d["p_value"] <= 1.0 for d in data["detours"])
    # The four figures, the graph rendered by the real dot.
    assert set(result.figures) == {"bic", "transitions", "metrics", "detours"}
    for name, factory in result.figures.items():
        fig = factory()
        out = tmp_path / f"{name}.png"
        fig.savefig(out)
        assert out.stat().st_size > 5000, name
    if k > 1:
        assert "->" in data["transition_dot"]


def test_cli_analyze_several_traces(digit_runs, tmp_path, capsys):
    from tracefmt.cli import main

    paths, _ = digit_runs
    out = tmp_path / "out"
    code = main(["analyze", *map(str, paths), "--only", "dynamics", "--no-progress", "--set", "dynamics.k_max=3",
                 "--set", "dynamics.restarts=1", "--set", "dynamics.write_states=none", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    figures = sorted(p.name for p in (out / "figures").glob("dynamics-*.png"))
    assert figures == ["dynamics-bic.png", "dynamics-detours.png", "dynamics-metrics.png", "dynamics-transitions.png"]
    assert "dynamics-model" in captured.out
    # Bad parameter values are one line and exit code 2, no traceback.
    code = main(["analyze", str(paths[0]), "--only", "dynamics", "--no-progress", "--set", "dynamics.covariance_type=banded"])
    err = capsys.readouterr().err
    assert code == 2 and "covariance_type" in err and "Traceback" not in err
