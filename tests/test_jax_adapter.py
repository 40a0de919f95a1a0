"""The JAX/Flax adapter on a CNN and a small transformer trained on generated data."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import tracefmt  # noqa: E402
from tracefmt.adapters.jax import FlaxTracer  # noqa: E402
from tracefmt.adapters.jax.stats import StatRows  # noqa: E402
from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning  # noqa: E402
from tracefmt.stats import tensor_stats  # noqa: E402

LR = 0.1


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        return self.head(x.mean(axis=(1, 2)))


class Block(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs) -> None:
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=d, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 2 * d, rngs=rngs)
        self.down = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class TinyTransformer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, vocab: int = 20, d: int = 16) -> None:
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.blocks = nnx.List([Block(d, rngs) for _ in range(2)])
        self.out = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def _xent(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 8))
    model = CNN(nnx.Rngs(0))
    initial = nnx.clone(model)
    opt = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
    path = tmp_path_factory.mktemp("jax") / "cnn.trace"
    with FlaxTracer(model, path) as tracer:
        step = tracer.train_step(_xent, opt)
        losses = [float(step(x, y)) for _ in range(3)]
        evaluate = tracer.eval_step(lambda m, x: m(x))
        logits = evaluate(x)
        tracer.log_predictions(y, logits)
    return tracefmt.open(str(path)), model, initial, x, y, losses


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 20, (4, 6)))
    target = (tokens + 1) % 20  # a learnable rule: the next token id
    model = TinyTransformer(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    path = tmp_path_factory.mktemp("jax") / "transformer.trace"
    with FlaxTracer(model, path) as tracer:
        step = tracer.train_step(_xent, opt)
        losses = [float(step(tokens, target)) for _ in range(3)]
    return tracefmt.open(str(path)), losses


def _nodes(trace):
    t = trace.nodes.to_pylist()
    return {r["name"]: r for r in t}


def _records(trace, **where):
    rows = trace.records.to_table().to_pylist()
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def test_cnn_trace_is_valid_with_op_classes(cnn_run):
    trace, *_ = cnn_run
    assert tracefmt.validate(trace.path).valid
    nodes = _nodes(trace)
    assert {n: nodes[n]["op_class"] for n in ("CNN", "conv1", "conv2", "head", "relu_0", "relu_1")} == {
        "CNN": "container", "conv1": "conv", "conv2": "conv", "head": "linear", "relu_0": "rectifier", "relu_1": "rectifier",
    }  # fmt: skip
    assert nodes["relu_0"]["inputs"] == ["conv1:0"] and nodes["conv2"]["inputs"] == ["relu_0:0"]
    assert [nodes[n]["order"] for n in ("conv1", "relu_0", "conv2", "relu_1", "head")] == [0, 1, 2, 3, 4]
    assert nodes["conv1"]["param_count"] == 3 * 3 * 4 + 4


def test_cnn_records_every_kind_every_step(cnn_run):
    trace, *_ = cnn_run
    rows = _records(trace, phase="train")
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], {}).setdefault(r["kind"], 0)
        by_step[r["step"]][r["kind"]] += 1
    assert by_step == {s: {"activation": 5, "gradient": 5, "weight_grad": 6, "weight_update": 6, "weight": 6} for s in range(3)}
    scalars = [(r["step"], r["name"]) for r in trace.scalars.to_pylist()]
    assert scalars == [(0, "loss"), (1, "loss"), (2, "loss")]
    assert len(trace.predictions.to_pylist()) == 8


def test_cnn_activations_agree_with_the_reference(cnn_run):
    trace, model, _, x, _, _ = cnn_run
    nodes = _nodes(trace)
    expected = {"conv1": model.conv1(x), "relu_0": jax.nn.relu(model.conv1(x)), "head": model(x)}
    for name, value in expected.items():
        (rec,) = _records(trace, phase="eval", node_id=nodes[name]["node_id"])
        ref = tensor_stats(np.asarray(value))
        for key in ("numel", "nan_count", "inf_count", "zero_count", "pos_count", "hist_counts", "shape", "dtype"):
            assert rec[key] == ref[key], (name, key)
        for key in ("mean", "std", "min", "max", "abs_mean", "l2"):
            assert rec[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (name, key)


def test_cnn_gradients_and_updates_are_right(cnn_run):
    trace, _, initial, x, y, _ = cnn_run
    nodes = _nodes(trace)
    # dL/dlogits of a mean cross-entropy: (softmax - onehot) / N, at the initial weights.
    logits = initial(x)
    expected = (jax.nn.softmax(logits) - jax.nn.one_hot(y, 3)) / len(y)
    (g,) = _records(trace, step=0, kind="gradient", node_id=nodes["head"]["node_id"])
    assert g["l2"] == pytest.approx(float(jnp.linalg.norm(expected)), rel=1e-5)
    # The gradient of a rectifier's input is zero where it output zero.
    (g_conv,) = _records(trace, step=0, kind="gradient", node_id=nodes["conv1"]["node_id"])
    (a_relu,) = _records(trace, step=0, kind="activation", node_id=nodes["relu_0"]["node_id"])
    assert g_conv["zero_count"] >= a_relu["zero_count"] > 0
    # SGD: update = -lr * grad, exactly the weight gradient scaled.
    for grad in _records(trace, step=1, kind="weight_grad"):
        (upd,) = _records(trace, step=1, kind="weight_update", node_id=grad["node_id"], slot=grad["slot"])
        assert upd["l2"] == pytest.approx(LR * grad["l2"], rel=1e-4)
    (w,) = _records(trace, step=2, kind="weight", node_id=nodes["head"]["node_id"], slot="kernel")
    assert w["l2"] == pytest.approx(float(jnp.linalg.norm(cnn_run[1].head.kernel[...])), rel=1e-5)


def test_instrumentation_is_removed(cnn_run):
    assert nnx.relu is jax.nn.relu and not hasattr(nnx.Conv.__call__, "_tracefmt_original")
    trace, model, _, x, _, _ = cnn_run
    assert model(x).shape == (8, 3)


def test_transformer_trace(transformer_run):
    trace, losses = transformer_run
    assert tracefmt.validate(trace.path).valid
    assert losses[-1] < losses[0]
    nodes = _nodes(trace)
    classes = {n: r["op_class"] for n, r in nodes.items()}
    assert classes["embed"] == "embedding" and classes["blocks.0.attn"] == "attention"
    assert classes["blocks.1.norm2"] == "norm" and classes["blocks.0.up"] == "linear"
    assert classes["blocks.0.gelu_0"] == "smooth-activation" and nodes["blocks.0.gelu_0"]["parent"] == nodes["blocks.0"]["node_id"]
    assert classes["blocks"] == "container" and classes["blocks.0"] == "container"
    # As in PyTorch, leaf modules are observed: the attention's projections, not the block itself.
    acts = _records(trace, step=0, kind="activation")
    observed = {trace.nodes.column("name")[r["node_id"]].as_py() for r in acts}
    assert {"blocks.0.attn.query", "blocks.0.attn.out", "blocks.1.down", "out", "embed"} <= observed
    assert "blocks.0.attn" not in observed and nodes["blocks.0.attn"]["container"]
    grads = _records(trace, step=0, kind="gradient")
    assert len(grads) == len(acts) and all(r["nan_count"] == 0 for r in grads)


@pytest.mark.parametrize("binning", [DEFAULT_BINNING, FASTAI_BINNING, Binning("linear", -3.0, 3.0, 16), None])
def test_device_statistics_equal_the_reference(binning):
    rng = np.random.default_rng(2)
    a = (rng.normal(size=(64, 33)) * 10.0 ** rng.integers(-8, 8, size=(64, 33))).astype(np.float32)
    a[0, :5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    edges = DEFAULT_BINNING.magnitude_edges().astype(np.float32)
    b = np.concatenate([edges, -edges, np.nextafter(edges, np.float32(0))])  # values on the bin edges
    arrays = [
        a,
        b,
        np.zeros((0,), np.float32),
        np.full(7, np.nan, np.float32),
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.float32(3e38) * np.ones(4, np.float32),
    ]
    stats = StatRows(binning)
    counts, moments = jax.jit(lambda *xs: stats.rows(list(xs)))(*arrays)
    cols = stats.decode(np.asarray(counts), np.asarray(moments))
    for i, arr in enumerate(arrays):
        ref = tensor_stats(arr, binning=binning)
        for key in ("nan_count", "inf_count", "zero_count", "pos_count"):
            assert cols[key][i] == ref[key], (i, key)
        if binning is not None:
            assert cols["hist_counts"][i].tolist() == ref["hist_counts"], i
        for key in ("mean", "std", "min", "max", "abs_mean", "l2"):
            if ref[key] is None:
                assert np.isnan(cols[key][i]), (i, key)
            else:
                assert cols[key][i] == pytest.approx(ref[key], rel=2e-5, abs=1e-30), (i, key)
