"""Tracing a training step never synchronises the host with the device.

On the CPU a ``TorchDispatchMode`` watches every operator of a traced GPT-2 training step
(graph discovery included) and fails on any operator known to synchronise on an
accelerator (``bincount``, ``nonzero``, ``unique``, ``masked_select``, ``.item()``, a
boolean-mask index, ...) when it is dispatched from tracefmt's code; ``Tensor.tolist``,
``.cpu`` and ``.numpy`` (which read a tensor on the host without an operator) are watched
on the training thread too. The tracer runs its torch-operations path, the one CUDA
takes without Triton. With CUDA, the same step runs under
``torch.cuda.set_sync_debug_mode("error")``, through the fused kernel and through the
torch-operations path.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch
from models import tiny_gpt2
from torch.utils._python_dispatch import TorchDispatchMode

import tracefmt
from tracefmt.adapters.torch import TorchTracer
from tracefmt.adapters.torch.device_stats import StatKernel

aten = torch.ops.aten
#: Operators that wait for the device (they read a value or size an output on the host).
SYNCING = {
    aten.bincount.default, aten.nonzero.default, aten.masked_select.default, aten._local_scalar_dense.default,
    aten.is_nonzero.default, aten.equal.default, aten._unique.default, aten._unique2.default,
    aten.unique_dim.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor,
}  # fmt: skip
#: Source folders of tracefmt (the core and the adapters mapped into its namespace).
OURS = tuple(str(Path(m.__file__).resolve().parent) for m in (tracefmt, sys.modules["tracefmt.adapters"]))


TORCH = str(Path(torch.__file__).resolve().parent)


def _our_frame() -> str | None:
    """``file:line`` when the code that issued the current operator is tracefmt's, else None.

    The issuer is the innermost frame outside torch, not counting the graph recorder's
    ``__torch_function__``, which passes the model's own calls through.
    """
    f = sys._getframe(3)  # past this function, SyncWatch._note and the watching frame
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith(TORCH) and not (name.startswith(OURS) and f.f_code.co_name == "__torch_function__"):
            return f"{Path(name).name}:{f.f_lineno}" if name.startswith(OURS) else None
        f = f.f_back
    return None


class SyncWatch(TorchDispatchMode):
    """Collects syncing operators (and host reads) that tracefmt's code issues on this thread."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.thread = threading.get_ident()

    def _note(self, what: str) -> None:
        where = _our_frame()
        if where is not None and threading.get_ident() == self.thread:
            self.found.append(f"{what} from {where}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])
        )
        if func in SYNCING or boolean_index:
            self._note(str(func))
        return func(*args, **kwargs)


@pytest.fixture
def host_reads(monkeypatch):
    """Route Tensor.tolist/.cpu/.numpy through a watch installed later by the test."""
    watch: list[SyncWatch] = []
    for name in ("tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _name=name, _orig=original, **k):
            if watch:
                watch[0]._note(f"Tensor.{_name}")
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return watch


def test_traced_step_issues_no_syncing_op(tmp_path, host_reads):
    model = tiny_gpt2()
    watch = SyncWatch()
    # The detector sees a host read made from tracefmt's code (else it could never fail).
    with watch:
        host_reads.append(watch)
        tracefmt.stats.tensor_stats(torch.ones(3))
        host_reads.clear()
    assert watch.found and "Tensor.numpy" in watch.found[0], watch.found
    watch.found.clear()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with TorchTracer(model, tmp_path / "run.trace", optimizer=opt, weight_updates=True, channels=True) as tracer:
        assert tracer.rows is None or not tracer.rows.accepts(tokens.float())
        tracer.kernel = StatKernel(tracer.kernel.binning, native=False)  # the path CUDA takes without Triton
        for _ in range(2):  # the first step also discovers the graph
            with watch:
                host_reads.append(watch)
                loss = model(tokens, labels=tokens).loss
                tracer.log_scalar("loss", loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
                host_reads.clear()
    assert not watch.found, watch.found
    records = tracefmt.open(tmp_path / "run.trace").records.to_table()
    assert set(records.column("kind").to_pylist()) == {"activation", "gradient", "weight", "weight_grad", "weight_update"}
    assert set(records.column("step").to_pylist()) == {0, 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fused", [True, False], ids=["triton", "torch-ops"])
def test_cuda_step_under_sync_debug_error(tmp_path, fused):
    model = tiny_gpt2().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 64, (2, 16), device="cuda")
    with TorchTracer(model, tmp_path / "run.trace", optimizer=opt, weight_updates=True, channels=True) as tracer:
        if fused:
            assert tracer.rows is not None and tracer.rows.accepts(tokens.float())
        else:
            tracer.rows = None
        for step in range(3):
            # Step 0 compiles kernels and copies tables to the device once; later steps must not wait.
            torch.cuda.set_sync_debug_mode("error" if step else "default")
            try:
                loss = model(tokens, labels=tokens).loss
                tracer.log_scalar("loss", loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    records = tracefmt.open(tmp_path / "run.trace").records.to_table()
    assert set(records.column("step").to_pylist()) == {0, 1, 2}
