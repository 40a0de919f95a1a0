"""PyTorch Lightning adapter: a ``Callback`` that traces ``Trainer.fit`` (see docs/lightning.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package name
    from pytorch_lightning import Callback  # type: ignore[no-redef]

from tracefmt.errors import UsageError

from .torch import TorchTracer

__all__ = ["TracefmtCallback", "prediction_pair"]


def prediction_pair(outputs: Any) -> tuple[Any, Any] | None:
    """``(y_true, y_pred)`` from a step's return value, when it has them.

    A mapping with ``y_true`` and ``y_pred`` (also ``target``/``preds``, ``labels``/``logits``)
    qualifies; scores ``(N, C)`` are reduced by argmax when logged.
    """
    if not isinstance(outputs, dict):
        return None
    for true_key, pred_key in (("y_true", "y_pred"), ("target", "preds"), ("labels", "logits")):
        if true_key in outputs and pred_key in outputs:
            return outputs[true_key], outputs[pred_key]
    return None


class TracefmtCallback(Callback):
    """Trace a LightningModule's training and validation into a tracefmt trace.

    Wraps a :class:`~tracefmt.adapters.torch.TorchTracer` on the LightningModule, started
    at ``fit`` start with the trainer's first optimizer (steps are its ``step()`` calls) and
    the trainer's global rank and world size (under DDP every rank writes its own
    partition of the same trace; rank 0 writes the manifest and nodes). Validation runs
    record in phase ``eval``. Logged metrics (``self.log``) become scalars: ``on_step``
    values at each training batch, validation values at the end of validation (phase
    ``eval``). A validation step returning a mapping with ``y_true`` and ``y_pred`` (see
    :func:`prediction_pair`) logs predictions for the confusion analyzer.

    Args:
        path: The trace directory to create.
        **tracer_options: Keyword options of :class:`TorchTracer` (``every``, ``modules``,
            ``weight_updates``, ``channels`` ...); ``optimizer``, ``rank`` and ``world_size``
            are taken from the trainer.
    """

    def __init__(self, path: str | Path, **tracer_options: Any) -> None:
        super().__init__()
        taken = {"optimizer", "rank", "world_size"} & set(tracer_options)
        if taken:
            raise UsageError(f"TracefmtCallback sets {', '.join(sorted(taken))} from the trainer; remove them from the options")
        self.path = Path(path)
        self.tracer_options = tracer_options
        self.tracer: TorchTracer | None = None

    # -- fit lifecycle -------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the tracer on the LightningModule."""
        optimizers = getattr(trainer, "optimizers", None) or [None]
        self.tracer = TorchTracer(
            pl_module, self.path, optimizer=optimizers[0], rank=trainer.global_rank, world_size=trainer.world_size, **self.tracer_options
        )
        self.tracer.start()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Finish the trace."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Finish the trace (what was recorded stays readable) when training fails."""
        self._close()

    def _close(self) -> None:
        if self.tracer is not None:
            self.tracer.close()

    def _running(self) -> bool:
        return self.tracer is not None and self.tracer._started and not self.tracer._closed

    # -- training ------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Tell the tracer the epoch."""
        if self._running():
            self.tracer.epoch = int(trainer.current_epoch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the step's loss and its ``on_step`` metrics."""
        if not self._running():
            return
        step = max(self.tracer.step_count - 1, 0)  # the optimizer step of this batch has counted already
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.tracer.log_scalar("loss", loss, step=step)
        for name, value in trainer.callback_metrics.items():
            if name == "loss" or name.endswith("_epoch") or name.startswith("val"):
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                self.tracer.log_scalar(name.removesuffix("_step"), value, step=step)

    # -- validation ----------------------------------------------------------------------
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Record in phase eval while validating."""
        if self._running():
            self.tracer.set_phase("eval")

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Log predictions when the validation step returned them."""
        pair = prediction_pair(outputs) if self._running() else None
        if pair is not None:
            self.tracer.log_predictions(*pair)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the validation metrics (phase eval), then record training again."""
        if not self._running():
            return
        for name, value in trainer.callback_metrics.items():
            if name.startswith("val") and isinstance(value, torch.Tensor) and value.numel() == 1:
                self.tracer.log_scalar(name.removeprefix("val_").removesuffix("_epoch"), value)
        self.tracer.set_phase("train")
