"""One step's observations: gathered on the device, copied to the host once.

Each observed tensor contributes a float64 vector on its device: the statistics row of
:class:`~tracefmt.adapters.torch.device_stats.StatKernel`, optionally followed by matrix
statistics (4 values), the median (1) and per-channel vectors (2 x C). A tensor that
takes the fused kernel has its row in a slot of the step's row buffer instead
(:mod:`~tracefmt.adapters.torch.step_rows`) and a vector of its extras only, if any. At
the end of a step, :meth:`StepBatch.gather` finishes the row buffers, concatenates the
vectors into one tensor per device and starts the (non-blocking where possible) copies
to the host; :meth:`HostBatch.records` later turns the host copies into the records
table, off the training thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tracefmt.stats import dtype_name

from .device_stats import StatKernel
from .step_rows import StepRows

__all__ = ["Observation", "StepBatch", "HostBatch"]


@dataclass
class Observation:
    """Identity and layout of one observed tensor's vector."""

    node_id: int
    kind: str
    slot: str
    call: int
    seq: int
    dtype: str
    shape: list[int]
    numel: int
    mat: bool = False
    median: bool = False
    channels: int = 0
    channel_axis: int | None = None
    #: Device and slot of the row in the step's row buffer (fused kernel), else None.
    row_device: torch.device | None = None
    row: int = -1

    def length(self, width: int) -> int:
        """Length of this observation's vector for rows of ``width`` (extras only with a slot)."""
        own = width if self.row_device is None else 0
        return own + (4 if self.mat else 0) + (1 if self.median else 0) + 2 * self.channels


@dataclass
class StepBatch:
    """Observations of one (step, phase) while the step runs (device side)."""

    step: int
    phase: str
    epoch: int | None
    observations: list[Observation] = field(default_factory=list)
    vectors: list[torch.Tensor | None] = field(default_factory=list)
    raw: list[tuple[Observation, torch.Tensor]] = field(default_factory=list)
    scalars: list[tuple[str, int, float | torch.Tensor, float]] = field(default_factory=list)
    predictions: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.observations) + len(self.raw) + len(self.scalars) + len(self.predictions)

    def add(self, obs: Observation, vector: torch.Tensor | None) -> None:
        """Add one observation and its device vector (None: a slotted row without extras)."""
        self.observations.append(obs)
        self.vectors.append(vector)

    def gather(self, rows: StepRows | None = None) -> HostBatch:
        """Finish ``rows``, concatenate per device and start the copies to the host (one per device)."""
        host: list[tuple[list[int], torch.Tensor, Any]] = []
        by_device: dict[torch.device, list[int]] = {}
        for i, v in enumerate(self.vectors):
            if v is not None:
                by_device.setdefault(v.device, []).append(i)
        slotted = {d: _to_host(t) for d, t in rows.finish().items()} if rows is not None else {}
        tensor_scalars = [i for i, s in enumerate(self.scalars) if isinstance(s[2], torch.Tensor)]
        for idx in by_device.values():
            flat = torch.cat([self.vectors[i] for i in idx])
            host.append((idx, *_to_host(flat)))
        scalar_values: tuple[torch.Tensor, Any] | None = None
        if tensor_scalars:
            ts = [self.scalars[i][2].detach().reshape(()).to(torch.float64) for i in tensor_scalars]
            same_device = len({t.device for t in ts}) == 1
            scalar_values = _to_host(torch.stack(ts if same_device else [t.cpu() for t in ts]))
        raw = [(o, *_to_host(t)) for o, t in self.raw]
        preds = [(s, *_to_host(torch.cat([a.reshape(-1), b.reshape(-1)]))) for s, a, b in self.predictions]
        return HostBatch(self, host, tensor_scalars, scalar_values, raw, preds, slotted)


def _to_host(t: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start copying ``t`` to pinned host memory; return the host tensor and an event."""
    if t.device.type == "cpu":
        return t, None
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    event = torch.cuda.Event() if t.device.type == "cuda" else None
    if event is not None:
        event.record()
    else:  # other accelerators: a plain synchronous copy
        out.copy_(t)
    return out, event


def _wait(event: Any) -> None:
    if event is not None:
        event.synchronize()


@dataclass
class HostBatch:
    """A step's observations on (their way to) the host; converted off the training thread."""

    batch: StepBatch
    host: list[tuple[list[int], torch.Tensor, Any]]
    tensor_scalars: list[int]
    scalar_values: tuple[torch.Tensor, Any] | None
    raw: list[tuple[Observation, torch.Tensor, Any]]
    predictions: list[tuple[int, torch.Tensor, Any]]
    slotted: dict[torch.device, tuple[torch.Tensor, Any]] = field(default_factory=dict)

    def records(self, kernel: StatKernel) -> dict[str, Any] | None:
        """The records of this batch: record column name -> Arrow array (rank added by the writer)."""
        obs = self.batch.observations
        if not obs:
            return None
        w = kernel.width
        # Every vector's start in one flat array (the device groups one after the other).
        at = np.zeros(len(obs), dtype=np.int64)
        flats: list[np.ndarray] = []
        offset = 0
        for idx, t, event in self.host:
            _wait(event)
            a = t.numpy()
            lengths = np.fromiter((obs[i].length(w) for i in idx), dtype=np.int64, count=len(idx))
            at[idx] = offset + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            flats.append(a)
            offset += a.size
        flat = np.concatenate(flats) if flats else np.zeros(0)
        rows = np.empty((len(obs), w))
        own = np.array([o.row_device is None for o in obs], dtype=bool)
        if own.any():
            rows[own] = flat[at[own][:, None] + np.arange(w)[None, :]]
        slotted = {d: (_wait(e), t.numpy())[1] for d, (t, e) in self.slotted.items()}
        if slotted:
            devices = [o.row_device for o in obs]
            slot = np.fromiter((o.row for o in obs), dtype=np.int64, count=len(obs))
            for d, arr in slotted.items():
                sel = np.fromiter((x == d for x in devices), dtype=bool, count=len(obs))
                rows[sel] = arr[slot[sel]]
        starts = np.where(own, at, at - w)  # _extras reads from start + w
        numel = np.fromiter((o.numel for o in obs), dtype=np.int64, count=len(obs))
        cols = kernel.decode(rows, numel)
        n = len(obs)
        b = self.batch
        data: dict[str, Any] = {
            "step": pa.array(np.full(n, b.step, dtype=np.int64)),
            "phase": pa.array([b.phase] * n),
            "node_id": pa.array([o.node_id for o in obs], pa.int32()),
            "kind": pa.array([o.kind for o in obs]),
            "slot": pa.array([o.slot for o in obs]),
            "call": pa.array([o.call for o in obs], pa.int32()),
            "seq": pa.array([o.seq for o in obs], pa.int32()),
            "dtype": pa.array([o.dtype for o in obs]),
            "shape": pa.array([o.shape for o in obs], pa.list_(pa.int64())),
        }
        for name in ("numel", "nan_count", "inf_count", "zero_count", "pos_count"):
            data[name] = pa.array(cols[name])
        for name in ("mean", "std", "min", "max", "abs_mean", "l2"):
            v = cols[name]
            data[name] = pa.array(v, mask=np.isnan(v) if name != "l2" else None)
        if "hist_counts" in cols and kernel.binning is not None:
            hist = cols["hist_counts"]
            bn = kernel.binning
            data["hist_scheme"] = pa.array([bn.scheme.value] * n)
            data["hist_lo"] = pa.array(np.full(n, bn.lo, dtype=np.float64))
            data["hist_hi"] = pa.array(np.full(n, bn.hi, dtype=np.float64))
            data["hist_counts"] = pa.FixedSizeListArray.from_arrays(pa.array(hist.reshape(-1)), hist.shape[1]).cast(pa.list_(pa.int64()))
        self._extras(obs, flat, starts + w, data)
        return data

    @staticmethod
    def _extras(obs: list[Observation], flat: np.ndarray, at: np.ndarray, data: dict[str, Any]) -> None:
        n = len(obs)
        mat = np.full((n, 4), np.nan)
        median = np.full(n, np.nan)
        axis: list[int | None] = [None] * n
        pos: list[Any] = [None] * n
        mean: list[Any] = [None] * n
        for i, o in enumerate(obs):
            k = int(at[i])
            if o.mat:
                mat[i] = flat[k : k + 4]
                k += 4
            if o.median:
                median[i] = flat[k]
                k += 1
            if o.channels:
                c = o.channels
                axis[i] = o.channel_axis
                pos[i] = flat[k : k + c].astype(np.float32)
                mean[i] = flat[k + c : k + 2 * c].astype(np.float32)
        if any(o.median for o in obs):
            data["median"] = pa.array(median, mask=np.isnan(median))
        if any(o.mat for o in obs):
            for j, name in enumerate(("mat_trace", "mat_spectral", "mat_sv_mean", "mat_sv_var")):
                data[name] = pa.array(mat[:, j], mask=np.isnan(mat[:, j]))
        if any(o.channels for o in obs):
            data["channel_axis"] = pa.array(axis, pa.int32())
            data["channel_pos_frac"] = pa.array(pos, pa.list_(pa.float32()))
            data["channel_mean"] = pa.array(mean, pa.list_(pa.float32()))

    def raw_tensors(self) -> list[tuple[Observation, np.ndarray]]:
        """Raw values captured for the tensors table, as numpy arrays."""
        out = []
        for o, t, event in self.raw:
            _wait(event)
            a = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
            out.append((o, a.reshape(o.shape)))
        return out

    def scalar_rows(self) -> dict[str, list] | None:
        """The scalars of this batch as columns of the scalars table."""
        s = self.batch.scalars
        if not s:
            return None
        values = [v if not isinstance(v, torch.Tensor) else None for _, _, v, _ in s]
        if self.scalar_values is not None:
            t, event = self.scalar_values
            _wait(event)
            for i, v in zip(self.tensor_scalars, t.numpy().tolist()):
                values[i] = v
        n = len(s)
        return {
            "step": [st for _, st, _, _ in s],
            "epoch": [self.batch.epoch] * n,
            "phase": [self.batch.phase] * n,
            "name": [name for name, _, _, _ in s],
            "value": [float(v) for v in values],
            "wall_time": [wt for _, _, _, wt in s],
        }

    def prediction_rows(self) -> dict[str, Any] | None:
        """The predictions of this batch as columns of the predictions table."""
        if not self.predictions:
            return None
        steps, yt, yp = [], [], []
        for step, t, event in self.predictions:
            _wait(event)
            a = t.numpy().astype(np.int64)
            half = a.size // 2
            steps.append(np.full(half, step, dtype=np.int64))
            yt.append(a[:half])
            yp.append(a[half:])
        n = sum(len(s) for s in steps)
        return {
            "step": np.concatenate(steps),
            "epoch": [self.batch.epoch] * n,
            "phase": [self.batch.phase] * n,
            "y_true": np.concatenate(yt),
            "y_pred": np.concatenate(yp),
        }


def describe(x: torch.Tensor) -> tuple[str, list[int], int]:
    """``(dtype, shape, numel)`` of a tensor, as the record stores them."""
    return dtype_name(x.dtype), list(x.shape), x.numel()
