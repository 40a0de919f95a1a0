"""The fused Triton statistics kernel is tested on the CPU through Triton's interpreter.

Triton decides between compiling and interpreting when a kernel is defined, from
``TRITON_INTERPRET``; the checks (tests/_triton_interpreted.py) therefore run in a fresh
interpreter process with it set, and with ``TRACEFMT_TRITON=cpu`` so that the tracer
sends CPU tensors to the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is part of the dev extra on Linux")


@pytest.mark.slow
def test_fused_kernel_under_triton_interpreter():
    here = Path(__file__).resolve().parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRACEFMT_TRITON": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        str(here / "_triton_interpreted.py"),
    ]
    done = subprocess.run(cmd, env=env, cwd=here.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_without_one(tmp_path, monkeypatch):
    # The interpreter accepts programs the compiler refuses: compile for sm_90 (no GPU
    # needed, Triton ships ptxas) and check the float32 binning divides exactly.
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tracefmt.adapters.torch import triton_stats
    from tracefmt.adapters.torch.device_stats import StatKernel
    from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    row_stats, finish_rows = triton_stats._kernels()

    def compile_ptx(fn, signature, constants):
        signature = {**signature, **dict.fromkeys(constants, "constexpr")}
        src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]

    for binning, dtype, grouped in ((DEFAULT_BINNING, "*bf16", False), (FASTAI_BINNING, "*fp32", True)):
        plan = triton_stats.KernelPlan(binning, StatKernel(binning, native=False).counts)
        sig = {
            "x_ptr": dtype,
            "table_ptr": "*i64",
            "raw_ptr": "*fp64",
            "bounds_ptr": "*fp32",
            "lin_ptr": "*fp32",
            "n_arg": "i64",
            "slot_arg": "i32",
            "chunk": "i32",
        }
        ptx = compile_ptx(row_stats, sig, plan.constants(False, 1024, grouped))
        assert "atom.global" in ptx and not re.search(r"div\.(full|approx)", ptx)
        assert not re.search(r"setp\.[a-z]+\.ftz", ptx)  # denormals compare as themselves
    counts = StatKernel(DEFAULT_BINNING).counts
    plan = triton_stats.KernelPlan(DEFAULT_BINNING, counts)
    consts = {"COUNTS": counts, "NC": 1 << (counts - 1).bit_length(), "RAW_W": plan.raw_width, "W": counts + 5, "BR": 16}
    assert "sqrt.rn.f64" in compile_ptx(finish_rows, {"raw_ptr": "*fp64", "out_ptr": "*fp64", "n_rows": "i32"}, consts)


def test_a_failing_kernel_falls_back_to_torch_ops(tmp_path, monkeypatch):
    # Without TRITON_INTERPRET a Triton kernel cannot run on CPU tensors here: the tracer
    # must warn once, keep the step and write the same statistics through torch operations.
    import numpy as np
    import torch
    from torch import nn

    import tracefmt
    from tracefmt.adapters.torch import TorchTracer

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")

    def run(path):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with TorchTracer(model, path, optimizer=opt) as tracer:
            for _ in range(2):
                model(torch.randn(4, 6)).sum().backward()
                opt.step()
                opt.zero_grad()
        return tracer, tracefmt.open(path).records.to_table().sort_by([("step", "ascending"), ("seq", "ascending")])

    monkeypatch.setenv("TRACEFMT_TRITON", "cpu")
    with pytest.warns(RuntimeWarning, match="fused statistics kernel failed"):
        tracer, failed = run(tmp_path / "a.trace")
    assert tracer.rows is not None and tracer.rows.devices == ()
    monkeypatch.setenv("TRACEFMT_TRITON", "0")
    _, plain = run(tmp_path / "b.trace")
    assert failed.num_rows == plain.num_rows == 2 * (3 + 3 + 4 + 4)
    for name in ("kind", "node_id", "nan_count", "zero_count", "pos_count", "hist_counts"):
        assert failed.column(name).to_pylist() == plain.column(name).to_pylist(), name
    np.testing.assert_allclose(failed.column("std").to_numpy(), plain.column("std").to_numpy(), rtol=1e-12)
