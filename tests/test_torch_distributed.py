"""TorchTracer under torch.distributed: two gloo processes on CPU, one shard per rank."""

from __future__ import annotations

import pyarrow.compute as pc
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from models import residual_cnn
from torch import nn

import tracefmt
from tracefmt.adapters.torch import TorchTracer


def _worker(rank: int, world_size: int, init_file: str, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = residual_cnn(channels=4)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)  # each rank its own shard
        x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        # Trace the wrapped module so that scopes are the model's own qualified names.
        with TorchTracer(model, path, optimizer=opt, modules=["stem.*", "fc"]) as tracer:
            for _ in range(2):
                loss = nn.functional.cross_entropy(ddp(x), y)
                tracer.log_scalar("loss", loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_write_one_shard_each(tmp_path):
    path = tmp_path / "ddp.trace"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(path)), nprocs=2, join=True)
    trace = tracefmt.open(path)
    assert trace.manifest["world_size"] == 2 and trace.complete
    assert sorted(p.name for p in (path / "records").iterdir()) == ["rank-0", "rank-1"]
    assert tracefmt.validate(path).errors == []
    r = trace.records.to_table()
    assert sorted(set(r["rank"].to_pylist())) == [0, 1]
    assert sorted(set(trace.scalars["rank"].to_pylist())) == [0, 1]
    # Each rank saw its own shard (different activations) but DDP keeps weights identical.
    fc = trace.nodes.filter(pc.equal(trace.nodes["name"], "fc"))["node_id"][0].as_py()
    rows = r.filter(pc.equal(r["node_id"], fc)).to_pandas().set_index(["step", "kind", "slot", "call", "rank"])["mean"]
    assert rows.loc[(0, "activation", "0", 0, 0)] != rows.loc[(0, "activation", "0", 0, 1)]
    assert rows.loc[(1, "weight", "weight", 0, 0)] == rows.loc[(1, "weight", "weight", 0, 1)]
    assert rows.loc[(0, "weight_grad", "weight", 0, 0)] == rows.loc[(0, "weight_grad", "weight", 0, 1)]
