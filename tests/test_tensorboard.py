"""TensorBoard in and out: import with TensorBoard's reader, export read back by TensorBoard, round trips."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea

import tracefmt
import tracefmt.analyzers as ta
from tracefmt.adapters.tensorboard import export_tensorboard, import_tensorboard
from tracefmt.adapters.torch import TorchTracer
from tracefmt.cli import main
from tracefmt.histogram import histogram

DBL_MAX = sys.float_info.max
KEEP_ALL = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0}


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> tracefmt.Trace:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path_factory.mktemp("tb") / "run.trace"
    with TorchTracer(model, path, optimizer=opt, matrix_stats=True) as tracer:
        for _ in range(6):
            x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            tracer.log_scalar("loss", loss)
            opt.step()
        with tracer.phase("eval"), torch.no_grad():
            tracer.log_scalar("loss", torch.nn.functional.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 2, (16,))))
    return tracefmt.open(path)


def _sorted(table):
    return table.sort_by([(c, "ascending") for c in ("step", "phase", "node_id", "kind", "slot", "call")])


def test_export_is_read_by_tensorboard_and_the_round_trip_keeps_every_scalar_and_histogram(traced, tmp_path):
    logdir = export_tensorboard(traced, tmp_path / "tb")
    # What TensorBoard's server reads (plugin_event_accumulator): scalars and histograms plugins.
    acc = pea.EventAccumulator(str(logdir), size_guidance={pea.TENSORS: 0})
    acc.Reload()
    content = acc.PluginTagToContent("histograms")
    assert "activation/0:0" in content and "weight_grad/2:weight" in content
    assert {"loss", "loss@eval", "activation.std/0:0"} <= set(acc.PluginTagToContent("scalars"))
    assert len(acc.Tensors("activation/0:0")) == 6
    back = import_tensorboard(logdir, tmp_path / "back.trace")
    assert tracefmt.validate(back).valid
    b = tracefmt.open(back)
    assert b.nodes.drop_columns(["run_id"]).to_pylist() == traced.nodes.drop_columns(["run_id"]).to_pylist()  # a new run
    cols = ["step", "phase", "name", "value"]
    assert b.scalars.sort_by("step").select(cols).to_pylist() == traced.scalars.sort_by("step").select(cols).to_pylist()
    ra, rb = _sorted(traced.read()), _sorted(b.read())
    assert ra.num_rows == rb.num_rows > 0
    for c in ("step", "phase", "node_id", "kind", "slot", "call", "numel", "nan_count", "inf_count", "zero_count", "pos_count",
              "mean", "std", "min", "max", "abs_mean", "l2", "mat_spectral", "hist_counts"):  # fmt: skip
        assert ra.column(c).to_pylist() == rb.column(c).to_pylist(), c
    # symlog's unbounded outer bins come back as TensorBoard's -DBL_MAX / DBL_MAX; every other edge is exact.
    want = tracefmt.DEFAULT_BINNING.edges()
    for edges in rb.column("hist_edges").to_pylist():
        assert edges[0] == -DBL_MAX and edges[-1] == DBL_MAX and edges[1:-1] == want[1:-1].tolist()
    # An export of the import is the same log again: a second round trip changes nothing.
    again = import_tensorboard(export_tensorboard(b, tmp_path / "tb2"), tmp_path / "again.trace")
    rc = _sorted(tracefmt.open(again).read())
    for c in ("hist_counts", "hist_edges", "mean", "zero_count"):
        assert rc.column(c).to_pylist() == rb.column(c).to_pylist(), c


def test_import_of_a_torch_summarywriter_log_keeps_bucket_limits_and_the_analyzers_find_the_spike(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(1)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    logdir = tmp_path / "runs" / "exp1"
    w = SummaryWriter(str(logdir))
    x0 = torch.randn(4, 8)
    w.add_graph(model, x0)
    acts = {}
    model[1].register_forward_hook(lambda m, a, out: acts.__setitem__("relu", out.detach()))
    for step in range(40):
        x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.add_scalar("loss", loss.item() * (25.0 if step == 30 else 1.0), step)  # an injected spike
        w.add_histogram("relu", acts["relu"], step)
        w.add_histogram("0.weight", model[0].weight, step)
        w.add_histogram("0.weight.grad", model[0].weight.grad, step)
    w.close()

    out = tmp_path / "imported.trace"
    assert main(["import", "tensorboard", str(tmp_path / "runs"), "-o", str(out)]) == 0
    assert tracefmt.validate(out).valid
    t = tracefmt.open(out)
    assert t.manifest["producer"]["adapter"] == "tracefmt.adapters.tensorboard"
    # The graph from add_graph is the nodes table (aten ops); tags add their own nodes.
    ops = set(t.nodes.column("op_type").to_pylist())
    assert any("linear" in o for o in ops) and "relu" in t.node_names.values()
    # Bucket limits exactly as TensorBoard's own reader returns them.
    acc = ea.EventAccumulator(str(logdir), size_guidance=KEEP_ALL)
    acc.Reload()
    relu = t.read(nodes=["relu"]).sort_by("step")
    kinds = set(t.read(nodes=["0"]).column("kind").to_pylist())
    assert kinds == {"weight", "weight_grad"}
    for ev, edges, counts, numel in zip(acc.Histograms("relu"), relu.column("hist_edges").to_pylist(), relu.column("hist_counts").to_pylist(),
                                        relu.column("numel").to_pylist()):  # fmt: skip
        h = ev.histogram_value
        assert edges[1:] == [min(v, DBL_MAX) for v in h.bucket_limit]
        assert counts == [int(c) for c in h.bucket] and numel == int(h.num) == 64 * 16
    report = ta.run(t, names=["loss", "dead", "activations", "gradients"])
    spikes = [f for f in report.findings_list if f.code == "loss-spike"]
    assert len(spikes) == 1 and spikes[0].step_first == 30


def test_edges_binning_counts_and_validation(tmp_path):
    b = tracefmt.Binning.from_edges([-1.0, 0.0, 0.5, 2.0])
    x = np.array([-2, -1, -0.5, 0, 0.25, 0.5, 2.0, 3.0, np.nan])
    assert histogram(x, b).tolist() == [2, 2, 2]  # [-1, 0), [0, 0.5), [0.5, 2]; -2, 3 and NaN outside
    with pytest.raises(tracefmt.UsageError):
        tracefmt.Binning.from_edges([0.0, 0.0, 1.0])
    from tracefmt.stats import tensor_stats

    row = {"step": 0, "phase": "train", "node_id": 0, "kind": "activation", "slot": "", "call": 0, **tensor_stats(x, binning=b)}
    nodes = [{"node_id": 0, "name": "a", "scope": "a", "op_type": "X", "container": False, "inputs": [], "outputs": [], "param_count": 0}]
    for name, change, ok in (("good", {}, True), ("short", {"hist_edges": [-1.0, 0.0, 2.0]}, False),
                             ("unsorted", {"hist_edges": [-1.0, 0.5, 0.0, 2.0]}, False), ("lo", {"hist_lo": -3.0}, False)):  # fmt: skip
        with tracefmt.TraceWriter(tmp_path / f"{name}.trace") as w:
            w.write_nodes(nodes)
            w.write_records([{**row, **change}])
        report = tracefmt.validate(tmp_path / f"{name}.trace")
        assert report.valid is ok, (name, report.problems)
        if not ok:
            assert any(p.column in ("hist_edges", "hist_lo") for p in report.problems)


def test_cli_exit_codes(tmp_path, traced, capsys):
    assert main(["import", "tensorboard", str(tmp_path / "missing"), "-o", str(tmp_path / "x.trace")]) == 2
    assert "no such TensorBoard log directory" in capsys.readouterr().err
    assert main(["export", "tensorboard", str(traced.path), str(tmp_path / "tb"), "--metrics", "std,nope"]) == 2
    assert main(["export", "tensorboard", str(traced.path), str(tmp_path / "tb"), "--no-histograms", "--format", "json"]) == 0
    assert '"event files": 1' in capsys.readouterr().out
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "b").mkdir()
    export_tensorboard(traced, tmp_path / "runs" / "a")
    export_tensorboard(traced, tmp_path / "runs" / "b")
    assert main(["import", "tensorboard", str(tmp_path / "runs"), "-o", str(tmp_path / "y.trace")]) == 2
    assert "a, b" in capsys.readouterr().err
    assert main(["import", "tensorboard", str(tmp_path / "runs"), "--run", "b", "-o", str(tmp_path / "y.trace")]) == 0
    assert pc.sum(tracefmt.open(tmp_path / "y.trace").scalars.column("value")).as_py() == pytest.approx(pc.sum(traced.scalars.column("value")).as_py())


def test_import_of_a_damaged_event_file_says_what_was_not_read(tmp_path, capsys):
    """TensorBoard's reader stops at a damaged record and only logs it: the import warns, exits 1 and records it."""
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "tb"
    w = SummaryWriter(str(logdir))
    for step in range(40):
        w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_histogram("layer1/weight", np.linspace(-1, 1, 100) * (step + 1), step)
    w.close()
    assert main(["import", "tensorboard", str(logdir), "-o", str(tmp_path / "whole")]) == 0
    assert "warning" not in capsys.readouterr().err
    whole = tracefmt.open(tmp_path / "whole").scalars.num_rows
    events = next(logdir.glob("events.out.tfevents.*"))
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit in the middle of the file: a record fails its CRC
    events.write_bytes(bytes(data))
    assert main(["import", "tensorboard", str(logdir), "-o", str(tmp_path / "damaged")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and events.name in err[0] and "crc32" in err[0] and "not imported" in err[0]
    damaged = tracefmt.open(tmp_path / "damaged")
    assert 0 < damaged.scalars.num_rows < whole
    assert damaged.manifest["metadata"]["tensorboard_damaged"] == [err[0].split("warning: ")[1].split(": TensorBoard")[0]]
    # Cut before any scalar or histogram: nothing to import is an error, not an empty trace.
    events.write_bytes(bytes(data[:60]))
    assert main(["import", "tensorboard", str(logdir), "-o", str(tmp_path / "empty")]) == 2
    assert "no scalar or histogram events could be read" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
