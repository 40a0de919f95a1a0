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
