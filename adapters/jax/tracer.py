"""FlaxTracer: write a trace of a Flax NNX model trained with optax."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
from flax import nnx

from tracefmt.enums import Kind, Phase, coerce
from tracefmt.errors import UsageError
from tracefmt.histogram import DEFAULT_BINNING, Binning
from tracefmt.writer import TraceWriter

from .graph import ModuleTable
from .instrument import Probe, Slot
from .stats import StatRows

__all__ = ["FlaxTracer"]


def _signature(batch: tuple) -> tuple:
    leaves, tree = jax.tree_util.tree_flatten(batch)
    return (tree, tuple((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))) for x in leaves))


def _values(state: nnx.State) -> list[Any]:
    """The arrays of a state in path order (values now: later updates do not change them)."""
    return [v.get_value() if hasattr(v, "get_value") else v for _, v in nnx.to_flat_state(state)]


def _param_slots(table: ModuleTable, state: nnx.State) -> list[tuple[int, str, tuple]]:
    """``(node, slot, path)`` of every parameter array, the slot being its attribute name."""
    out = []
    for path, _ in nnx.to_flat_state(state):
        path = tuple(path)
        node = table.node_of_path.get(path[:-1], 0)
        out.append((node, ".".join(str(p) for p in path[len(table.paths[node]) :]), path))
    return out


class FlaxTracer:
    """Trace a Flax NNX model trained with an optax optimizer into a tracefmt trace.

    The tracer builds the training step: :meth:`train_step` returns a jitted function that
    computes the loss and gradients, applies the ``nnx.Optimizer`` and, on recorded steps,
    also the statistics of every leaf module output and functional activation (kind
    ``activation``), of dL/d(output) (``gradient``, by the perturbation trick), of every
    parameter after the update (``weight``), its gradient (``weight_grad``) and the update
    itself (``weight_update``), all inside the same jit on the device. One copy per step
    brings them to the host. Steps not recorded run a plain jitted step. The loss is logged
    as the scalar ``loss``.

    Args:
        model: The ``nnx.Module`` to trace.
        path: The trace directory to create.
        activations: Record module outputs. Defaults to True.
        gradients: Record dL/d(output). Defaults to True.
        weights: Record parameters, their gradients and updates. Defaults to True.
        every: Record every N-th training step. Defaults to 1.
        histogram: Binning of the histograms, None for none. Defaults to DEFAULT_BINNING.
        run_id: Run identifier. Defaults to a new UUID.
        model_name: Model name for the manifest. Defaults to the model's class name.
        metadata: Free-form JSON metadata for the manifest.
        mode: Writer mode: 'create', 'overwrite' or 'append'. Defaults to 'create'.
    """

    def __init__(
        self,
        model: nnx.Module,
        path: str | Path,
        *,
        activations: bool = True,
        gradients: bool = True,
        weights: bool = True,
        every: int = 1,
        histogram: Binning | None = DEFAULT_BINNING,
        run_id: str | None = None,
        model_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        mode: str = "create",
    ) -> None:
        if not isinstance(model, nnx.Module):
            raise UsageError(f"FlaxTracer needs a flax.nnx.Module; got {type(model).__name__}")
        if int(every) < 1:
            raise UsageError(f"every must be >= 1; got {every}")
        self.model = model
        self.path = Path(path)
        self.record = {Kind.ACTIVATION: activations, Kind.GRADIENT: gradients, Kind.WEIGHT: weights}
        self.every = int(every)
        self.stats = StatRows(histogram)
        self.table = ModuleTable(model)
        self._writer_opts = {"run_id": run_id, "model": model_name or type(model).__name__, "metadata": metadata, "mode": mode}
        self.step_count = 0
        self.epoch: int | None = None
        self._phase = Phase.TRAIN
        self._discovered: dict[tuple, list[Slot]] = {}
        self._graph_written = False
        self._pending: list[Callable[[], None]] = []
        self._started = self._closed = False
        self._failed: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FlaxTracer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> FlaxTracer:
        """Open the trace and write the module hierarchy."""
        if self._started:
            raise UsageError("this FlaxTracer was already started; create a new one")
        import flax

        import tracefmt

        self._started = True
        producer = {
            "adapter": "tracefmt.adapters.jax",
            "framework": "flax",
            "framework_version": flax.__version__,
            "jax_version": jax.__version__,
            "tracefmt_version": tracefmt.__version__,
        }
        self.writer = TraceWriter(
            self.path, rank=jax.process_index(), world_size=jax.process_count(), producer=producer, **self._writer_opts
        )
        self.writer.write_nodes(self.table.rows(order={}, inputs={}, outputs={}))
        return self

    def close(self) -> None:
        """Write the last pending step and finish the trace (idempotent)."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        try:
            self._drain()
        finally:
            self.writer.close()

    def _require_open(self) -> None:
        if not self._started or self._closed:
            raise UsageError("the FlaxTracer is not running (use it as a context manager or call start())")

    # -- phases and scalars ---------------------------------------------------------------------
    @property
    def current_phase(self) -> str:
        """The phase new records get ('train', 'eval' or 'infer')."""
        return self._phase.value

    @contextmanager
    def phase(self, phase: str | Phase) -> Iterator[FlaxTracer]:
        """Context manager: functions from :meth:`eval_step` record in ``phase`` inside the block."""
        old, self._phase = self._phase, coerce(Phase, phase, what="phase")
        try:
            yield self
        finally:
            self._phase = old

    def log_scalar(self, name: str, value: Any, *, step: int | None = None) -> None:
        """Log a named scalar (a JAX scalar is read when the step is written, not now)."""
        self._require_open()
        at, phase, epoch = self.step_count if step is None else int(step), self._phase.value, self.epoch
        self._later(
            lambda: self.writer.append(
                "scalars",
                {
                    "step": [at],
                    "epoch": [epoch],
                    "phase": [phase],
                    "name": [str(name)],
                    "value": [float(np.asarray(value))],
                    "wall_time": [time.time()],
                },
            )
        )

    def log_predictions(self, y_true: Any, y_pred: Any) -> None:
        """Log true and predicted classes (scores ``(N, C)`` are reduced by argmax)."""
        self._require_open()
        at, phase = self.step_count, self._phase.value

        def write() -> None:
            yt, yp = np.asarray(y_true), np.asarray(y_pred)
            if yp.ndim > 1 and yp.dtype.kind == "f":
                yp = yp.argmax(axis=-1)
            yt, yp = yt.reshape(-1).astype(np.int64), yp.reshape(-1).astype(np.int64)
            n = len(yt)
            self.writer.append("predictions", {"step": np.full(n, at, np.int64), "phase": [phase] * n, "y_true": yt, "y_pred": yp})

        self._later(write)

    # -- building the steps ---------------------------------------------------------------------
    def _discover(self, fn: Callable, batch: tuple) -> list[Slot]:
        """The observed slots of ``fn(model, *batch)``, from an abstract evaluation (nothing runs)."""
        key = (id(fn), _signature(batch))
        found = self._discovered.get(key)
        if found is not None:
            return found
        graphdef, state = nnx.split(self.model)

        def abstract(state: Any, *args: Any) -> Any:
            m = nnx.merge(graphdef, state)
            probe = Probe(self.table, m, False, None)
            with probe.active():
                fn(m, *args)
            found_slots.extend(probe.slots)
            graph.update(order=probe.order, inputs=probe.inputs, outputs=probe.outputs)
            return None

        found_slots: list[Slot] = []
        graph: dict[str, Any] = {}
        jax.eval_shape(abstract, state, *batch)
        self._discovered[key] = found_slots
        if not self._graph_written:
            self.writer.write_nodes(self.table.rows(**graph))
            self._graph_written = True
        return found_slots

    def train_step(self, loss_fn: Callable[..., Any], optimizer: nnx.Optimizer, *, has_aux: bool = False) -> Callable[..., Any]:
        """A jitted training step ``step(*batch) -> loss`` (``(loss, aux)`` with ``has_aux``).

        Args:
            loss_fn: ``loss_fn(model, *batch)`` returning the scalar loss (or ``(loss, aux)``).
            optimizer: The ``nnx.Optimizer`` of this tracer's model.
            has_aux: ``loss_fn`` returns ``(loss, aux)``. Defaults to False.
        """
        self._require_open()
        if not isinstance(optimizer, nnx.Optimizer):
            raise UsageError(f"train_step needs an nnx.Optimizer; got {type(optimizer).__name__}")
        rec = self.record
        stats = self.stats

        def split_loss(out: Any) -> tuple[Any, Any]:
            return out if has_aux else (out, None)

        @nnx.jit
        def plain(model: nnx.Module, optimizer: nnx.Optimizer, *batch: Any) -> Any:
            (loss, aux), grads = nnx.value_and_grad(lambda m: split_loss(loss_fn(m, *batch)), has_aux=True)(model)
            optimizer.update(model, grads)
            return loss, aux

        @nnx.jit(static_argnums=(2,))
        def traced(model: nnx.Module, optimizer: nnx.Optimizer, slots: tuple[Slot, ...], *batch: Any) -> Any:
            perturb = {s.key: jnp.zeros(s.shape, s.dtype) for s in slots} if rec[Kind.GRADIENT] else None

            def loss_of(m: nnx.Module, perturb: Any) -> Any:
                probe = Probe(self.table, m, rec[Kind.ACTIVATION], perturb)
                with probe.active():
                    loss, aux = split_loss(loss_fn(m, *batch))
                return loss, (aux, probe.observed)

            (loss, (aux, act_rows)), (grads, pgrads) = nnx.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(model, perturb or {})
            arrays = list(act_rows)
            if perturb:
                # The backward pass meets the outputs in reverse order.
                arrays += [pgrads[s.key] for s in reversed(slots)]
            if rec[Kind.WEIGHT]:
                before = _values(nnx.state(model, nnx.Param))
                arrays += _values(grads)
                optimizer.update(model, grads)
                after = _values(nnx.state(model, nnx.Param))
                arrays += [a - b for a, b in zip(after, before)]
                arrays += after
            else:
                optimizer.update(model, grads)
            if not arrays:
                return loss, aux, None, None
            return (loss, aux, *stats.rows(arrays))

        def step(*batch: Any) -> Any:
            self._require_open()
            at = self.step_count
            if at % self.every == 0 and self._failed is None:
                slots = tuple(self._discover(loss_fn, batch))
                loss, aux, counts, moments = traced(self.model, optimizer, slots, *batch)
                self._queue_step(at, slots, counts, moments, with_weights=True)
            else:
                loss, aux = plain(self.model, optimizer, *batch)
            self.log_scalar("loss", loss, step=at)
            self.step_count += 1
            return (loss, aux) if has_aux else loss

        return step

    def eval_step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A jitted ``fn(model, *batch)`` that records the activations it computes.

        Records get the tracer's current phase if it is not 'train' (see :meth:`phase`),
        else 'eval', and the current step.
        """
        self._require_open()
        stats = self.stats

        @nnx.jit
        def observed(model: nnx.Module, *batch: Any) -> Any:
            probe = Probe(self.table, model, True, None)
            with probe.active():
                out = fn(model, *batch)
            if not probe.observed:
                return out, None, None
            return (out, *stats.rows(probe.observed))

        def run(*batch: Any) -> Any:
            self._require_open()
            slots = tuple(self._discover(fn, batch))
            out, counts, moments = observed(self.model, *batch)
            phase = self._phase if self._phase is not Phase.TRAIN else Phase.EVAL
            if self.record[Kind.ACTIVATION] and self._failed is None:
                self._queue_step(self.step_count, slots, counts, moments, with_weights=False, gradients=False, phase=phase)
            return out

        return run

    # -- host side ---------------------------------------------------------------------------------
    def _rows_meta(self, slots: tuple[Slot, ...], *, with_weights: bool, gradients: bool) -> list[tuple[int, str, str, int, str, tuple]]:
        meta = []
        if self.record[Kind.ACTIVATION]:
            meta += [(s.node_id, Kind.ACTIVATION.value, s.slot, s.call, s.dtype, s.shape) for s in slots]
        if gradients and self.record[Kind.GRADIENT]:
            meta += [(s.node_id, Kind.GRADIENT.value, s.slot, s.call, s.dtype, s.shape) for s in reversed(slots)]
        if with_weights and self.record[Kind.WEIGHT]:
            params = nnx.state(self.model, nnx.Param)
            described = [
                (node, slot, str(v.dtype), tuple(v.shape))
                for (node, slot, _), (_, v) in zip(_param_slots(self.table, params), nnx.to_flat_state(params))
            ]
            for kind in (Kind.WEIGHT_GRAD, Kind.WEIGHT_UPDATE, Kind.WEIGHT):
                meta += [(node, kind.value, slot, 0, dt, shape) for node, slot, dt, shape in described]
        return meta

    def _queue_step(
        self,
        step: int,
        slots: tuple[Slot, ...],
        counts: Any,
        moments: Any,
        *,
        with_weights: bool,
        gradients: bool = True,
        phase: Phase = Phase.TRAIN,
    ) -> None:
        if counts is None:
            return
        meta = self._rows_meta(slots, with_weights=with_weights, gradients=gradients)
        epoch = self.epoch
        # Written at the next step (or close): the device keeps working meanwhile.
        self._later(lambda: self._write_records(step, phase.value, epoch, meta, counts, moments))

    def _later(self, job: Callable[[], None]) -> None:
        self._drain()
        self._pending.append(job)

    def _drain(self) -> None:
        jobs, self._pending = self._pending, []
        for job in jobs:
            if self._failed is not None:
                return
            try:
                job()
            except Exception as err:  # never into the training loop: stop recording, say why once
                self._failed = err
                warnings.warn(f"tracefmt: recording stopped at step {self.step_count}: {err!r}", RuntimeWarning, stacklevel=3)

    def _write_records(self, step: int, phase: str, epoch: int | None, meta: list, counts: Any, moments: Any) -> None:
        c, m = jax.device_get((counts, moments))
        cols = self.stats.decode(np.asarray(c), np.asarray(m))
        n = len(meta)
        data: dict[str, Any] = {
            "step": np.full(n, step, np.int64),
            "phase": [phase] * n,
            "node_id": pa.array([r[0] for r in meta], pa.int32()),
            "kind": [r[1] for r in meta],
            "slot": [r[2] for r in meta],
            "call": pa.array([r[3] for r in meta], pa.int32()),
            "seq": pa.array(np.arange(n, dtype=np.int32)),
            "dtype": [r[4] for r in meta],
            "shape": pa.array([list(r[5]) for r in meta], pa.list_(pa.int64())),
            "numel": np.array([int(np.prod(r[5])) for r in meta], np.int64),
        }
        for name in ("nan_count", "inf_count", "zero_count", "pos_count"):
            data[name] = cols[name]
        for name in ("mean", "std", "min", "max", "abs_mean", "l2"):
            v = cols[name]
            data[name] = pa.array(v, mask=np.isnan(v) if name != "l2" else None)
        bn = self.stats.binning
        if bn is not None:
            hist = cols["hist_counts"]
            data["hist_scheme"] = [bn.scheme.value] * n
            data["hist_lo"] = np.full(n, bn.lo)
            data["hist_hi"] = np.full(n, bn.hi)
            data["hist_counts"] = pa.FixedSizeListArray.from_arrays(pa.array(hist.reshape(-1)), hist.shape[1]).cast(pa.list_(pa.int64()))
        self.writer.write_records(data)
