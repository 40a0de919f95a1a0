"""The fused statistics kernel (Triton): one launch reads a tensor once and writes its row.

:func:`launch_one` and :func:`launch_group` accumulate into *raw* rows of a device
buffer (:mod:`tracefmt.adapters.torch.step_rows` owns it); :func:`launch_finish`
turns a step's raw rows into the rows of
:class:`~tracefmt.adapters.torch.device_stats.StatKernel` (same layout, same decoder)
and resets the raw rows for the next step. Nothing here synchronises with the host.

Each program reads a contiguous chunk of the tensor in its own dtype (float32, bfloat16,
float16, float64), loops over blocks of it, and keeps in registers:

- the histogram of the row's count columns: for symlog binnings the *extended* bins of
  :mod:`tracefmt.adapters.torch.binning_tables` (a binary search over the same rounded-up
  boundaries ``torch.bucketize`` uses, so the bins equal the reference exactly), for
  linear binnings ``[nan, inf, zero, pos]`` and the reference's ``floor((v - lo) * n /
  (hi - lo))`` evaluated in the same floating type;
- in float64, over the finite elements: ``sum(d)``, ``sum(d * d)`` and ``sum(|x|) / σ``
  where ``d = (x - s) / σ``, with ``s`` the tensor's first finite non-zero element among
  its first block and ``σ`` the power of two of ``s`` (exact). The shift keeps the
  variance from cancelling when the mean is large against the spread; the scale keeps
  float64 squares from overflowing (float32/16 inputs never can; float64 inputs only if
  their magnitudes span more than about 150 decades);
- min and max of the finite elements, the number of finite elements and of elements.

At the end it adds these to the tensor's raw row with atomics (float64: counts stay
exact below 2**53). Raw row layout: ``[counts (C)] + [sum_d, sum_d2, abs_sum, min, max,
finite, numel, s, 1/σ]``.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import numpy as np
import torch

from tracefmt.enums import HistScheme
from tracefmt.histogram import Binning

from .binning_tables import symlog_boundaries

__all__ = ["available", "RAW_EXTRA", "TRITON_DTYPES", "launch_one", "launch_group", "launch_finish", "raw_init"]

#: Columns after the counts of a raw row.
RAW_EXTRA = 9
#: The dtypes the fused kernel reads directly.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_SYMLOG, _LINEAR, _NONE = 0, 1, 2


@lru_cache(maxsize=1)
def _triton():
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - any import failure means "no Triton here"
        return None
    return triton, tl


def available() -> bool:
    """True when Triton can be imported (the CUDA builds of torch ship it)."""
    return _triton() is not None


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@lru_cache(maxsize=1)
def _kernels():
    """Define the kernels on first use (Triton is imported lazily)."""
    triton, tl = _triton()

    @triton.jit
    def row_stats(x_ptr, table_ptr, raw_ptr, bounds_ptr, lin_ptr, n_arg, slot_arg, chunk,
                  MODE: tl.constexpr, ABS: tl.constexpr, F64: tl.constexpr, COUNTS: tl.constexpr,
                  NB: tl.constexpr, NBOUND: tl.constexpr, STEPS: tl.constexpr, NBINS: tl.constexpr,
                  RAW_W: tl.constexpr, BLOCK: tl.constexpr, GROUPED: tl.constexpr,
                  FAST: tl.constexpr, LOG2_LO: tl.constexpr, PER_LOG2: tl.constexpr):  # fmt: skip
        pid = tl.program_id(0)
        if GROUPED:  # one task of a table of (address, numel, begin, end, slot)
            task = table_ptr + pid * 5
            base = tl.load(task).to(tl.pointer_type(x_ptr.dtype.element_ty))
            n = tl.load(task + 1)
            begin = tl.load(task + 2)
            end = tl.load(task + 3)
            slot = tl.load(task + 4)
        else:
            base = x_ptr
            n = n_arg
            slot = slot_arg
            begin = pid.to(tl.int64) * chunk
            end = tl.minimum(begin + chunk, n)
        row = raw_ptr + slot * RAW_W
        offs = tl.arange(0, BLOCK)
        # The shift s and scale 1/σ: the same for every program of this tensor.
        head = tl.load(base + offs, mask=offs < n, other=0).to(tl.float64)
        usable = (head == head) & (tl.abs(head) < float("inf")) & (head != 0)
        first = tl.min(tl.where(usable, offs, BLOCK), 0)
        s = tl.sum(tl.where(offs == first, head, 0.0), 0)
        expo = (s.to(tl.int64, bitcast=True) >> 52) & 0x7FF
        # 1/σ = 2**(1023 - expo), kept a normal float64 (a denormal s gets the largest, 2**1023).
        inv_bits = tl.where(expo == 0, 2046, tl.minimum(tl.maximum(2046 - expo, 1), 2046)).to(tl.int64) << 52
        inv = inv_bits.to(tl.float64, bitcast=True)
        ss = s * inv
        sum_d = tl.zeros([BLOCK], tl.float64)
        sum_d2 = tl.zeros([BLOCK], tl.float64)
        abs_sum = tl.zeros([BLOCK], tl.float64)
        lo_v = tl.full([BLOCK], float("inf"), tl.float64)
        hi_v = tl.full([BLOCK], float("-inf"), tl.float64)
        finite = tl.zeros([BLOCK], tl.int32)
        hist = tl.zeros([NB], tl.int32)
        n_nan = tl.zeros([BLOCK], tl.int32)
        n_inf = tl.zeros([BLOCK], tl.int32)
        n_zero = tl.zeros([BLOCK], tl.int32)
        n_pos = tl.zeros([BLOCK], tl.int32)
        for start in range(begin, end, BLOCK):
            o = start + offs
            m = o < end
            x = tl.load(base + o, mask=m, other=0)
            if F64:
                xc = x.to(tl.float64)
            else:
                xc = x.to(tl.float32)
            is_nan = xc != xc
            is_inf = tl.abs(xc) == float("inf")
            fin = m & ~is_nan & ~is_inf
            xd = tl.where(fin, xc.to(tl.float64), 0.0)
            d = tl.where(fin, xd * inv - ss, 0.0)
            sum_d += d
            sum_d2 += d * d
            abs_sum += tl.abs(xd) * inv
            lo_v = tl.minimum(lo_v, tl.where(fin, xd, float("inf")))
            hi_v = tl.maximum(hi_v, tl.where(fin, xd, float("-inf")))
            finite += fin.to(tl.int32)
            if MODE == 0:
                # pos = the number of boundaries below x (torch.bucketize, right=False).
                if FAST:
                    # Estimate it from log2|x| (no memory access), then correct it by one
                    # with two reads of the boundary table: exact, since the estimate is
                    # never off by more than one bin.
                    M: tl.constexpr = (NBOUND - 7) // 2
                    ax = tl.abs(xc).to(tl.float32)
                    t = (tl.log2(tl.where(ax > 0, ax, 1.0)) - LOG2_LO) * PER_LOG2
                    t = tl.minimum(tl.maximum(t, -1.0), M + 0.5)
                    k = tl.where(ax > 0, tl.floor(t).to(tl.int32) + 1, 0)  # magnitude edges <= |x|
                    pos = tl.where(xc > 0, M + 4 + k, tl.where(xc < 0, M + 2 - k, M + 3))
                    pos = tl.where(is_inf, tl.where(xc > 0, NBOUND - 1, 0), pos)
                    below = tl.load(bounds_ptr + tl.maximum(pos - 1, 0))
                    pos = tl.where((pos > 0) & (below >= xc), pos - 1, pos)
                    above = tl.load(bounds_ptr + tl.minimum(pos, NBOUND - 1))
                    pos = tl.where((pos < NBOUND) & (above < xc), pos + 1, pos)
                else:  # binary search
                    pos = tl.zeros([BLOCK], tl.int32)
                    for i in tl.static_range(STEPS):
                        cand = pos + (1 << (STEPS - 1 - i))
                        ok = cand <= NBOUND
                        b = tl.load(bounds_ptr + tl.where(ok, cand - 1, 0))
                        pos = tl.where(ok & (b < xc), cand, pos)
                idx = tl.where(is_nan, NBOUND, pos)
                hist += tl.histogram(tl.where(m, idx, NB - 1), NB)
            else:
                n_nan += (m & is_nan).to(tl.int32)
                n_inf += (m & is_inf).to(tl.int32)
                n_zero += (m & (xc == 0)).to(tl.int32)
                n_pos += (m & (xc > 0)).to(tl.int32)
                if MODE == 1:
                    lo = tl.load(lin_ptr)
                    hi = tl.load(lin_ptr + 1)
                    nf = tl.load(lin_ptr + 2)
                    width = tl.load(lin_ptr + 3)
                    if ABS:
                        v = tl.abs(xc)
                    else:
                        v = xc
                    inside = fin & (v >= lo) & (v <= hi)
                    if F64:
                        q = (v - lo) * nf / width
                    else:  # `/` on float32 is approximate (div.full); the reference rounds exactly
                        q = tl.math.div_rn((v - lo) * nf, width)
                    k = tl.floor(tl.where(inside, q, 0)).to(tl.int32)
                    k = tl.minimum(k, NBINS - 1) + 4
                    hist += tl.histogram(tl.where(inside, k, NB - 1), NB)
        cols = tl.arange(0, NB)
        if MODE != 0:
            hist += tl.where(cols == 0, tl.sum(n_nan, 0), 0)
            hist += tl.where(cols == 1, tl.sum(n_inf, 0), 0)
            hist += tl.where(cols == 2, tl.sum(n_zero, 0), 0)
            hist += tl.where(cols == 3, tl.sum(n_pos, 0), 0)
        tl.atomic_add(row + cols, hist.to(tl.float64), mask=(cols < COUNTS) & (hist != 0))
        tail = row + COUNTS
        tl.atomic_add(tail, tl.sum(sum_d, 0))
        tl.atomic_add(tail + 1, tl.sum(sum_d2, 0))
        tl.atomic_add(tail + 2, tl.sum(abs_sum, 0))
        tl.atomic_min(tail + 3, tl.min(lo_v, 0))
        tl.atomic_max(tail + 4, tl.max(hi_v, 0))
        tl.atomic_add(tail + 5, tl.sum(finite, 0).to(tl.float64))
        tl.atomic_add(tail + 6, (end - begin).to(tl.float64))
        tl.store(tail + 7, s)
        tl.store(tail + 8, inv)

    @triton.jit
    def finish_rows(
        raw_ptr, out_ptr, n_rows, COUNTS: tl.constexpr, NC: tl.constexpr, RAW_W: tl.constexpr, W: tl.constexpr, BR: tl.constexpr
    ):
        r = tl.program_id(0) * BR + tl.arange(0, BR)
        rm = r < n_rows
        c = tl.arange(0, NC)
        m2 = rm[:, None] & (c[None, :] < COUNTS)
        cnt = tl.load(raw_ptr + r[:, None] * RAW_W + c[None, :], mask=m2, other=0)
        tl.store(out_ptr + r[:, None] * W + c[None, :], cnt, mask=m2)
        tl.store(raw_ptr + r[:, None] * RAW_W + c[None, :], tl.zeros([BR, NC], tl.float64), mask=m2)
        t = raw_ptr + r * RAW_W + COUNTS
        sum_d = tl.load(t, mask=rm, other=0)
        sum_d2 = tl.load(t + 1, mask=rm, other=0)
        abs_sum = tl.load(t + 2, mask=rm, other=0)
        lo = tl.load(t + 3, mask=rm, other=0)
        hi = tl.load(t + 4, mask=rm, other=0)
        nf = tl.load(t + 5, mask=rm, other=0)
        nt = tl.load(t + 6, mask=rm, other=0)
        s = tl.load(t + 7, mask=rm, other=0)
        inv = tl.load(t + 8, mask=rm, other=1)
        inv = tl.where(inv == 0, 1.0, inv)
        nf1 = tl.maximum(nf, 1.0)
        nt1 = tl.maximum(nt, 1.0)
        mean_d = sum_d / nf1
        m2_f = tl.maximum(sum_d2 - sum_d * mean_d, 0.0)  # scaled sum of squared deviations
        mean_s = s * inv + mean_d  # scaled mean of the finite elements
        # The non-finite elements as zeros (StatKernel's row): combine with k = nt - nf zeros.
        mean_c = mean_s * (nf / nt1) / inv
        std_c = tl.sqrt((m2_f + nf * (nt - nf) / nt1 * mean_s * mean_s) / nt1) / inv
        o = out_ptr + r * W + COUNTS
        tl.store(o, tl.where(nf > 0, mean_c, 0.0), mask=rm)
        tl.store(o + 1, tl.where(nf > 0, std_c, 0.0), mask=rm)
        tl.store(o + 2, abs_sum / inv, mask=rm)
        tl.store(o + 3, lo, mask=rm)
        tl.store(o + 4, hi, mask=rm)
        zero = tl.zeros([BR], tl.float64)
        for j in tl.static_range(RAW_W - COUNTS):
            if j == 3:
                tl.store(t + j, zero + float("inf"), mask=rm)
            elif j == 4:
                tl.store(t + j, zero - float("inf"), mask=rm)
            else:
                tl.store(t + j, zero, mask=rm)

    return row_stats, finish_rows


class KernelPlan:
    """Constant arguments of the fused kernel for one binning, per (device, dtype)."""

    def __init__(self, binning: Binning | None, counts: int) -> None:
        self.binning = binning
        self.counts = counts
        if binning is None:
            self.mode = _NONE
        elif binning.scheme is HistScheme.SYMLOG:
            self.mode = _SYMLOG
        else:
            self.mode = _LINEAR
        self.abs = binning is not None and binning.scheme is HistScheme.ABS_LINEAR
        self.nbins = binning.bins if binning is not None else 1
        self.nb = _pow2(counts + 1)  # one spare bin takes masked-out elements
        self.raw_width = counts + RAW_EXTRA
        self.nbound = counts - 1 if self.mode == _SYMLOG else 1
        self.steps = max(int(self.nbound).bit_length(), 1)
        # The log2 estimate of a symlog bin is within one bin when float32 resolves the
        # range (normal lo, finite hi) and bins are wider than float32 rounding of log2.
        self.fast, self.log2_lo, self.per_log2 = 0, 0.0, 0.0
        if self.mode == _SYMLOG:
            per_sign = (binning.bins - 3) // 2
            span = float(np.log2(binning.hi) - np.log2(binning.lo))
            if binning.lo >= float(np.finfo(np.float32).tiny) and binning.hi <= 1e38 and span / per_sign >= 1e-3:
                self.fast, self.log2_lo, self.per_log2 = 1, float(np.log2(binning.lo)), per_sign / span
        self._tables: dict[tuple[torch.device, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device, f64: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Device copies of the symlog boundaries and the linear parameters (cached)."""
        key = (device, f64)
        got = self._tables.get(key)
        if got is None:
            np_t = np.float64 if f64 else np.float32
            b = self.binning
            if self.mode == _SYMLOG:
                bounds = symlog_boundaries(b, "float64" if f64 else "float32").copy()
            else:
                bounds = np.zeros(1, dtype=np_t)
            if self.mode == _LINEAR:
                lo, hi = np_t(b.lo), np_t(b.hi)
                lin = np.array([lo, hi, np_t(b.bins), hi - lo], dtype=np_t)  # the reference's types
            else:
                lin = np.zeros(4, dtype=np_t)
            got = (torch.from_numpy(bounds).to(device), torch.from_numpy(lin).to(device))
            self._tables[key] = got
        return got

    def constants(self, f64: bool, block: int, grouped: bool) -> dict[str, int]:
        """The kernel's compile-time constants."""
        return {
            "MODE": self.mode, "ABS": int(self.abs), "F64": int(f64), "COUNTS": self.counts, "NB": self.nb,
            "NBOUND": self.nbound, "STEPS": self.steps, "NBINS": self.nbins, "RAW_W": self.raw_width,
            "BLOCK": block, "GROUPED": int(grouped), "FAST": self.fast, "LOG2_LO": self.log2_lo, "PER_LOG2": self.per_log2,
        }  # fmt: skip


def raw_init(rows: int, plan: KernelPlan, device: torch.device) -> torch.Tensor:
    """A zeroed raw buffer of ``rows`` rows (min column +inf, max column -inf)."""
    raw = torch.zeros(rows, plan.raw_width, dtype=torch.float64, device=device)
    raw[:, plan.counts + 3] = float("inf")
    raw[:, plan.counts + 4] = float("-inf")
    return raw


def _launch_shape(device: torch.device) -> tuple[int, int, int]:
    """``(block, max programs per tensor, warps)`` for a device."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return 1024, 4 * sms, 4
    # The interpreter (tests on the CPU): small blocks so that every path runs.
    return int(os.environ.get("TRACEFMT_TRITON_BLOCK", "128")), 3, 1


@lru_cache(maxsize=8)
def _shape_cached(device: torch.device) -> tuple[int, int, int]:
    return _launch_shape(device)


def _on(device: torch.device):
    """Make ``device`` current for a launch (Triton launches on the current CUDA device)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _chunks(n: int, block: int, most: int) -> tuple[int, int]:
    """``(programs, chunk)``: at most ``most`` programs, each a whole number of blocks."""
    blocks = -(-n // block)
    programs = min(blocks, most)
    chunk = -(-blocks // programs) * block
    return -(-n // chunk), chunk


def launch_one(plan: KernelPlan, x: torch.Tensor, raw: torch.Tensor, slot: int) -> None:
    """Accumulate the statistics of ``x`` (dense, non-empty) into ``raw[slot]``."""
    row_stats, _ = _kernels()
    block, most, warps = _shape_cached(x.device)
    f64 = x.dtype == torch.float64
    bounds, lin = plan.tables(x.device, f64)
    n = x.numel()
    programs, chunk = _chunks(n, block, most)
    with _on(x.device):
        row_stats[(programs,)](x, raw, raw, bounds, lin, n, slot, chunk, num_warps=warps, **plan.constants(f64, block, False))


def launch_group(plan: KernelPlan, xs: list[torch.Tensor], raw: torch.Tensor, slots: list[int]) -> None:
    """Accumulate the statistics of several dense, non-empty tensors of one dtype in one launch."""
    row_stats, _ = _kernels()
    device = xs[0].device
    block, most, warps = _shape_cached(device)
    rows = []
    for x, slot in zip(xs, slots):
        n = x.numel()
        programs, chunk = _chunks(n, block, most)
        begins = np.arange(programs, dtype=np.int64) * chunk
        task = np.empty((programs, 5), dtype=np.int64)
        task[:, 0], task[:, 1], task[:, 2], task[:, 4] = x.data_ptr(), n, begins, slot
        task[:, 3] = np.minimum(begins + chunk, n)
        rows.append(task)
    table = torch.from_numpy(np.concatenate(rows))
    if device.type != "cpu":
        table = table.pin_memory().to(device, non_blocking=True)
    f64 = xs[0].dtype == torch.float64
    bounds, lin = plan.tables(device, f64)
    with _on(device):
        row_stats[(table.shape[0],)](xs[0], table, raw, bounds, lin, 0, 0, 0, num_warps=warps, **plan.constants(f64, block, True))


def launch_finish(plan: KernelPlan, raw: torch.Tensor, out: torch.Tensor, n_rows: int) -> None:
    """Turn ``raw[:n_rows]`` into StatKernel rows in ``out[:n_rows]`` and reset the raw rows."""
    _, finish_rows = _kernels()
    br = 16
    with _on(raw.device):
        finish_rows[(-(-n_rows // br),)](
            raw, out, n_rows, COUNTS=plan.counts, NC=_pow2(plan.counts), RAW_W=plan.raw_width, W=plan.counts + 5, BR=br
        )
