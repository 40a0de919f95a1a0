"""Lightning and Hugging Face callbacks, and TorchTracer with a wrapped optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracefmt
from tracefmt.adapters.torch import TorchTracer
from tracefmt.errors import UsageError


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_accelerated_optimizer_is_unwrapped(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from accelerate.optimizer import AcceleratedOptimizer

    model = _mlp()
    accelerator = accelerate.Accelerator(cpu=True)
    wrapped = accelerator.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(wrapped, AcceleratedOptimizer)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    with TorchTracer(model, tmp_path / "t", optimizer=wrapped) as tracer:
        for _ in range(3):
            nn.functional.cross_entropy(model(x), y).backward()
            wrapped.step()
            wrapped.zero_grad()
    assert tracer.optimizer is wrapped.optimizer
    steps = tracefmt.open(str(tmp_path / "t")).records.to_table(columns=["step"]).column("step").to_pylist()
    assert sorted(set(steps)) == [0, 1, 2]


class _Broken(torch.optim.SGD):
    def register_step_pre_hook(self, hook):
        raise RuntimeError("the original failure")


def test_cleanup_error_never_hides_the_original(tmp_path):
    model = _mlp()
    tracer = TorchTracer(model, tmp_path / "t", optimizer=_Broken(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="the original failure"):
        tracer.start()
    # Every hook is gone and the trace is closed and readable.
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model.modules())
    assert tracefmt.validate(str(tmp_path / "t")).valid


# -- Lightning ---------------------------------------------------------------------------------
def _lightning_module():
    L = pytest.importorskip("lightning.pytorch")

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_acc", (self(x).argmax(1) == y).float().mean(), on_step=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            return {"y_true": y, "y_pred": logits}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return L, Classifier()


def _loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=8), torch.utils.data.DataLoader(ds, batch_size=16)


@pytest.fixture(scope="module")
def lightning_trace(tmp_path_factory):
    L, module = _lightning_module()
    from tracefmt.adapters.lightning import TracefmtCallback

    path = tmp_path_factory.mktemp("pl") / "run.trace"
    train, val = _loaders()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[TracefmtCallback(path, weight_updates=True)],
    )
    trainer.fit(module, train, val)
    return tracefmt.open(str(path)), trainer


def test_lightning_records_train_and_eval(lightning_trace):
    trace, trainer = lightning_trace
    assert tracefmt.validate(trace.path).valid
    rec = trace.records.to_table(columns=["step", "phase", "kind"]).to_pylist()
    train_steps = sorted({r["step"] for r in rec if r["phase"] == "train"})
    assert train_steps == list(range(trainer.global_step)) == list(range(8))
    kinds = {r["kind"] for r in rec if r["phase"] == "train"}
    assert {"activation", "gradient", "weight", "weight_grad", "weight_update"} <= kinds
    eval_rows = [r for r in rec if r["phase"] == "eval"]
    assert {r["kind"] for r in eval_rows} == {"activation"}
    assert sorted({r["step"] for r in eval_rows}) == [4, 8]  # after each epoch's 4 steps
    names = trace.nodes.column("name").to_pylist()
    assert "net.1" in names


def test_lightning_scalars_and_predictions(lightning_trace):
    trace, _ = lightning_trace
    sc = trace.scalars.to_pylist()
    losses = [r for r in sc if r["name"] == "loss" and r["phase"] == "train"]
    assert [r["step"] for r in losses] == list(range(8))
    assert {r["name"] for r in sc if r["phase"] == "train"} >= {"loss", "train_acc"}
    assert [r["step"] for r in sc if r["phase"] == "eval" and r["name"] == "loss"] == [4, 8]
    preds = trace.predictions.to_pylist()
    assert len(preds) == 2 * 32 and {r["phase"] for r in preds} == {"eval"}


def test_lightning_rank_from_the_trainer(tmp_path):
    L, module = _lightning_module()
    from tracefmt.adapters.lightning import TracefmtCallback

    with pytest.raises(UsageError, match="rank"):
        TracefmtCallback(tmp_path / "x", rank=1)
    callback = TracefmtCallback(tmp_path / "r.trace")
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback],
    )
    trainer.fit(module, _loaders()[0])
    assert (callback.tracer.rank, callback.tracer.world_size) == (trainer.global_rank, trainer.world_size) == (0, 1)
    trace = tracefmt.open(str(tmp_path / "r.trace"))
    assert set(trace.records.to_table(columns=["rank"]).column("rank").to_pylist()) == {0}
    assert trace.manifest["world_size"] == 1


# -- Hugging Face ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_trace(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from tracefmt.adapters.huggingface import TracefmtCallback

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(cfg)

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n):
            g = torch.Generator().manual_seed(n)
            self.x = torch.randint(0, 50, (n, 8), generator=g)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.x[i, 0] % 3}

    root = tmp_path_factory.mktemp("hf")
    args = transformers.TrainingArguments(
        output_dir=str(root / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(32), eval_dataset=Tokens(16), callbacks=[TracefmtCallback(root / "run.trace")]
    )
    trainer.train()
    return tracefmt.open(str(root / "run.trace")), trainer


def test_huggingface_trainer_traced(hf_trace):
    trace, trainer = hf_trace
    assert tracefmt.validate(trace.path).valid
    rec = trace.records.to_table(columns=["step", "phase", "kind"]).to_pylist()
    assert sorted({r["step"] for r in rec if r["phase"] == "train"}) == [0, 1, 2, 3]
    assert {"gradient", "weight_grad"} <= {r["kind"] for r in rec}
    assert sorted({r["step"] for r in rec if r["phase"] == "eval"}) == [2, 4]
    assert {r["kind"] for r in rec if r["phase"] == "eval"} == {"activation"}
    op_classes = dict(zip(trace.nodes.column("name").to_pylist(), trace.nodes.column("op_class").to_pylist()))
    assert op_classes["bert.encoder.layer.0.attention"] == "attention"
    sc = trace.scalars.to_pylist()
    train_loss = {r["step"]: r["value"] for r in sc if r["name"] == "loss" and r["phase"] == "train"}
    logged = {h["step"] - 1: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert train_loss == pytest.approx(logged)
    assert [r["step"] for r in sc if r["name"] == "loss" and r["phase"] == "eval"] == [2, 4]
    assert not [r for r in sc if r["name"].endswith("runtime")]
    preds = trace.predictions.to_pylist()
    assert len(preds) == 2 * 16 and {r["phase"] for r in preds} == {"eval"}
