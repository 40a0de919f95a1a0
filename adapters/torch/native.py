"""The CPU fast path: a small C kernel (csrc/tensor_stats.c) loaded through ctypes.

It is compiled on first use with the system C compiler into a per-user cache
(``$TRACEFMT_CACHE`` or ``~/.cache/tracefmt``), keyed by the source, the flags and the
CPU, and replaced atomically so that concurrent processes never load a partial file. If
no compiler is found, compilation fails, or ``TRACEFMT_NATIVE=0`` is set, the adapter
uses its pure-torch path instead (same results, more kernel launches).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from tracefmt.histogram import Binning

from .binning_tables import extended_layout, symlog_boundaries

__all__ = ["native_kernel", "SymlogTables", "symlog_tables"]

_SOURCE = Path(__file__).with_name("csrc") / "tensor_stats.c"
#: Bits of a float32 that name its bucket (must equal 32 - KEY_SHIFT in the C source).
KEY_BITS = 12
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fno-strict-aliasing", "-fopenmp-simd", "-pthread"]


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile() -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + _cpu_id().encode() + cc.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("TRACEFMT_CACHE") or Path.home() / ".cache" / "tracefmt")
    lib = cache / f"tensor_stats-{key}.so"
    if lib.is_file():
        return lib
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / lib.name
            subprocess.run([cc, *_FLAGS, "-o", str(out), str(_SOURCE), "-lm"], check=True, capture_output=True, timeout=120)
            os.replace(out, lib)
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


@lru_cache(maxsize=1)
def native_kernel() -> ctypes.CDLL | None:
    """The loaded C kernel, or None when it is disabled or cannot be built."""
    if os.environ.get("TRACEFMT_NATIVE", "1") == "0":
        return None
    path = _compile()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    fn = lib.tracefmt_stats_f32
    p = ctypes.c_void_p
    i32 = ctypes.c_int32
    fn.argtypes = [p, ctypes.c_int64, p, p, i32, i32, i32, p, i32, p, p]
    fn.restype = None
    return lib


class SymlogTables:
    """The two 4096-entry lookup tables of the C kernel for one symlog binning.

    ``first[k]``: the extended bin of the smallest value whose top 12 bits are ``k``;
    ``bound[k]``: the one boundary inside that bucket (values above it go to the next
    bin), +inf when there is none. ``ok`` is False when a bucket would hold two
    boundaries (a binning much finer than the default): the torch path is used then.
    """

    def __init__(self, binning: Binning) -> None:
        lay = extended_layout((binning.bins - 3) // 2)
        b = symlog_boundaries(binning, "float32")
        keys = np.arange(1 << KEY_BITS, dtype=np.uint32)
        lo_bits, hi_bits = keys << (32 - KEY_BITS), (keys << (32 - KEY_BITS)) | ((1 << (32 - KEY_BITS)) - 1)
        a, z = lo_bits.view(np.float32), hi_bits.view(np.float32)
        # A bucket's end may be NaN (after +/-inf): its only non-NaN member is its start.
        z = np.where(np.isnan(z), a, z)
        lo, hi = np.minimum(a, z), np.maximum(a, z)
        i_lo = np.searchsorted(b, lo, side="left")
        i_hi = np.searchsorted(b, hi, side="left")
        nan_keys = np.isnan(a)
        self.ok = bool(lay.width <= 256 and np.all((i_hi - i_lo)[~nan_keys] <= 1))
        self.first = np.where(nan_keys, lay.nan, i_lo).astype(np.int32)
        self.bound = np.full(1 << KEY_BITS, np.inf, dtype=np.float32)
        split = (i_hi > i_lo) & ~nan_keys
        self.bound[split] = b[i_lo[split]]
        self.nbins = lay.width
        self.nan_bin = lay.nan
        self.nonfinite = np.array([lay.neg_inf, lay.pos_inf, lay.nan], dtype=np.int32)


@lru_cache(maxsize=8)
def symlog_tables(binning: Binning) -> SymlogTables | None:
    """Lookup tables for ``binning``, or None if the C kernel cannot represent it."""
    t = SymlogTables(binning)
    return t if t.ok else None
