"""One small MLP and three pathologies, trained in PyTorch, JAX/Flax and Keras.

The MLP is ``fc1 -> act1 (ReLU) -> fc2 -> act2 (ReLU) -> head`` with the same layer
names in every framework, trained on the same generated data with SGD. A pathology is
made by construction at a named layer and step:

- ``dead``: fc2's bias shifted to -100 before training, so act2 outputs only zeros;
- ``nan``: a NaN written into fc2's bias just before step ``NAN_STEP``;
- ``lr``: the learning rate jumps from ``LR`` to ``LR_EXPLODED`` at step ``LR_STEP``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

STEPS = 10
BATCH = 32
NAN_STEP = 4
LR_STEP = 5
LR = 0.05
LR_EXPLODED = 1e6
DIMS = (8, 16, 16, 3)


def data() -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: Gaussian inputs, labels from a fixed linear rule."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, DIMS[0])).astype(np.float32)
    y = (x @ rng.normal(size=(DIMS[0], DIMS[-1]))).argmax(axis=1).astype(np.int64)
    return x, y


def lr_at(step: int, pathology: str) -> float:
    return LR_EXPLODED if pathology == "lr" and step >= LR_STEP else LR


def run_torch(path: Path, pathology: str) -> Path:
    import torch
    from torch import nn

    from tracefmt.adapters.torch import TorchTracer

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(DIMS[0], DIMS[1]))
    model.add_module("act1", nn.ReLU())
    model.add_module("fc2", nn.Linear(DIMS[1], DIMS[2]))
    model.add_module("act2", nn.ReLU())
    model.add_module("head", nn.Linear(DIMS[2], DIMS[3]))
    if pathology == "dead":
        with torch.no_grad():
            model.fc2.bias.fill_(-100.0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = (torch.from_numpy(a) for a in data())
    with TorchTracer(model, path, optimizer=opt, weight_updates=True) as tracer:
        for step in range(STEPS):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, pathology)
            if pathology == "nan" and step == NAN_STEP:
                with torch.no_grad():
                    model.fc2.bias[0] = float("nan")
            loss = nn.functional.cross_entropy(model(x), y)
            tracer.log_scalar("loss", loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return path


def run_jax(path: Path, pathology: str) -> Path:
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from tracefmt.adapters.jax import FlaxTracer

    class ReLU(nnx.Module):
        def __call__(self, x):
            return nnx.relu(x)

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.fc1 = nnx.Linear(DIMS[0], DIMS[1], rngs=rngs)
            self.act1 = ReLU()
            self.fc2 = nnx.Linear(DIMS[1], DIMS[2], rngs=rngs)
            self.act2 = ReLU()
            self.head = nnx.Linear(DIMS[2], DIMS[3], rngs=rngs)

        def __call__(self, x):
            return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    model = MLP(nnx.Rngs(0))
    if pathology == "dead":
        model.fc2.bias[...] = jnp.full(DIMS[2], -100.0)
    schedule = optax.piecewise_constant_schedule(LR, {LR_STEP: LR_EXPLODED / LR} if pathology == "lr" else {})
    opt = nnx.Optimizer(model, optax.sgd(schedule), wrt=nnx.Param)
    x, y = (jnp.asarray(a) for a in data())

    def loss_fn(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    with FlaxTracer(model, path) as tracer:
        step = tracer.train_step(loss_fn, opt)
        for i in range(STEPS):
            if pathology == "nan" and i == NAN_STEP:
                model.fc2.bias[...] = model.fc2.bias[...].at[0].set(jnp.nan)
            step(x, y)
    return path


def run_keras(path: Path, pathology: str) -> Path:
    import keras

    from tracefmt.adapters.keras import TracefmtCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((DIMS[0],)),
            keras.layers.Dense(DIMS[1], name="fc1"),
            keras.layers.ReLU(name="act1"),
            keras.layers.Dense(DIMS[2], name="fc2"),
            keras.layers.ReLU(name="act2"),
            keras.layers.Dense(DIMS[3], name="head"),
        ],
        name="mlp",
    )
    fc2 = model.get_layer("fc2")
    if pathology == "dead":
        fc2.bias.assign(np.full(DIMS[2], -100.0, np.float32))
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([LR_STEP - 1], [LR, LR_EXPLODED]) if pathology == "lr" else LR
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class InjectNaN(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if pathology == "nan" and batch == NAN_STEP:
                bias = keras.ops.convert_to_numpy(self.model.get_layer("fc2").bias.value).copy()
                bias[0] = np.nan
                self.model.get_layer("fc2").bias.assign(bias)

    x, y = data()
    xs, ys = np.concatenate([x] * STEPS), np.concatenate([y] * STEPS)
    model.fit(xs, ys, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[InjectNaN(), TracefmtCallback(path, probe=x)])
    return path


RUNNERS = {"torch": run_torch, "jax": run_jax, "keras": run_keras}
