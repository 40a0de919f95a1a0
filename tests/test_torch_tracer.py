"""TorchTracer on real models: what it records, and that it never changes training."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from models import digits, gru_classifier, residual_cnn, tiny_gpt2
from torch import nn

import tracefmt
from tracefmt.adapters.torch import TorchTracer, trace_forward
from tracefmt.stats import tensor_stats


@pytest.fixture(autouse=True)
def _one_thread():
    # The suite shares two cores with other test processes: one intra-op thread is faster.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(model, x, y, steps, *, tracer_path=None, **opts):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []

    def loop(tracer=None):
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if tracer is not None:
                tracer.log_scalar("loss", loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach().clone())

    if tracer_path is None:
        loop()
    else:
        with TorchTracer(model, tracer_path, optimizer=opt, **opts) as tracer:
            loop(tracer)
    return losses


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_tracing_changes_nothing_bitwise(tmp_path):
    x, y = digits(64)
    plain, traced = residual_cnn(), residual_cnn()
    a = _train(plain, x, y, 4)
    b = _train(traced, x, y, 4, tracer_path=tmp_path / "t", matrix_stats=True, channels=True, weight_updates=True, inputs=True, raw="fc")
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    for p, q in zip(plain.state_dict().values(), traced.state_dict().values()):
        assert torch.equal(p, q)
    assert _hook_count(traced) == 0
    assert tracefmt.validate(tmp_path / "t").errors == []


def test_cnn_records_equal_reference_on_raw_values(tmp_path):
    x, y = digits(32)
    model = residual_cnn()
    _train(model, x, y, 2, tracer_path=tmp_path / "t", raw="*")
    trace = tracefmt.open(tmp_path / "t")
    records = trace.records.to_table()
    by_key = {}
    for r in records.to_pylist():
        by_key[(r["step"], r["node_id"], r["kind"], r["slot"], r["call"])] = r
    checked = 0
    for meta, values in trace.tensors():
        rec = by_key[(meta["step"], meta["node_id"], meta["kind"], meta["slot"], meta["call"])]
        ref = tensor_stats(np.asarray(values))
        for c in ("numel", "nan_count", "inf_count", "zero_count", "pos_count", "hist_counts"):
            assert rec[c] == ref[c], c
        for c in ("mean", "std", "min", "max", "abs_mean", "l2"):
            assert rec[c] == pytest.approx(ref[c], rel=1e-5, abs=1e-6 * ref["abs_mean"]), c
        checked += 1
    assert checked >= 40  # activations and gradients of every leaf, two steps
    # The shared ReLU of each block is recorded twice per step (call 0 and call 1).
    relu = trace.nodes.filter(pc.equal(trace.nodes["name"], "layer1.relu"))["node_id"][0].as_py()
    calls = records.filter(pc.and_(pc.equal(records["node_id"], relu), pc.equal(records["kind"], "activation")))
    assert sorted(set(calls["call"].to_pylist())) == [0, 1]


def test_kinds_steps_scalars_and_schedule(tmp_path):
    x, y = digits(32)
    model = residual_cnn()
    _train(model, x, y, 6, tracer_path=tmp_path / "t", schedule=lambda s: s < 2 or s % 3 == 0, weight_every=2, weight_updates=True, matrix_stats=True)
    trace = tracefmt.open(tmp_path / "t")
    r = trace.records.to_table()
    steps = lambda kind: sorted(set(r.filter(pc.equal(r["kind"], kind))["step"].to_pylist()))  # noqa: E731
    assert steps("activation") == [0, 1, 3] and steps("gradient") == [0, 1, 3]
    assert steps("weight") == [0, 2, 4] and steps("weight_grad") == [0, 2, 4] and steps("weight_update") == [0, 2, 4]
    agg = r.filter(pc.equal(r["node_id"], 0)).to_pandas()
    assert sorted(set(agg.slot)) == ["all:bias", "all:weight"]
    n_bias = sum(p.numel() for n, p in model.named_parameters() if "bias" in n)
    assert set(agg[agg.slot == "all:bias"].numel) == {n_bias} and agg["median"].notna().all()
    fc = r.filter(pc.and_(pc.equal(r["kind"], "weight"), pc.equal(r["slot"], "weight")))
    assert fc.filter(pc.is_valid(fc["mat_spectral"])).num_rows > 0
    s = trace.scalars
    assert s["step"].to_pylist() == list(range(6)) and s["name"].to_pylist() == ["loss"] * 6
    # seq follows execution: within a step, activations come before gradients.
    step0 = r.filter(pc.equal(r["step"], 0)).to_pandas()
    assert step0[step0.kind == "activation"].seq.max() < step0[step0.kind == "gradient"].seq.min()


def test_gpt2_dict_outputs_eval_phase_and_predictions(tmp_path):
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (4, 16), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with TorchTracer(model, tmp_path / "t", optimizer=opt, channels="transformer.h.*.mlp.act") as tracer:
        for _ in range(2):
            out = model(tokens, labels=tokens)
            tracer.log_scalar("loss", out.loss)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
        with tracer.phase("eval"), torch.no_grad():
            logits = model(tokens).logits
            tracer.log_predictions(tokens[:, 1:], logits[:, :-1])
        assert tracer.current_phase == "train" and tracer.step_count == 2
    trace = tracefmt.open(tmp_path / "t")
    assert tracefmt.validate(trace.path).errors == []
    r = trace.records.to_table()
    ev = r.filter(pc.equal(r["phase"], "eval"))
    assert set(ev["kind"].to_pylist()) == {"activation"} and set(ev["step"].to_pylist()) == {2}
    act = r.filter(pc.and_(pc.equal(r["kind"], "activation"), pc.is_valid(r["channel_pos_frac"])))
    assert act.num_rows and all(len(v) == 4 * 32 for v in act["channel_pos_frac"].to_pylist())
    assert trace.predictions.num_rows == 4 * 15


def test_gru_tuple_outputs_and_frozen_parameters(tmp_path):
    model = gru_classifier()
    model.embed.weight.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 32, (8, 6), generator=g), torch.randint(0, 4, (8,), generator=g)
    _train(model, tokens, labels, 2, tracer_path=tmp_path / "t")
    trace = tracefmt.open(tmp_path / "t")
    r = trace.records.to_table()
    names = dict(zip(trace.nodes["node_id"].to_pylist(), trace.nodes["name"].to_pylist()))
    gru = [k for k, v in names.items() if v == "gru"][0]
    gru_act = r.filter(pc.and_(pc.equal(r["node_id"], gru), pc.equal(r["kind"], "activation")))
    assert sorted(set(gru_act["slot"].to_pylist())) == ["0", "1"]
    embed = [k for k, v in names.items() if v == "embed"][0]
    emb = r.filter(pc.equal(r["node_id"], embed))
    assert set(emb["kind"].to_pylist()) == {"activation", "weight"}  # frozen: no gradient, no weight_grad


def test_inplace_relu_and_no_grad_eval(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))
    x = torch.randn(20, 8)
    expected = model(x).detach()
    with TorchTracer(model, tmp_path / "t", phase="eval") as tracer, torch.no_grad():
        out = model(x)
        tracer.step()
    assert torch.equal(out, expected)
    r = tracefmt.open(tmp_path / "t").records.to_table().to_pandas()
    lin0 = r[(r.node_id == 1) & (r.kind == "activation")].iloc[0]
    # Linear output recorded before the in-place ReLU rewrote it: it has negative values.
    assert lin0["min"] < 0
    relu = r[(r.node_id == 2) & (r.kind == "activation")].iloc[0]
    assert relu["min"] == 0 and relu["zero_count"] > 0


def test_hooks_removed_on_exception_and_close(tmp_path):
    model = residual_cnn()
    x, _ = digits(4)
    with pytest.raises(RuntimeError, match="boom"):
        with TorchTracer(model, tmp_path / "a"):
            model(x)
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    tracer = TorchTracer(model, tmp_path / "b").start()
    assert _hook_count(model) > 0
    tracer.close()
    tracer.close()
    assert _hook_count(model) == 0
    # A forward that raises during graph discovery leaves no hook and no mode behind.
    bad = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))
    with pytest.raises(RuntimeError):
        with TorchTracer(bad, tmp_path / "c"):
            bad(torch.randn(2, 4))
    assert _hook_count(bad) == 0
    assert torch.add(torch.ones(1), 1).item() == 2.0
    assert tracefmt.open(tmp_path / "a").complete


def test_trace_forward_restores_training_mode(tmp_path):
    model = residual_cnn()
    model.train()
    x, _ = digits(8)
    out = trace_forward(model, x, tmp_path / "t", raw="fc")
    assert model.training and _hook_count(model) == 0
    model.eval()
    assert torch.equal(out, model(x))
    trace = tracefmt.open(tmp_path / "t")
    r = trace.records.to_table()
    assert set(r["phase"].to_pylist()) == {"eval"} and set(r["kind"].to_pylist()) == {"activation"}
    assert len(list(trace.tensors())) == 1


def test_compiled_model_is_refused(tmp_path):
    compiled = torch.compile(residual_cnn())
    with pytest.raises(tracefmt.UsageError, match="before compiling"):
        TorchTracer(compiled, tmp_path / "t")


def test_selection_and_bad_options(tmp_path):
    model = residual_cnn()
    x, _ = digits(4)
    with TorchTracer(model, tmp_path / "t", modules="layer*", module_types=(nn.Conv2d,), exclude="layer2.conv2", weights=False) as tracer:
        model(x).sum().backward()
        tracer.step()
    r = tracefmt.open(tmp_path / "t")
    ids = set(r.records.to_table()["node_id"].to_pylist())
    names = {r.nodes["name"][i].as_py() for i in ids}
    assert names == {"layer1.conv1", "layer1.conv2", "layer2.conv1"}
    with pytest.raises(tracefmt.UsageError, match="no module matches"):
        TorchTracer(model, tmp_path / "u", modules="nothing*").start()
    with pytest.raises(tracefmt.UsageError, match="needs optimizer"):
        TorchTracer(model, tmp_path / "v", weight_updates=True)
    with pytest.raises(tracefmt.UsageError, match="unknown phase"):
        TorchTracer(model, tmp_path / "w", phase="testing")
    assert _hook_count(model) == 0


def test_model_moved_while_traced(tmp_path):
    # Moving the model (here to float64, the CPU-only stand-in for .to(device)) needs no
    # re-attachment: hooks follow the modules, statistics run where the tensors are.
    model = residual_cnn(channels=4)
    x, y = digits(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TorchTracer(model, tmp_path / "t", optimizer=opt) as tracer:
        for dtype in (torch.float32, torch.float64):
            model.to(dtype)
            nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
            opt.step()
            opt.zero_grad()
        assert tracer.step_count == 2
    r = tracefmt.open(tmp_path / "t").records.to_table().to_pandas()
    assert set(r[r.step == 0].dtype) == {"float32"} and set(r[r.step == 1].dtype) == {"float64"}
    assert tracefmt.validate(tmp_path / "t").errors == []


def test_docs_example_runs():
    # The usage example of docs/torch.md is executed as written.
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "torch.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/torch.md", "exec"), {})
