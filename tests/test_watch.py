"""Watching a live trace: tracer.findings() stops a dying run; the watch command and iterator."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from _analyzer_runs import data, mlp

import tracefmt
from tracefmt.adapters.torch import TorchTracer
from tracefmt.analyzers.watch import Watcher, watch
from tracefmt.cli import main

JUMP = 15


def _train(path, *, steps: int, jump: int | None, stop_on_error: bool, tensorboard=None, pause: float = 0.0):
    """SGD on an MLP; from step ``jump`` the learning rate is 50 (the run diverges). Returns (last step, findings)."""
    (x, y), _ = data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = []
    step = -1
    with TorchTracer(model, path, optimizer=opt, tensorboard=tensorboard) as tracer:
        for step in range(steps):
            if step == jump:
                opt.param_groups[0]["lr"] = 50.0
            i = torch.randint(0, len(x), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            tracer.log_scalar("loss", loss)
            opt.step()
            if stop_on_error:
                new = tracer.findings()
                seen.extend(new)
                if any(n.finding.severity == "error" for n in new):
                    break
            time.sleep(pause)
    return step, seen


def test_findings_stop_a_run_whose_learning_rate_explodes(tmp_path):
    torch.manual_seed(0)
    step, seen = _train(tmp_path / "run.trace", steps=60, jump=JUMP, stop_on_error=True)
    errors = [n for n in seen if n.finding.severity == "error"]
    assert errors, [n.finding for n in seen]
    # The step that uses lr=50 is JUMP; its loss shows it at JUMP + 1: stopped within a few steps.
    assert JUMP <= step <= JUMP + 4
    assert all(n.seen_at_step <= step for n in seen)
    assert not [n for n in seen if n.finding.severity == "error" and n.seen_at_step < JUMP]


def test_healthy_run_gives_no_error_and_the_watch_iterator_ends_when_complete(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "healthy.trace"
    step, seen = _train(path, steps=12, jump=None, stop_on_error=True)
    assert step == 11 and not [n for n in seen if n.finding.severity == "error"]
    updates = list(watch(path, interval=0.05, timeout=30))
    assert updates[-1].complete and updates[-1].step == 11
    assert "layers" in updates[-1].status_line() and len(updates[-1].layers) >= 3


def test_watch_command_follows_a_live_run_prints_json_lines_and_exits_1_on_errors(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "live.trace"
    runner = threading.Thread(target=_train, args=(path,), kwargs={"steps": 24, "jump": 10, "stop_on_error": False, "pause": 0.05})
    runner.start()
    try:
        rc = main(["watch", str(path), "--format", "json", "--interval", "0.2", "--timeout", "120"])
    finally:
        runner.join()
    assert rc == 1
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert lines and all({"analyzer", "code", "severity", "seen_at_step"} <= set(d) for d in lines)
    assert any(d["severity"] == "error" for d in lines)
    assert tracefmt.open(path).complete
    # The plain format: a finding line with its step, and the status line.
    assert main(["watch", str(path), "--only", "loss"]) == 1
    out = capsys.readouterr().out
    assert "[step 23] error" in out and "layers" in out
    assert main(["watch", str(path), "--interval", "0"]) == 2


def test_watcher_on_a_missing_trace_waits(tmp_path):
    w = Watcher(tmp_path / "not-yet.trace")
    u = w.poll()
    assert u.step == -1 and not u.new and not u.complete


def test_tensorboard_mirror_while_training(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    torch.manual_seed(0)
    _train(tmp_path / "m.trace", steps=4, jump=None, stop_on_error=False, tensorboard=tmp_path / "tb")
    acc = ea.EventAccumulator(str(tmp_path / "tb"), size_guidance={ea.HISTOGRAMS: 0, ea.TENSORS: 0})
    acc.Reload()
    assert len(acc.Tensors("loss")) == 4
    hist = [t for t in acc.Tags()["histograms"] if t.startswith("activation/")]
    assert hist and len(acc.Histograms(hist[0])) == 4
    back = tracefmt.open(tracefmt.adapters.tensorboard.import_tensorboard(tmp_path / "tb", tmp_path / "back.trace"))
    assert back.read().num_rows == tracefmt.open(tmp_path / "m.trace").read().num_rows


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
