"""TorchTracer: hooks that write a trace of a PyTorch training run (or of eval passes)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracefmt.enums import Kind, Phase, coerce
from tracefmt.errors import UsageError
from tracefmt.histogram import DEFAULT_BINNING, Binning
from tracefmt.writer import TraceWriter, WriterOptions

from .background import BackgroundWriter
from .coverage import ModuleOutputs
from .device_stats import StatKernel
from .distributed import barrier, rank_and_world_size
from .extras import channel_vector, matrix_vector, median_vector
from .graph import GraphRecorder, ModuleIndex
from .observations import HostBatch, Observation, StepBatch, describe
from .selection import as_patterns, channel_axis, matches, select_modules
from .slots import tensor_slots
from .step_rows import StepRows, fused_devices
from .unusual import UnusualTensors

__all__ = ["TorchTracer", "unwrap_optimizer"]


def _check_not_compiled(model: nn.Module) -> None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - very old torch
        return
    if isinstance(model, OptimizedModule):
        raise UsageError(
            "TorchTracer cannot hook a torch.compile'd model: trace the model before compiling it, "
            "or pass the original module (model._orig_mod)"
        )


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer whose ``step()`` really runs, below any wrappers.

    Wrappers such as accelerate's ``AcceleratedOptimizer`` (the Hugging Face Trainer's) keep
    the wrapped optimizer in ``.optimizer`` and may subclass ``torch.optim.Optimizer``
    without its hook registries; step hooks belong on the innermost optimizer.
    """
    seen = 0
    while optimizer is not None and seen < 8:
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer, seen = inner, seen + 1
    return optimizer


class TorchTracer:
    """Trace a PyTorch model through module hooks into a tracefmt trace.

    Records, per traced module and step: activations (module outputs; tuple and dict
    outputs give one slot each), gradients dL/d(output), optionally inputs; per traced
    parameter: weight, weight_grad and (with ``optimizer``) weight_update. Statistics are
    computed on the tensor's device, copied to the host once per step and written by a
    background thread. The ``nodes`` table holds the module hierarchy and the data flow
    observed in the first forward, including functional code between modules.

    Use as a context manager (or :meth:`start` / :meth:`close`); call :meth:`step` at the
    end of each training step, after ``optimizer.step()`` and before ``zero_grad()`` (or
    pass ``optimizer=`` and steps are counted automatically).

    Args:
        model: The module to trace (not a ``torch.compile`` result: pass ``_orig_mod``).
        path: The trace directory to create.
        modules: Qualified-name glob patterns of the modules to trace. Defaults to every
            module: leaf modules whole; modules with children for the parameters they hold
            directly and the outputs that are not a child's output (so every parameter and
            module output is observed).
        module_types: Only trace modules that are instances of these classes.
        exclude: Glob patterns of modules not to trace.
        activations: Record module outputs. Defaults to True.
        gradients: Record dL/d(output) in backward. Defaults to True.
        weights: Record parameter values at step time. Defaults to True.
        weight_grads: Record parameter gradients at step time. Defaults to True.
        weight_updates: Record parameter after minus before the optimizer step (needs
            ``optimizer``). Defaults to False.
        inputs: Record module inputs (before the forward). Defaults to False.
        every: Record every N-th training step. Defaults to 1.
        schedule: ``step -> bool`` deciding which training steps are recorded (overrides
            ``every``). Other phases are always recorded.
        weight_every: Interval of the weight kinds. Defaults to ``every``.
        matrix_stats: Add ``mat_*`` columns to 2-D weight records and aggregate
            ``all:weight`` / ``all:bias`` records (with median) at the root node.
        histogram: Binning of the histograms, None for none. Defaults to DEFAULT_BINNING.
        channels: Per-channel vectors: True for every traced module or glob patterns.
        raw: Glob patterns of modules whose raw activations/gradients go to the tensors table.
        optimizer: Count steps from this optimizer's ``step()`` (hooks on it). A wrapper
            holding the real optimizer in ``.optimizer`` (accelerate's
            ``AcceleratedOptimizer``) is unwrapped.
        phase: Initial phase. Defaults to 'train'.
        run_id: Run identifier. Defaults to a new UUID.
        model_name: Model name for the manifest. Defaults to the model's class name.
        metadata: Free-form JSON metadata for the manifest.
        mode: Writer mode: 'create', 'overwrite' or 'append'. Defaults to 'create'.
        writer_options: How the trace's segments are rolled and encoded
            (:class:`tracefmt.WriterOptions`: ``roll_seconds``, ``roll_steps``,
            ``roll_bytes``, ``flush_interval``, ``segment_format``). Defaults to
            ``WriterOptions()``: outside engines see the run within 5 s.
        rank: This process's rank. Defaults to torch.distributed's, else 0.
        world_size: Number of ranks. Defaults to torch.distributed's, else 1.
        tensorboard: A TensorBoard log directory that mirrors the records and scalars live
            (histograms and statistic series, :mod:`tracefmt.adapters.tensorboard`).
            Defaults to None (no mirror).
    """

    def __init__(
        self,
        model: nn.Module,
        path: str | Path,
        *,
        modules: str | Sequence[str] | None = None,
        module_types: tuple[type[nn.Module], ...] | None = None,
        exclude: str | Sequence[str] | None = None,
        activations: bool = True,
        gradients: bool = True,
        weights: bool = True,
        weight_grads: bool = True,
        weight_updates: bool = False,
        inputs: bool = False,
        every: int = 1,
        schedule: Callable[[int], bool] | None = None,
        weight_every: int | None = None,
        matrix_stats: bool = False,
        histogram: Binning | None = DEFAULT_BINNING,
        channels: bool | str | Sequence[str] = False,
        raw: str | Sequence[str] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        phase: str | Phase = "train",
        run_id: str | None = None,
        model_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        mode: str = "create",
        writer_options: WriterOptions | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        tensorboard: str | Path | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"TorchTracer needs an nn.Module; got {type(model).__name__}")
        _check_not_compiled(model)
        if int(every) < 1 or (weight_every is not None and int(weight_every) < 1):
            raise UsageError(f"every and weight_every must be >= 1; got every={every}, weight_every={weight_every}")
        if schedule is not None and not callable(schedule):
            raise UsageError("schedule must be a callable step -> bool")
        if weight_updates and optimizer is None:
            raise UsageError("weight_updates=True needs optimizer= (the update is measured around optimizer.step())")
        if module_types is not None and not isinstance(module_types, tuple):
            module_types = tuple(module_types) if isinstance(module_types, (list, set)) else (module_types,)
        self.model = model
        self.path = Path(path)
        self._select = {"modules": modules, "module_types": module_types, "exclude": exclude}
        self.record = {
            Kind.ACTIVATION: activations,
            Kind.GRADIENT: gradients,
            Kind.WEIGHT: weights,
            Kind.WEIGHT_GRAD: weight_grads,
            Kind.WEIGHT_UPDATE: weight_updates,
            Kind.INPUT: inputs,
        }
        self.every = int(every)
        self.schedule = schedule
        self.weight_every = int(weight_every) if weight_every is not None else self.every
        self.matrix_stats = bool(matrix_stats)
        self.kernel = StatKernel(histogram)
        self._unusual = UnusualTensors(lambda node: self.index.name(node))
        #: Slots of the fused kernel (CUDA with Triton), None where no device takes it.
        self.rows = StepRows(self.kernel) if fused_devices() else None
        self._channels = channels if isinstance(channels, bool) else as_patterns(channels)
        self._raw = as_patterns(raw)
        self.optimizer = unwrap_optimizer(optimizer)
        self._phase = coerce(Phase, phase, what="phase")
        self._writer_opts = {"run_id": run_id, "model": model_name or type(model).__name__, "metadata": metadata, "mode": mode, "options": writer_options}
        self._rank_opt, self._world_opt = rank, world_size
        self.epoch: int | None = None
        self.step_count = 0
        self._started = self._closed = False
        self._handles: list[Any] = []
        self._tensorboard = tensorboard
        self._tb: Any = None
        self._watcher: Any = None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> TorchTracer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> TorchTracer:
        """Open the trace, write the module hierarchy and attach every hook."""
        if self._started:
            raise UsageError("this TorchTracer was already started; create a new one")
        self._started = True
        self.rank, self.world_size = rank_and_world_size(self._rank_opt, self._world_opt)
        self.index = ModuleIndex(self.model)
        self.traced = select_modules(self.index, **self._select)
        import tracefmt

        producer = {
            "adapter": "tracefmt.adapters.torch",
            "framework": "torch",
            "framework_version": torch.__version__,
            "tracefmt_version": tracefmt.__version__,
        }
        opts = self._writer_opts
        # Rank 0 creates the directory and manifest before the other ranks add to it.
        if self.rank != 0:
            barrier()
        self.writer = TraceWriter(self.path, rank=self.rank, world_size=self.world_size, producer=producer, **opts)
        if self.rank == 0:
            barrier()
        self._bg = BackgroundWriter()
        if self._tensorboard is not None:
            from tracefmt.adapters.tensorboard import TensorBoardMirror

            self._tb = TensorBoardMirror(self._tensorboard)
        try:
            self._attach()
        except BaseException as err:
            # The error that stopped the start is the one the user must see; a failure
            # while undoing the partial start only adds a note to it.
            try:
                self.close()
            except Exception as cleanup:
                if hasattr(err, "add_note"):
                    err.add_note(f"tracefmt: cleaning up after it also failed: {cleanup!r}")
            raise
        return self

    def close(self) -> None:
        """Flush the pending step, remove every hook, finish writing (idempotent)."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        try:
            if hasattr(self, "_batch"):  # absent when start() failed while attaching
                self._flush_batch()
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            if hasattr(self, "_recorder"):
                self._recorder.detach()
            try:
                self._bg.drain()
            finally:
                self._bg.close()
                self.writer.close()
                self._mirror("close", self.writer.manifest)

    # -- attaching --------------------------------------------------------------------
    def _attach(self) -> None:
        idx = self.index
        self._recorder = self._new_recorder()
        self._graph_calls: dict[int, int] = {}
        self._fwd_calls: dict[int, int] = {}
        self._write_nodes()
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre))
        self._params: list[tuple[int, str, nn.Parameter]] = []
        self._returned = ModuleOutputs()
        default = self._select["modules"] is None and self._select["module_types"] is None
        self._own_outputs_only = {n for n in self.traced if default and not idx.unit[n]}
        for node in self.traced:
            module = idx.modules[node][1]
            chan = self._channels is True or (isinstance(self._channels, list) and matches(idx.qualname[node], self._channels))
            raw = matches(idx.qualname[node], self._raw)
            self._handles.append(module.register_forward_hook(self._forward_hook(node, module, chan, raw)))
            if self.record[Kind.INPUT]:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(node, chan, raw)))
            for name, p in module.named_parameters(recurse=False):
                self._params.append((node, name, p))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._opt_pre))
            self._handles.append(self.optimizer.register_step_post_hook(self._opt_post))
        self._new_batch()

    def _write_nodes(self) -> None:
        rows = self._recorder.rows()
        self.writer.write_nodes(rows)
        self._mirror("set_nodes", rows)

    def _mirror(self, method: str, *args: Any) -> None:
        """Hand rows to the TensorBoard mirror; a failing mirror is dropped with a warning, never raised."""
        if self._tb is None:
            return
        try:
            getattr(self._tb, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the training loop must not see it
            import warnings

            warnings.warn(f"TensorBoard mirror stopped: {exc}", RuntimeWarning, stacklevel=2)
            self._tb = None

    def _root_pre(self, module: nn.Module, args: Any) -> None:
        self._bg.check()
        self._fwd_calls: dict[int, int] = {}
        self._returned.clear()

    def _new_recorder(self) -> GraphRecorder:
        rec = GraphRecorder(self.index)
        rec.on_done = self._graph_done
        rec.attach()
        rec.armed = True
        return rec

    def _graph_done(self, rec: GraphRecorder) -> None:
        self._graph_calls = dict(rec.calls)
        self._write_nodes()

    def _rediscover(self) -> None:
        """Record the graph again at the next forward (the model took a new path)."""
        self._recorder.detach()
        self._recorder = self._new_recorder()

    # -- state ------------------------------------------------------------------------
    @property
    def current_phase(self) -> str:
        """The phase new records get ('train', 'eval' or 'infer')."""
        return self._phase.value

    def _new_batch(self) -> None:
        self._batch = StepBatch(self.step_count, self._phase.value, self.epoch)
        self._seq = 0
        self._calls: dict[int, int] = {}
        if self._phase is not Phase.TRAIN:
            self._active = True
        elif self.schedule is not None:
            self._active = bool(self.schedule(self.step_count))
        else:
            self._active = self.step_count % self.every == 0

    def _flush_batch(self) -> None:
        batch = self._batch
        if len(batch):
            host = batch.gather(self.rows)
            self._bg.submit(lambda: self._write(host))
        self._new_batch()

    def _write(self, host: HostBatch) -> None:
        table = host.records(self.kernel)
        if table is not None:
            self.writer.write_records(table)
            self._mirror("add_records", table)
        for o, values in host.raw_tensors():
            self.writer.write_tensor(
                values,
                step=host.batch.step,
                node_id=o.node_id,
                kind=o.kind,
                slot=o.slot,
                call=o.call,
                phase=host.batch.phase,
                dtype=o.dtype,
            )
        scalars = host.scalar_rows()
        if scalars is not None:
            self.writer.append("scalars", scalars)
            self._mirror("add_scalars", scalars)
        preds = host.prediction_rows()
        if preds is not None:
            self.writer.append("predictions", preds)

    # -- public per-step API ----------------------------------------------------------
    def findings(self, *, names: Sequence[str] | None = None, params: dict[str, Any] | None = None) -> list[Any]:
        """Findings that appeared since the last call, from the steps recorded so far.

        Writes what is pending, then looks at the trace as a reader would
        (:class:`tracefmt.analyzers.watch.Watcher`), so a loop can stop a dying run::

            if any(n.finding.severity == "error" for n in tracer.findings()):
                break

        Args:
            names: Analyzers to run. Defaults to the watch's (activations, dead, gradients, loss).
            params: Analyzer parameters.

        Returns:
            :class:`~tracefmt.analyzers.watch.NewFinding` items (finding and the step seen at).
        """
        self._require_open()
        from tracefmt.analyzers.watch import Watcher

        if self._watcher is None:
            self._watcher = Watcher(self.path, names=names, params=params)
        self._bg.drain()
        self.writer.flush()
        return self._watcher.poll().new

    def step(self) -> None:
        """End the current training step: record weights (if due), hand the step to the writer.

        With ``optimizer=`` steps are counted by the optimizer and this does nothing.
        """
        self._require_open()
        if self.optimizer is not None:
            return
        self._weights_due(grads=True, values=True)
        self._end_step()

    def _end_step(self) -> None:
        self._flush_batch()
        self.step_count += 1
        self._new_batch()

    def set_phase(self, phase: str | Phase) -> None:
        """Switch the phase of subsequent records (flushes the records of the old phase)."""
        self._require_open()
        new = coerce(Phase, phase, what="phase")
        if new is not self._phase:
            self._flush_batch()
            self._phase = new
            self._new_batch()

    @contextmanager
    def phase(self, phase: str | Phase) -> Iterator[TorchTracer]:
        """Context manager: record in ``phase`` inside the block, then switch back."""
        old = self._phase
        self.set_phase(phase)
        try:
            yield self
        finally:
            if not self._closed:
                self.set_phase(old)

    def log_scalar(self, name: str, value: float | torch.Tensor, *, step: int | None = None) -> None:
        """Log a named scalar (a tensor is copied to the host with the step's statistics).

        Args:
            name: Series name ('loss', 'lr', ...).
            value: A float or a one-element tensor.
            step: The step; defaults to the current step.
        """
        self._require_open()
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise UsageError(f"log_scalar({name!r}): expected one value, got a tensor of shape {list(value.shape)}")
            value = value.detach()
        else:
            value = float(value)
        self._batch.scalars.append((str(name), self.step_count if step is None else int(step), value, time.time()))

    def log_predictions(self, y_true: Any, y_pred: Any) -> None:
        """Log true and predicted classes for confusion matrices.

        Args:
            y_true: Class indices (N,).
            y_pred: Class indices (N,), or scores (N, C) whose argmax is taken.
        """
        self._require_open()
        yt = torch.as_tensor(y_true).detach()
        yp = torch.as_tensor(y_pred).detach()
        if yp.is_floating_point() and yp.ndim > 1:
            yp = yp.argmax(dim=-1)
        yt, yp = yt.reshape(-1).to(torch.int64), yp.reshape(-1).to(torch.int64).to(yt.device)
        if yt.numel() != yp.numel():
            raise UsageError(f"log_predictions: y_true has {yt.numel()} values, y_pred {yp.numel()}")
        self._batch.predictions.append((self.step_count, yt, yp))

    def _require_open(self) -> None:
        if not self._started or self._closed:
            raise UsageError("the TorchTracer is not running (use it as a context manager or call start())")

    # -- observing --------------------------------------------------------------------
    def _observe(
        self,
        node: int,
        kind: Kind,
        slot: str,
        call: int,
        t: torch.Tensor,
        *,
        module: nn.Module | None = None,
        chan: bool = False,
        raw: bool = False,
        mat: bool = False,
        median: bool = False,
        row: int | None = None,
    ) -> None:
        """Record one tensor; ``row`` is its slot when the fused kernel was already launched for it."""
        t = self._unusual.for_stats(node, t)
        if t is None:
            return
        rec = self._recorder
        rec._paused += 1
        try:
            dtype, shape, numel = describe(t)
            obs = Observation(node, kind.value, slot, call, self._seq, dtype, shape, numel)
            self._seq += 1
            parts: list[torch.Tensor] = []
            if row is None and self.rows is not None and self.rows.accepts(t):
                row = self.rows.add(t)  # None if the kernel failed: the torch path below
            if row is not None:
                obs.row_device, obs.row = t.device, row
            else:
                parts.append(self.kernel.row(t))
            if mat and t.ndim == 2 and numel:
                obs.mat = True
                parts.append(matrix_vector(t))
            if median:
                obs.median = True
                parts.append(median_vector(t))
            if chan and t.ndim >= 2 and numel:
                axis = channel_axis(module, t.ndim) if module is not None else 1
                obs.channels, obs.channel_axis = int(t.shape[axis]), axis
                parts.append(channel_vector(t, axis, native=self.kernel.cpu_reduction))
            vector = None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts)
            copy = self._unusual.for_raw(node, t) if raw else None
            self._batch.add(obs, vector)
            if copy is not None:
                self._batch.raw.append((obs, copy))
        except Exception as exc:  # the training loop must never die because of a tensor
            self._unusual.failed(node, kind.value, exc)
        finally:
            rec._paused -= 1

    def _next_call(self, node: int) -> int:
        call = self._calls.get(node, 0)
        self._calls[node] = call + 1
        in_forward = self._fwd_calls.get(node, 0)
        self._fwd_calls[node] = in_forward + 1
        if not self._recorder.armed and in_forward >= self._graph_calls.get(node, 0):
            self._rediscover()
        return call

    def _forward_hook(self, node: int, module: nn.Module, chan: bool, raw: bool):
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not self._active:
                return
            call = self._next_call(node) if not self.record[Kind.INPUT] else self._calls[node] - 1
            want_act, want_grad = self.record[Kind.ACTIVATION], self.record[Kind.GRADIENT] and torch.is_grad_enabled()
            own_only = node in self._own_outputs_only
            for slot, t in tensor_slots(output):
                if own_only and self._returned.returned(t):
                    continue
                self._returned.add(t)
                if want_act:
                    self._observe(node, Kind.ACTIVATION, slot, call, t, module=module, chan=chan, raw=raw)
                if want_grad and t.requires_grad:
                    t.register_hook(self._grad_hook(node, slot, call, module, chan, raw))

        return hook

    def _input_hook(self, node: int, chan: bool, raw: bool):
        def hook(mod: nn.Module, args: Any) -> None:
            if not self._active:
                return
            call = self._next_call(node)
            for slot, t in tensor_slots(args):
                self._observe(node, Kind.INPUT, slot, call, t, module=None, chan=False, raw=raw)

        return hook

    def _grad_hook(self, node: int, slot: str, call: int, module: nn.Module, chan: bool, raw: bool):
        def hook(grad: torch.Tensor) -> None:
            if self._closed:
                return
            self._observe(node, Kind.GRADIENT, slot, call, grad, module=module, chan=chan, raw=raw)

        return hook

    # -- weights ----------------------------------------------------------------------
    def _weight_step(self) -> bool:
        return self._phase is Phase.TRAIN and self.step_count % self.weight_every == 0

    def _weights_due(self, *, grads: bool, values: bool) -> None:
        if not self._weight_step():
            return
        todo: list[tuple[int, Kind, str, torch.Tensor]] = []
        for node, name, p in self._params:
            if values and self.record[Kind.WEIGHT]:
                todo.append((node, Kind.WEIGHT, name, p))
            if grads and self.record[Kind.WEIGHT_GRAD] and p.grad is not None:
                todo.append((node, Kind.WEIGHT_GRAD, name, p.grad))
        self._observe_bulk(todo)
        if values and self.record[Kind.WEIGHT] and self.matrix_stats:
            self._aggregates()

    def _observe_bulk(self, todo: list[tuple[int, Kind, str, torch.Tensor]]) -> None:
        """Record parameter-sized tensors: one fused launch per (device, dtype), not per tensor."""
        rows: list[int | None] = [None] * len(todo)
        if self.rows is not None:
            fused = [i for i, item in enumerate(todo) if self.rows.accepts(item[3])]
            if fused:
                with self._recorder.paused():
                    for i, slot in zip(fused, self.rows.add_group([todo[i][3] for i in fused])):
                        rows[i] = slot
        for (node, kind, name, t), row in zip(todo, rows):
            self._observe(node, kind, name, 0, t, mat=self.matrix_stats and kind is Kind.WEIGHT, row=row)

    def _aggregates(self) -> None:
        groups: dict[str, list[torch.Tensor]] = {"all:weight": [], "all:bias": []}
        for name, p in self.model.named_parameters():
            groups["all:bias" if "bias" in name else "all:weight"].append(p.detach().reshape(-1))
        for slot, parts in groups.items():
            if parts:
                device = parts[0].device
                flat = torch.cat([q.to(device, torch.float64 if q.dtype == torch.float64 else torch.float32) for q in parts])
                self._observe(0, Kind.WEIGHT, slot, 0, flat, median=True)

    def _opt_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        self._weights_due(grads=True, values=False)
        self._before = None
        if self.record[Kind.WEIGHT_UPDATE] and self._weight_step():
            self._before = [p.detach().clone() for _, _, p in self._params]

    def _opt_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        self._weights_due(grads=False, values=True)
        if getattr(self, "_before", None) is not None:
            updates = torch._foreach_sub([p.detach() for _, _, p in self._params], self._before) if self._params else []
            self._observe_bulk([(node, Kind.WEIGHT_UPDATE, name, u) for (node, name, _), u in zip(self._params, updates)])
            self._before = None
        self._end_step()
