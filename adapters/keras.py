"""Keras 3 adapter: a callback that traces ``model.fit`` (see docs/keras.md).

Backend-independent: it uses only Keras' public API (``keras.Model`` over layer outputs,
``keras.ops.convert_to_numpy``, layer weights), so it works on the JAX, PyTorch and
TensorFlow backends alike. ``fit`` runs its step compiled, out of a callback's reach, so
layer outputs are observed on a fixed *probe* batch: at the start of every recorded step
the callback runs the model's layers on it (inference mode) with the weights that step
trains with. Statistics are the reference ones (:func:`tracefmt.stats.tensor_stats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tracefmt.errors import UsageError
from tracefmt.histogram import DEFAULT_BINNING, Binning
from tracefmt.op_classes import OpClass, classify_op_type
from tracefmt.stats import tensor_stats
from tracefmt.writer import TraceWriter

__all__ = ["TracefmtCallback", "keras_op_class"]

_STAT_KEYS = ("dtype", "shape", "numel", "nan_count", "inf_count", "zero_count", "pos_count", "mean", "std", "min", "max", "abs_mean", "l2")


def keras_op_class(layer: keras.layers.Layer) -> OpClass:
    """The op class of a Keras layer; an ``Activation`` layer by its function's name.

    A layer with a fused ``activation=`` argument (``Dense(8, activation='relu')``) is
    classified by the layer (linear): its output mixes both, so prefer a separate
    activation layer where the activation matters to an analysis.
    """
    if isinstance(layer, keras.Model):
        return OpClass.CONTAINER
    if isinstance(layer, keras.layers.Activation):
        fn = getattr(layer, "activation", None)
        return classify_op_type(getattr(fn, "__name__", "other"))
    return classify_op_type(type(layer).__name__)


def _layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer, int | None]]:
    """``(scope, layer, parent index)`` in model order, nested models expanded (pre-order)."""
    out: list[tuple[str, keras.layers.Layer, int | None]] = []

    def walk(m: keras.Model, prefix: str, parent: int) -> None:
        for layer in m.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            scope = f"{prefix}{layer.name}"
            out.append((scope, layer, parent))
            if isinstance(layer, keras.Model):
                walk(layer, scope + ".", len(out))

    walk(model, "", 0)
    return out


class TracefmtCallback(keras.callbacks.Callback):
    """Trace a Keras 3 ``model.fit``: layer outputs, weights and the per-batch loss.

    Records, per recorded training step: every layer's output on the probe batch (kind
    ``activation``, phase ``train``, before the step's update) and every layer weight after
    the update (kind ``weight``, slot the weight's name); scalars: the batch loss as
    ``loss`` (recovered exactly from Keras' running mean), and at each epoch end the
    ``val_*`` logs as phase ``eval`` scalars.

    Args:
        path: The trace directory to create.
        probe: Inputs of the probe batch (what ``model(probe)`` accepts).
        every: Record every N-th training step. Defaults to 1.
        weights: Record layer weights. Defaults to True.
        histogram: Binning of the histograms, None for none. Defaults to DEFAULT_BINNING.
        run_id: Run identifier. Defaults to a new UUID.
        metadata: Free-form JSON metadata for the manifest.
        mode: Writer mode: 'create', 'overwrite' or 'append'. Defaults to 'create'.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        probe: Any,
        every: int = 1,
        weights: bool = True,
        histogram: Binning | None = DEFAULT_BINNING,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        mode: str = "create",
    ) -> None:
        super().__init__()
        if int(every) < 1:
            raise UsageError(f"every must be >= 1; got {every}")
        self.path = Path(path)
        self.probe = probe
        self.every = int(every)
        self.weights = bool(weights)
        self.binning = histogram
        self._writer_opts = {"run_id": run_id, "metadata": metadata, "mode": mode}
        self.step = 0
        self.epoch = 0
        self.writer: TraceWriter | None = None
        self._loss_state: tuple[float, float] = (0.0, 0.0)

    # -- set-up ---------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        """Open the trace, write the layer table and build the probe model."""
        import tracefmt

        model = self.model
        if self.writer is None:
            producer = {
                "adapter": "tracefmt.adapters.keras",
                "framework": "keras",
                "framework_version": keras.__version__,
                "backend": keras.backend.backend(),
                "tracefmt_version": tracefmt.__version__,
            }
            self.writer = TraceWriter(self.path, producer=producer, model=model.name, **self._writer_opts)
            self.layers = _layers(model)
            self.writer.write_nodes(self._node_rows(model))
            top = [(i + 1, layer) for i, (_, layer, parent) in enumerate(self.layers) if parent == 0]
            try:
                self._probe_model = keras.Model(inputs=model.inputs, outputs=[layer.output for _, layer in top])
            except (AttributeError, ValueError) as err:
                raise UsageError(f"TracefmtCallback needs a built functional or Sequential model to observe layer outputs: {err}") from err
            self._probe_nodes = [i for i, _ in top]

    def _node_rows(self, model: keras.Model) -> list[dict[str, Any]]:
        rows = [
            {
                "node_id": 0,
                "name": model.name,
                "scope": "",
                "op_type": type(model).__name__,
                "op_class": OpClass.CONTAINER.value,
                "parent": None,
                "container": True,
                "inputs": [],
                "outputs": [],
                "attributes": None,
                "param_count": 0,
                "order": None,
                "note": None,
            }
        ]
        previous: str | None = None
        for i, (scope, layer, parent) in enumerate(self.layers, start=1):
            container = isinstance(layer, keras.Model)
            out = f"{scope}:0"
            rows.append(
                {
                    "node_id": i,
                    "name": scope,
                    "scope": scope,
                    "op_type": type(layer).__name__,
                    "op_class": keras_op_class(layer).value,
                    "parent": parent,
                    "container": container,
                    # Data flow of a Sequential model; a functional graph's own edges are not read.
                    "inputs": [] if container or previous is None else [previous],
                    "outputs": [] if container else [out],
                    "attributes": json.dumps({"class": f"{type(layer).__module__}.{type(layer).__qualname__}"}),
                    "param_count": int(sum(int(np.prod(w.shape)) for w in layer.weights)) if not container else 0,
                    "order": i - 1,
                    "note": None,
                }
            )
            if not container and parent == 0:
                previous = out if isinstance(model, keras.Sequential) else None
        return rows

    # -- per step -------------------------------------------------------------------------
    def _due(self) -> bool:
        return self.step % self.every == 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Observe the layer outputs on the probe batch with the weights of this step."""
        if not self._due():
            return
        _ = self.model  # on the JAX backend reading .model writes the training state back into the variables
        probe = self.probe if isinstance(self.probe, (list, tuple, dict)) else [self.probe]
        outs = self._probe_model(probe, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        rows = [
            self._row(node, "activation", "0", keras.ops.convert_to_numpy(y), seq)
            for seq, (node, y) in enumerate(zip(self._probe_nodes, outs))
        ]
        self._write(rows)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Record the weights after the update and the batch loss; advance the step."""
        _ = self.model  # synchronises the variables on the JAX backend
        if self._due() and self.weights:
            rows = []
            seq = len(self._probe_nodes)
            for node, (_, layer, _) in enumerate(self.layers, start=1):
                if isinstance(layer, keras.Model):
                    continue
                for w in layer.weights:
                    rows.append(self._row(node, "weight", w.name, keras.ops.convert_to_numpy(w.value), seq))
                    seq += 1
            self._write(rows)
        loss = self._batch_loss()
        if loss is not None:
            self.writer.log_scalar("loss", loss, step=self.step, epoch=self.epoch)
        self.step += 1

    def _batch_loss(self) -> float | None:
        """The batch loss, from the running mean's state (total and count of Keras' tracker)."""
        tracker = next((m for m in self.model.metrics if m.name == "loss"), None)
        if tracker is None or not hasattr(tracker, "total"):
            return None
        total = float(keras.ops.convert_to_numpy(tracker.total.value))
        count = float(keras.ops.convert_to_numpy(tracker.count.value))
        t0, c0 = self._loss_state
        if count < c0 or c0 == 0:  # the tracker was reset (a new epoch)
            t0 = c0 = 0.0
        self._loss_state = (total, count)
        if count <= c0:
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            return (total - t0) / (count - c0) if np.isfinite(t0) else float("nan")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Remember the epoch for the scalars."""
        self.epoch = int(epoch)
        self._loss_state = (0.0, 0.0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Validation logs (``val_*``) become phase ``eval`` scalars."""
        for name, value in (logs or {}).items():
            if name.startswith("val_"):
                self.writer.log_scalar(name[4:], float(value), step=self.step, phase="eval", epoch=self.epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Finish the trace."""
        if self.writer is not None:
            self.writer.close()

    # -- rows -----------------------------------------------------------------------------
    def _row(self, node: int, kind: str, slot: str, value: np.ndarray, seq: int) -> dict[str, Any]:
        st = tensor_stats(value, binning=self.binning)
        row = {k: st[k] for k in _STAT_KEYS}
        for k in ("hist_scheme", "hist_lo", "hist_hi", "hist_counts"):
            if k in st:
                row[k] = st[k]
        row.update(step=self.step, phase="train", node_id=node, kind=kind, slot=slot, call=0, seq=seq)
        return row

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.writer.write_records(rows)
