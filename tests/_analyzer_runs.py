"""Real PyTorch training runs, traced with TorchTracer, whose pathology is known by construction.

Shared by the analyzer tests. Every run is deterministic (seeded) and small: sklearn's
8x8 digits, MLPs of a few thousand parameters, tens of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from models import deep_mlp, digits
from torch import nn

from tracefmt.adapters.torch import TorchTracer

# Tiny tensors: one intra-op thread avoids spin-waiting when the test workers share the cores.
torch.set_num_threads(1)


def data(n_train: int = 512, n_val: int = 256) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Digits split into a training and a validation set."""
    x, y = digits()
    return (x[:n_train], y[:n_train]), (x[-n_val:], y[-n_val:])


def inject_nan(model: nn.Module, module: str, step_of: Callable[[], int], at: int) -> Any:
    """Make ``module`` output one NaN at training step ``at`` (a forward hook; returns its handle).

    Register before the tracer so the tracer's own hook sees the modified output.
    """

    def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if mod.training and step_of() == at:
            out = out.clone()
            out.view(-1)[0] = float("nan")
            return out
        return None

    return dict(model.named_modules())[module].register_forward_hook(hook)


def train(
    path: Path,
    model: nn.Module,
    *,
    steps: int = 40,
    lr: float | Callable[[int], float] = 0.05,
    optimizer: str = "sgd",
    batch: int = 64,
    n_train: int = 512,
    eval_every: int = 0,
    predictions: bool = False,
    nan_at: tuple[str, int] | None = None,
    exclude_class: int | None = None,
    seed: int = 0,
    **tracer_options: Any,
) -> Path:
    """Train ``model`` on digits under a TorchTracer and return the trace path.

    Args:
        path: Trace directory to create.
        model: The model (its output: 10 logits).
        steps: Optimizer steps.
        lr: Learning rate, or ``step -> lr``.
        optimizer: 'sgd' or 'adam'.
        batch: Minibatch size.
        n_train: Training samples (small values let the model memorise them).
        eval_every: Evaluate (phase 'eval', scalar 'val_loss') every this many steps; 0: never.
        predictions: Log eval predictions (and train predictions of the last steps).
        nan_at: ``(module name, step)``: that module outputs a NaN at that step.
        exclude_class: Leave this class out of the training set (it stays in validation).
        seed: Seed of the minibatch order.
        **tracer_options: Passed to TorchTracer (``channels``, ``weight_updates`` ...).
    """
    (xt, yt), (xv, yv) = data(n_train=n_train)
    if exclude_class is not None:
        keep = yt != exclude_class
        xt, yt = xt[keep], yt[keep]
    gen = torch.Generator().manual_seed(seed)
    lr0 = lr(0) if callable(lr) else lr
    opt = torch.optim.Adam(model.parameters(), lr=lr0) if optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=lr0)
    loss_fn = nn.CrossEntropyLoss()
    state = {"step": 0}
    handle = inject_nan(model, nan_at[0], lambda: state["step"], nan_at[1]) if nan_at else None
    options = {"channels": True, "weight_updates": True, **tracer_options}
    try:
        with TorchTracer(model, path, optimizer=opt, **options) as tr:
            for step in range(steps):
                state["step"] = step
                if callable(lr):
                    for g in opt.param_groups:
                        g["lr"] = lr(step)
                idx = torch.randint(0, len(xt), (batch,), generator=gen)
                model.train()
                out = model(xt[idx])
                loss = loss_fn(out, yt[idx])
                opt.zero_grad()
                loss.backward()
                tr.log_scalar("loss", loss)
                opt.step()
                if eval_every and (step + 1) % eval_every == 0:
                    model.eval()
                    with torch.no_grad(), tr.phase("eval"):
                        out = model(xv)
                        tr.log_scalar("val_loss", loss_fn(out, yv), step=step)
                        if predictions:
                            tr.log_predictions(yv, out)
    finally:
        if handle is not None:
            handle.remove()
    return path


def mlp(depth: int = 3, width: int = 32, activation: str = "relu", seed: int = 0) -> nn.Sequential:
    """A digits MLP from tests/models.py: layers '0' Flatten, '1','2' Linear+act, ..."""
    return deep_mlp(depth=depth, width=width, activation=activation, seed=seed)


_CACHE_DIR: Path | None = None
_BUILT: dict[str, Path] = {}


def cached(name: str, build: Callable[[Path], Path]) -> Path:
    """Build a trace once per test process (several test modules share the same runs)."""
    global _CACHE_DIR
    if name not in _BUILT:
        if _CACHE_DIR is None:
            import atexit
            import shutil
            import tempfile

            _CACHE_DIR = Path(tempfile.mkdtemp(prefix="tracefmt-analyzer-runs-"))
            atexit.register(shutil.rmtree, _CACHE_DIR, True)
        _BUILT[name] = build(_CACHE_DIR / f"{name}.trace")
    return _BUILT[name]


def healthy_mlp(path: Path) -> Path:
    """ReLU MLP, Adam 1e-2, 60 steps, evaluated every 10 steps with predictions: learns well."""
    return train(path, mlp(), steps=60, optimizer="adam", lr=1e-2, eval_every=10, predictions=True)


def lr_jump(path: Path) -> Path:
    """SGD at a sound 0.5 for 15 steps, then a learning rate of 50 from step 15 on."""
    return train(path, mlp(), steps=30, lr=lambda s: 0.5 if s < LR_JUMP_STEP else 50.0)


#: Step from which :func:`lr_jump` uses the far-too-high learning rate.
LR_JUMP_STEP = 15


def memorise(path: Path) -> Path:
    """A wide MLP memorising 32 training samples (Adam 1e-2, 150 steps), validated on 256 others."""
    return train(path, mlp(depth=2, width=128), n_train=32, batch=32, steps=150, optimizer="adam", lr=1e-2, eval_every=10, channels=False, weight_updates=False)
