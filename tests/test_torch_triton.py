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
