"""Overhead of FlaxTracer on CPU: traced vs untraced training step, same process, same model.

Both steps are jitted NNX steps (loss, grads, optax update); the traced one also computes
every record's statistics on the device and writes them. Prints CPU and wall time per
step and their ratio, for a small CNN and an MLP.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tracefmt.adapters.jax import FlaxTracer

STEPS = int(os.environ.get("BENCH_STEPS", "30"))


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 16, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.conv2(x))
        return self.head(x.mean(axis=(1, 2)))


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(256, 256, rngs=rngs) for _ in range(4)])
        self.head = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return self.head(x)


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def timed(step, x, y):
    jax.block_until_ready(step(x, y))  # compile
    c, t = time.process_time(), time.perf_counter()
    for _ in range(STEPS):
        out = step(x, y)
    jax.block_until_ready(out)
    return (time.process_time() - c) / STEPS, (time.perf_counter() - t) / STEPS


def bench(name, make, x, y):
    model = make(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(1e-3), wrt=nnx.Param)

    @nnx.jit
    def plain(model, opt, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    base_cpu, base_wall = timed(lambda x, y: plain(model, opt, x, y), x, y)
    root = tempfile.mkdtemp()
    try:
        model2 = make(nnx.Rngs(0))
        opt2 = nnx.Optimizer(model2, optax.sgd(1e-3), wrt=nnx.Param)
        with FlaxTracer(model2, root + "/t") as tracer:
            traced_cpu, traced_wall = timed(tracer.train_step(loss_fn, opt2), x, y)
    finally:
        shutil.rmtree(root)
    print(
        f"{name:5s} untraced {base_cpu * 1e3:8.2f} ms cpu {base_wall * 1e3:8.2f} ms wall | traced {traced_cpu * 1e3:8.2f} ms cpu {traced_wall * 1e3:8.2f} ms wall | ratio cpu {traced_cpu / base_cpu:5.2f}x wall {traced_wall / base_wall:5.2f}x"
    )


if __name__ == "__main__":
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {STEPS} steps, load {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    bench("cnn", CNN, jnp.asarray(rng.normal(size=(32, 32, 32, 3)), jnp.float32), jnp.asarray(rng.integers(0, 10, 32)))
    bench("mlp", MLP, jnp.asarray(rng.normal(size=(64, 256)), jnp.float32), jnp.asarray(rng.integers(0, 10, 64)))
