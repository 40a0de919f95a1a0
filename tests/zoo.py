"""A zoo of real architectures: ``transformers`` configs with random weights, plus a GRU/LSTM.

Each entry builds a tiny model (hidden 16-64, 1-2 layers, small images and sequences)
and draws batches from a generated task whose target is learnable (the label is written
into the input), so a short run with Adam makes the loss fall. No weights are downloaded.

Shared by the healthy-zoo tests, the pathology tests and anything else that needs real
architectures: :data:`ZOO` maps a name to a :class:`ZooModel`; :func:`train_zoo` trains
one under a :class:`~tracefmt.adapters.torch.TorchTracer` with its defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

torch.set_num_threads(1)

CLASSES = 4
VOCAB = 48
SEQ = 12
IMAGE = 32
BATCH = 16


@dataclass(frozen=True)
class ZooModel:
    """One zoo architecture.

    Attributes:
        name: Zoo name.
        family: Architecture family ('cnn', 'vision-transformer', 'encoder', 'decoder',
            'encoder-decoder', 'audio', 'recurrent').
        build: Seeded model constructor.
        batch: ``generator -> batch`` (a dict of model inputs; ``labels`` included).
        loss: ``(model, batch) -> scalar loss``.
        lr: Adam learning rate of a healthy run.
    """

    name: str
    family: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], dict[str, torch.Tensor]]
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    lr: float = 3e-3


def _hf_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return make()

    return build


# -- generated tasks (the label is in the input, so the loss can fall) ----------------------
_TEMPLATES: dict[tuple, torch.Tensor] = {}


def _template(shape: tuple[int, ...]) -> torch.Tensor:
    if shape not in _TEMPLATES:
        _TEMPLATES[shape] = torch.randn((CLASSES, *shape), generator=torch.Generator().manual_seed(123))
    return _TEMPLATES[shape]


def images(gen: torch.Generator, size: int = IMAGE, channels: int = 3) -> dict[str, torch.Tensor]:
    """Noise images plus one of four fixed class patterns; the label names the pattern."""
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    x = torch.randn((BATCH, channels, size, size), generator=gen) + _template((channels, size, size))[y]
    return {"pixel_values": x, "labels": y}


def tokens_classify(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tokens; the first token names the label."""
    x = torch.randint(4, VOCAB, (BATCH, SEQ), generator=gen)
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    x[:, 0] = 4 + y
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": y}


def counting(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Sequences that count up by one from a random start: the next token is predictable."""
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=gen)
    x = (start + torch.arange(SEQ)) % VOCAB
    return {"input_ids": x, "labels": x}


def copy_task(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Encoder-decoder: the target is the input, a counting sequence (each token predicts the next)."""
    start = torch.randint(3, VOCAB, (BATCH, 1), generator=gen)
    x = 3 + (start - 3 + torch.arange(SEQ)) % (VOCAB - 3)
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


def spectrogram(gen: torch.Generator, mels: int = 16, frames: int = 32) -> dict[str, torch.Tensor]:
    """Log-mel-like features with a class pattern; the decoder writes the class token twice."""
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    x = torch.randn((BATCH, mels, frames), generator=gen) + _template((mels, frames))[y]
    labels = torch.stack([3 + y, 3 + y], dim=1)
    return {"input_features": x, "labels": labels}


def waveform(gen: torch.Generator, samples: int = 800) -> dict[str, torch.Tensor]:
    """Noisy sine waves whose frequency names the class."""
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    t = torch.arange(samples, dtype=torch.float32) / samples
    x = torch.sin(2 * math.pi * (4 + 6 * y[:, None].float()) * t) + 0.3 * torch.randn((BATCH, samples), generator=gen)
    return {"input_values": x, "labels": y}


# -- architectures ----------------------------------------------------------------------
def _tf() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def resnet() -> nn.Module:
    """ResNet (BatchNorm, residual, ReLU), two stages."""
    t = _tf()
    return t.ResNetForImageClassification(
        t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=CLASSES)
    )


def convnext() -> nn.Module:
    """ConvNeXt (LayerScale at 1e-6, stochastic depth, GELU, LayerNorm)."""
    t = _tf()
    return t.ConvNextForImageClassification(
        t.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, drop_path_rate=0.1, num_labels=CLASSES)
    )


def efficientnet() -> nn.Module:
    """EfficientNet (depthwise conv, squeeze-excitation, SiLU, BatchNorm, stochastic depth)."""
    t = _tf()
    cfg = t.EfficientNetConfig(
        image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=CLASSES,
        kernel_sizes=[3, 3], in_channels=[32, 16], out_channels=[16, 24], depthwise_padding=[], strides=[1, 2],
        num_block_repeats=[1, 1], expand_ratios=[1, 6], drop_connect_rate=0.1,
    )  # fmt: skip
    model = t.EfficientNetForImageClassification(cfg)
    # transformers draws EfficientNet's BatchNorm scales from N(0, 0.02) (its checkpoints are
    # pretrained): through a stack of them a random network's signal collapses and no
    # gradient reaches the input side (the gradients analyzer says so). PyTorch's own
    # initialisation (scale 1) is the healthy random start.
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_parameters()
    return model


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 (inverted residuals, ReLU6, BatchNorm)."""
    t = _tf()
    return t.MobileNetV2ForImageClassification(
        t.MobileNetV2Config(image_size=IMAGE, depth_multiplier=0.25, finegrained_output=False, num_labels=CLASSES)
    )


def regnet() -> nn.Module:
    """RegNet (grouped convolutions, squeeze-excitation, ReLU)."""
    t = _tf()
    return t.RegNetForImageClassification(
        t.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, layer_type="y", num_labels=CLASSES)
    )


def swin() -> nn.Module:
    """Swin Transformer (windowed attention, relative position bias, stochastic depth)."""
    t = _tf()
    cfg = t.SwinConfig(
        image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, drop_path_rate=0.1, num_labels=CLASSES
    )
    return t.SwinForImageClassification(cfg)


def vit() -> nn.Module:
    """ViT (class token, position embedding, pre-norm attention)."""
    t = _tf()
    cfg = t.ViTConfig(
        image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=CLASSES
    )
    return t.ViTForImageClassification(cfg)


def bert(**overrides: Any) -> nn.Module:
    """BERT encoder (post-norm attention, GELU, pooler with tanh); ``overrides`` go to its config."""
    t = _tf()
    cfg = t.BertConfig(
        **{
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
            "num_labels": CLASSES,
            **overrides,
        }
    )
    return t.BertForSequenceClassification(cfg)


def gpt2() -> nn.Module:
    """GPT-2 decoder (learned positions, tied embeddings, Conv1D projections)."""
    t = _tf()
    return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2))


def llama() -> nn.Module:
    """Llama decoder (rotary embeddings, RMSNorm, SwiGLU)."""
    t = _tf()
    cfg = t.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return t.LlamaForCausalLM(cfg)


def qwen2() -> nn.Module:
    """Qwen2 decoder (rotary embeddings, grouped-query attention with biased projections)."""
    t = _tf()
    cfg = t.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return t.Qwen2ForCausalLM(cfg)


def t5() -> nn.Module:
    """T5 encoder-decoder (relative position bias, RMS-style layer norm, ReLU feed-forward)."""
    t = _tf()
    cfg = t.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return t.T5ForConditionalGeneration(cfg)


def bart() -> nn.Module:
    """BART encoder-decoder (learned positions, post-norm, GELU)."""
    t = _tf()
    cfg = t.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    return t.BartForConditionalGeneration(cfg)


def whisper() -> nn.Module:
    """Whisper encoder-decoder on log-mel features (conv front end, sinusoidal positions)."""
    t = _tf()
    cfg = t.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0, suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    return t.WhisperForConditionalGeneration(cfg)


def wav2vec2() -> nn.Module:
    """Wav2Vec2 on raw audio (conv feature extractor with GroupNorm, positional conv with weight norm)."""
    t = _tf()
    cfg = t.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, classifier_proj_size=16, num_labels=CLASSES, mask_time_prob=0.0,
    )  # fmt: skip
    return t.Wav2Vec2ForSequenceClassification(cfg)


class RecurrentClassifier(nn.Module):
    """Embedding, an LSTM or GRU, and a linear head on the last hidden state."""

    def __init__(self, cell: str = "lstm", hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(16, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(input_ids))
        return self.head(out[:, -1])


def _rnn_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"])


def _rnn_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
    b = tokens_classify(gen)
    b["input_ids"] = b["input_ids"].flip(1)  # the label token is near the end: easy to keep
    return {"input_ids": b["input_ids"], "labels": b["labels"]}


ZOO: dict[str, ZooModel] = {
    z.name: z
    for z in (
        ZooModel("resnet", "cnn", _seeded(resnet), images, _hf_loss),
        ZooModel("convnext", "cnn", _seeded(convnext), images, _hf_loss),
        ZooModel("efficientnet", "cnn", _seeded(efficientnet), images, _hf_loss),
        ZooModel("mobilenet_v2", "cnn", _seeded(mobilenet_v2), images, _hf_loss),
        ZooModel("regnet", "cnn", _seeded(regnet), images, _hf_loss),
        ZooModel("swin", "vision-transformer", _seeded(swin), images, _hf_loss),
        ZooModel("vit", "vision-transformer", _seeded(vit), images, _hf_loss),
        ZooModel("bert", "encoder", _seeded(bert), tokens_classify, _hf_loss),
        ZooModel("gpt2", "decoder", _seeded(gpt2), counting, _hf_loss),
        ZooModel("llama", "decoder", _seeded(llama), counting, _hf_loss),
        ZooModel("qwen2", "decoder", _seeded(qwen2), counting, _hf_loss),
        ZooModel("t5", "encoder-decoder", _seeded(t5), copy_task, _hf_loss),
        ZooModel("bart", "encoder-decoder", _seeded(bart), copy_task, _hf_loss),
        ZooModel("whisper", "audio", _seeded(whisper), spectrogram, _hf_loss),
        ZooModel("wav2vec2", "audio", _seeded(wav2vec2), waveform, _hf_loss),
        ZooModel("lstm", "recurrent", _seeded(lambda: RecurrentClassifier("lstm")), _rnn_batch, _rnn_loss),
        ZooModel("gru", "recurrent", _seeded(lambda: RecurrentClassifier("gru")), _rnn_batch, _rnn_loss),
    )
}


def train_zoo(
    zoo: ZooModel,
    path: Path,
    *,
    steps: int = 30,
    lr: float | Callable[[int], float] | None = None,
    model: nn.Module | None = None,
    optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None,
    before_step: Callable[[nn.Module, int], None] | None = None,
    seed: int = 0,
    **tracer_options: Any,
) -> tuple[Path, list[float]]:
    """Train a zoo model under a TorchTracer (defaults unless ``tracer_options``); log 'loss' and 'lr'.

    Args:
        zoo: The architecture.
        path: Trace directory to create.
        steps: Optimizer steps.
        lr: Learning rate, or ``step -> lr``. Defaults to the zoo entry's.
        model: A model already built (and perhaps broken); defaults to ``zoo.build()``.
        optimizer: ``(model, lr) -> optimizer``. Defaults to Adam over every parameter.
        before_step: Called with ``(model, step)`` before each forward (to break things).
        seed: Seed of the batches.
        **tracer_options: Passed to TorchTracer.

    Returns:
        The trace path and the loss of every step.
    """
    from tracefmt.adapters.torch import TorchTracer

    model = zoo.build() if model is None else model
    schedule = lr if callable(lr) else (lambda _s, v=(zoo.lr if lr is None else lr): v)
    opt = optimizer(model, schedule(0)) if optimizer else torch.optim.Adam(model.parameters(), lr=schedule(0))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with TorchTracer(model, path, optimizer=opt, **tracer_options) as tr:
        for step in range(steps):
            if callable(lr):
                for g in opt.param_groups:
                    g["lr"] = lr(step)
            if before_step is not None:
                before_step(model, step)
            loss = zoo.loss(model, zoo.batch(gen))
            opt.zero_grad()
            loss.backward()
            tr.log_scalar("loss", loss)
            tr.log_scalar("lr", opt.param_groups[0]["lr"])
            opt.step()
            losses.append(float(loss.detach()))
    return path, losses
