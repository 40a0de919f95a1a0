"""Tiny random-initialised ``transformers`` architectures for export tests (no download).

Each entry builds a model whose forward takes positional tensors and returns one tensor
(logits or the last hidden state), plus the example inputs with their ONNX input names.
Sizes are tiny (hidden 16-32, one or two layers, short sequences, small images) so that
exporting with both exporters stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ZooModel", "ZOO", "build"]


@dataclass
class ZooModel:
    """A built zoo model with its example inputs."""

    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]


class _Logits(nn.Module):
    """Wrap a ``transformers`` model so that forward takes positional tensors and returns one tensor."""

    def __init__(self, inner: nn.Module, keys: list[str], output: str) -> None:
        super().__init__()
        self.inner = inner
        self.keys = keys
        self.output = output

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.inner(**dict(zip(self.keys, args)))
        return out[self.output]


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def _ids(vocab: int, shape: tuple[int, int] = (1, 6), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _image(channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _text(name: str, config, cls_name: str, output: str = "logits") -> ZooModel:  # type: ignore[no-untyped-def]
    import transformers

    config._attn_implementation = "eager"
    cls = getattr(transformers, cls_name)
    # An explicit attention mask: without one, recent decoders look for packed sequences
    # with torch.diff, which the TorchScript exporter cannot export.
    keys = ["input_ids", "attention_mask"]
    model = _Logits(_seeded(lambda: cls(config)), keys, output).eval()
    ids = _ids(config.vocab_size)
    return ZooModel(name, model, (ids, torch.ones_like(ids)), keys)


def _decoder(name: str, config_name: str, cls_name: str, **extra) -> ZooModel:  # type: ignore[no-untyped-def]
    import transformers

    config = getattr(transformers, config_name)(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, use_cache=False, **extra,
    )  # fmt: skip
    return _text(name, config, cls_name)


def llama() -> ZooModel:
    """Llama (rotary embedding, RMSNorm, SiLU gated MLP, grouped-query attention)."""
    return _decoder("llama", "LlamaConfig", "LlamaForCausalLM", num_key_value_heads=1)


def qwen2() -> ZooModel:
    """Qwen2 (rotary embedding, biased q/k/v projections)."""
    return _decoder("qwen2", "Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=1)


def gpt_neox() -> ZooModel:
    """GPT-NeoX (partial rotary embedding, parallel residual)."""
    return _decoder("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM", rotary_pct=0.5)


def mistral() -> ZooModel:
    """Mistral (rotary embedding, sliding-window attention configuration)."""
    return _decoder("mistral", "MistralConfig", "MistralForCausalLM", num_key_value_heads=1, sliding_window=16)


def gpt2() -> ZooModel:
    """GPT-2 (learned positions, Conv1D projections)."""
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=32, use_cache=False)
    return _text("gpt2", config, "GPT2LMHeadModel")


def bert() -> ZooModel:
    """BERT classifier (encoder, pooler, classification head)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                        max_position_embeddings=32, num_labels=3)  # fmt: skip
    return _text("bert", config, "BertForSequenceClassification")


def t5() -> ZooModel:
    """T5 encoder-decoder (relative position bias, shared embedding)."""
    import transformers

    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=48, num_layers=1, num_decoder_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, use_cache=False, decoder_start_token_id=0)  # fmt: skip
    config._attn_implementation = "eager"
    inner = _seeded(lambda: transformers.T5ForConditionalGeneration(config))
    model = _Logits(inner, ["input_ids", "decoder_input_ids"], "logits").eval()
    return ZooModel("t5", model, (_ids(64), _ids(64, (1, 4), seed=1)), ["input_ids", "decoder_input_ids"])


def vit() -> ZooModel:
    """ViT image classifier (patch embedding, CLS token)."""
    from transformers import ViTConfig

    config = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=48, num_labels=5)  # fmt: skip
    return _vision("vit", config, "ViTForImageClassification", size=16)


def _vision(name: str, config, cls_name: str, size: int = 32) -> ZooModel:  # type: ignore[no-untyped-def]
    import transformers

    cls = getattr(transformers, cls_name)
    inner = _seeded(lambda: cls(config))
    _randomise_batchnorm(inner)
    model = _Logits(inner, ["pixel_values"], "logits").eval()
    return ZooModel(name, model, (_image(config.num_channels, size),), ["pixel_values"])


def _randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics, so that folding BatchNorm into Conv matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def resnet() -> ZooModel:
    """ResNet (Conv + BatchNorm fused by the exporters, bottleneck shortcuts)."""
    from transformers import ResNetConfig

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
    return _vision("resnet", config, "ResNetForImageClassification")


def mobilenet_v2() -> ZooModel:
    """MobileNetV2 (nested Sequential-like layers, depthwise convolutions, ReLU6)."""
    from transformers import MobileNetV2Config

    config = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=5)
    return _vision("mobilenet_v2", config, "MobileNetV2ForImageClassification")


def convnext() -> ZooModel:
    """ConvNeXt (nested stages and layers, LayerNorm over channels, layer scale)."""
    from transformers import ConvNextConfig

    config = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    return _vision("convnext", config, "ConvNextForImageClassification")


#: Name -> builder.
ZOO: dict[str, Callable[[], ZooModel]] = {f.__name__: f for f in (llama, qwen2, gpt_neox, gpt2, bert, t5, vit, resnet, convnext, mistral)}


def build(name: str) -> ZooModel:
    """Build the zoo model ``name``."""
    return ZOO[name]()
