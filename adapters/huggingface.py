"""Hugging Face adapter: a ``TrainerCallback`` that traces ``transformers.Trainer`` (see docs/huggingface.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from tracefmt.errors import UsageError

from .torch import TorchTracer

__all__ = ["TracefmtCallback"]

# Throughput logs of the Trainer: facts about the machine, not the model.
_TIMINGS = ("runtime", "samples_per_second", "steps_per_second")


class TracefmtCallback(TrainerCallback):
    """Trace a ``transformers.Trainer`` run into a tracefmt trace.

    Wraps a :class:`~tracefmt.adapters.torch.TorchTracer` on the Trainer's model, started at
    ``on_train_begin`` with the Trainer's optimizer (accelerate's ``AcceleratedOptimizer``
    is unwrapped: steps are the real optimizer's ``step()`` calls) and the process's rank
    (``args.process_index`` of ``args.world_size``). Forward passes with the model in eval
    mode (``Trainer.evaluate``) record in phase ``eval``; for a model called with
    ``labels`` whose output has ``logits``, eval passes also log predictions (argmax) for
    the confusion analyzer. The Trainer's logs become scalars: training logs (``loss``,
    ``learning_rate``, ``grad_norm`` ...) in phase train, ``eval_*`` logs in phase eval
    without the prefix.

    Args:
        path: The trace directory to create.
        **tracer_options: Keyword options of :class:`TorchTracer`; ``optimizer``, ``rank``
            and ``world_size`` are taken from the Trainer.
    """

    def __init__(self, path: str | Path, **tracer_options: Any) -> None:
        taken = {"optimizer", "rank", "world_size"} & set(tracer_options)
        if taken:
            raise UsageError(f"TracefmtCallback sets {', '.join(sorted(taken))} from the Trainer; remove them from the options")
        self.path = Path(path)
        self.tracer_options = tracer_options
        self.tracer: TorchTracer | None = None
        self._handles: list[Any] = []

    def _running(self) -> bool:
        return self.tracer is not None and self.tracer._started and not self.tracer._closed

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        """Start the tracer on the model, counting the optimizer's steps."""
        if self.tracer is not None:
            return
        if model is None:
            raise UsageError("TracefmtCallback: the Trainer passed no model to on_train_begin")
        self.tracer = TorchTracer(
            model, self.path, optimizer=optimizer, rank=int(args.process_index), world_size=int(args.world_size), **self.tracer_options
        )
        self.tracer.start()
        self._handles = [
            model.register_forward_pre_hook(self._follow_mode),
            model.register_forward_hook(self._predictions, with_kwargs=True),
        ]

    def _follow_mode(self, module: torch.nn.Module, args: Any) -> None:
        # The Trainer has no "evaluation begins" event; the model's mode says it.
        if self._running():
            want = "train" if module.training else "eval"
            if self.tracer.current_phase != want:
                self.tracer.set_phase(want)

    def _predictions(self, module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        if not self._running() or module.training:
            return
        labels = kwargs.get("labels")
        logits = getattr(output, "logits", None)
        if isinstance(labels, torch.Tensor) and isinstance(logits, torch.Tensor) and logits.shape[:-1] == labels.shape:
            self.tracer.log_predictions(labels, logits)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Tell the tracer the epoch."""
        if self._running() and state.epoch is not None:
            self.tracer.epoch = int(state.epoch)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        """Trainer logs become scalars (``eval_*`` in phase eval)."""
        if not self._running() or not logs:
            return
        step = int(state.global_step)
        evaluation = any(k.startswith("eval_") for k in logs)
        values = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith(_TIMINGS)}
        if evaluation:
            with self.tracer.phase("eval"):
                for k, v in values.items():
                    if k.startswith("eval_"):
                        self.tracer.log_scalar(k[5:], float(v), step=step)
        else:
            # The trainer's logged loss averages the steps since the last log, at the last one.
            with self.tracer.phase("train"):
                for k, v in values.items():
                    if k not in ("epoch", "total_flos"):
                        self.tracer.log_scalar(k, float(v), step=max(step - 1, 0))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Finish the trace."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.tracer is not None:
            self.tracer.close()
