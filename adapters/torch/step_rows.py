"""The per-step row buffers of the fused kernel: allocated once per device, reused every step.

An observed tensor gets a *slot* (a row of the buffer of its device) and one launch of
:func:`~tracefmt.adapters.torch.triton_stats.launch_one`; the parameters of a step get
one launch per dtype (:meth:`StepRows.add_group`). At the end of the step
:meth:`StepRows.finish` runs one launch per device that writes the finished rows and
resets the buffer; the caller copies those rows to the host once. Kernels, the finish and
the copy are ordered on the device's stream, so the buffer is reused without ever
waiting on the host.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import triton_stats
from .device_stats import StatKernel
from .triton_stats import TRITON_DTYPES, KernelPlan, launch_finish, launch_group, launch_one, raw_init

__all__ = ["StepRows", "fused_devices", "is_dense"]


def fused_devices() -> tuple[str, ...]:
    """Device types whose tensors take the fused kernel.

    ``cuda`` when Triton imports; ``TRACEFMT_TRITON=0`` turns the kernel off,
    ``TRACEFMT_TRITON=cpu`` also runs it on CPU tensors (through Triton's interpreter,
    with ``TRITON_INTERPRET=1``: for tests, far slower than the C kernel).
    """
    choice = os.environ.get("TRACEFMT_TRITON", "1")
    if choice == "0" or (choice != "cpu" and not torch.cuda.is_available()) or not triton_stats.available():
        return ()  # (Triton is not even imported on a machine without CUDA)
    return ("cuda", "cpu") if choice == "cpu" else ("cuda",)


def is_dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill one block of memory (any dimension order, e.g. channels_last)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class _DeviceRows:
    def __init__(self, plan: KernelPlan, width: int, device: torch.device, capacity: int) -> None:
        self.plan, self.width, self.device = plan, width, device
        # Normal tensors even when the first observation happens under inference_mode:
        # the buffer is written again outside it.
        with torch.inference_mode(False):
            self.raw = raw_init(capacity, plan, device)
            self.out = torch.empty(capacity, width, dtype=torch.float64, device=device)
        self.used = 0

    def reserve(self, k: int) -> int:
        first = self.used
        self.used += k
        if self.used > self.raw.shape[0]:
            # Grow without synchronising: a new buffer, the rows so far copied on the device.
            cap = max(2 * self.raw.shape[0], self.used)
            with torch.inference_mode(False):
                raw = raw_init(cap, self.plan, self.device)
                raw[:first].copy_(self.raw[:first])
                self.out = torch.empty(cap, self.width, dtype=torch.float64, device=self.device)
            self.raw = raw
        return first


class StepRows:
    """The fused kernel's slots for one tracer (one buffer per device).

    Args:
        kernel: The tracer's :class:`StatKernel` (binning and row layout).
        devices: Device types to accept. Defaults to :func:`fused_devices`.
        capacity: Initial rows per device. Defaults to 1024.
    """

    def __init__(self, kernel: StatKernel, *, devices: tuple[str, ...] | None = None, capacity: int = 1024) -> None:
        self.kernel = kernel
        self.plan = KernelPlan(kernel.binning, kernel.counts)
        self.devices = fused_devices() if devices is None else devices
        self.capacity = capacity
        self._rows: dict[torch.device, _DeviceRows] = {}

    def accepts(self, t: torch.Tensor) -> bool:
        """True when ``t`` goes through the fused kernel."""
        return t.device.type in self.devices and t.dtype in TRITON_DTYPES and t.layout is torch.strided

    def _device(self, device: torch.device) -> _DeviceRows:
        rows = self._rows.get(device)
        if rows is None:
            rows = self._rows[device] = _DeviceRows(self.plan, self.kernel.width, device, self.capacity)
        return rows

    def add(self, t: torch.Tensor) -> int | None:
        """Launch the kernel for ``t`` (accepted) and return its slot on its device.

        Returns None, and sends every later tensor to the caller's other path, if the
        kernel cannot run here (a Triton or driver error): tracing must not fail a step.
        """
        rows = self._device(t.device)
        slot = rows.reserve(1)
        if t.numel():
            x = t.detach()
            try:
                launch_one(self.plan, x if is_dense(x) else x.contiguous(), rows.raw, slot)
            except Exception as exc:  # noqa: BLE001 - reported once, then the torch path
                rows.used -= 1
                self._give_up(exc)
                return None
        return slot

    def add_group(self, ts: list[torch.Tensor]) -> list[int | None]:
        """Slots for several accepted tensors: one launch per (device, dtype) present (None: not launched)."""
        slots: list[int | None] = [None] * len(ts)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(ts):
            groups.setdefault((t.device, t.dtype), []).append(i)
        for (device, _), idx in groups.items():
            if not self.devices:
                break
            rows = self._device(device)
            first = rows.reserve(len(idx))
            work = [(ts[i].detach(), first + k) for k, i in enumerate(idx) if ts[i].numel()]
            try:
                if work:
                    xs = [x if is_dense(x) else x.contiguous() for x, _ in work]
                    launch_group(self.plan, xs, rows.raw, [s for _, s in work])
            except Exception as exc:  # noqa: BLE001 - reported once, then the torch path
                rows.used = first
                self._give_up(exc)
                break
            for k, i in enumerate(idx):
                slots[i] = first + k
        return slots

    def _give_up(self, exc: Exception) -> None:
        self.devices = ()
        warnings.warn(
            f"tracefmt: the fused statistics kernel failed ({type(exc).__name__}: {exc}); using torch operations from now on",
            RuntimeWarning,
            stacklevel=3,
        )

    def finish(self) -> dict[torch.device, torch.Tensor]:
        """Finish the step: device -> its finished rows ``(used, width)``; the buffers are reset."""
        done: dict[torch.device, torch.Tensor] = {}
        for device, rows in self._rows.items():
            if rows.used:
                launch_finish(self.plan, rows.raw, rows.out, rows.used)
                out = rows.out[: rows.used]
                # A CPU tensor is not copied to the host: the next step would overwrite it.
                done[device] = out.clone() if device.type == "cpu" else out
                rows.used = 0
        return done
