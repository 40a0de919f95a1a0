"""Real model builders shared by the test suite (and benchmarks).

Every builder is deterministic: it seeds its own random stream (``seed``) without
disturbing the caller's global RNG state. Signatures are stable; other test modules
import these names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["digits", "deep_mlp", "gru_classifier", "residual_cnn", "tiny_gpt2"]


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity skip connection.

    The same ``relu`` module is called twice per forward (after the first conv and after
    the residual addition), so hook-based tracers see one module with two calls.
    """

    def __init__(self, channels: int) -> None:
        """Build the block.

        Args:
            channels: number of input and output channels.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResidualCNN(nn.Module):
    """A small ResNet-style classifier for (N, 1, 8, 8) inputs (sklearn digits)."""

    def __init__(self, num_classes: int = 10, channels: int = 16) -> None:
        """Build the network.

        Args:
            num_classes: number of output logits. Defaults to 10.
            channels: width of the residual stage. Defaults to 16.
        """
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.layer1 = ResidualBlock(channels)
        self.layer2 = ResidualBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def residual_cnn(num_classes: int = 10, channels: int = 16, *, seed: int = 0) -> nn.Module:
    """Build a residual CNN with BatchNorm for (N, 1, 8, 8) inputs.

    Args:
        num_classes: number of output logits. Defaults to 10.
        channels: width of the residual blocks. Defaults to 16.
        seed: seed of the weight initialisation. Defaults to 0.

    Returns:
        A ``ResidualCNN`` whose blocks reuse one ReLU module twice per forward.
    """
    return _seeded(seed, lambda: ResidualCNN(num_classes, channels))


class GRUClassifier(nn.Module):
    """Embedding -> GRU -> Linear on the last time step (sequence classification)."""

    def __init__(self, vocab: int, embed: int, hidden: int, num_classes: int, num_layers: int) -> None:
        """Build the network.

        Args:
            vocab: vocabulary size of the token embedding.
            embed: embedding width.
            hidden: GRU hidden size.
            num_classes: number of output logits.
            num_layers: stacked GRU layers.
        """
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return logits (N, num_classes) for int64 tokens of shape (N, T)."""
        out, _ = self.gru(self.embed(tokens))
        return self.head(out[:, -1])


def gru_classifier(
    vocab: int = 32,
    embed: int = 16,
    hidden: int = 32,
    num_classes: int = 4,
    num_layers: int = 1,
    *,
    seed: int = 0,
) -> nn.Module:
    """Build a GRU sequence classifier (the GRU module returns a tuple (output, h_n)).

    Args:
        vocab: vocabulary size. Defaults to 32.
        embed: embedding width. Defaults to 16.
        hidden: GRU hidden size. Defaults to 32.
        num_classes: number of logits. Defaults to 4.
        num_layers: stacked GRU layers. Defaults to 1.
        seed: seed of the weight initialisation. Defaults to 0.

    Returns:
        A ``GRUClassifier`` taking int64 tokens (N, T).
    """
    return _seeded(seed, lambda: GRUClassifier(vocab, embed, hidden, num_classes, num_layers))


def tiny_gpt2(
    vocab: int = 64,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 32,
    *,
    seed: int = 0,
) -> nn.Module:
    """Build a randomly initialised GPT-2 language model from ``transformers`` (no download).

    Args:
        vocab: vocabulary size. Defaults to 64.
        n_layer: transformer blocks. Defaults to 2.
        n_embd: embedding width. Defaults to 32.
        n_head: attention heads. Defaults to 2.
        n_positions: maximum sequence length. Defaults to 32.
        seed: seed of the weight initialisation. Defaults to 0.

    Returns:
        A ``transformers.GPT2LMHeadModel`` (eager attention, dropout off so runs are
        deterministic) whose forward returns a dict-like output with ``logits``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        bos_token_id=vocab - 1,
        eos_token_id=vocab - 1,
        loss_type="ForCausalLM",
    )
    config._attn_implementation = "eager"
    return _seeded(seed, lambda: GPT2LMHeadModel(config))


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def deep_mlp(
    depth: int = 6,
    width: int = 32,
    activation: str | type[nn.Module] = "relu",
    *,
    in_features: int = 64,
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """Build a plain deep MLP (Flatten, then ``depth`` Linear+activation pairs, then a head).

    Flatten comes first so that the (N, 1, 8, 8) digits tensors can be fed directly.

    Args:
        depth: number of hidden Linear layers. Defaults to 6.
        width: hidden width. Defaults to 32.
        activation: 'relu', 'tanh', 'sigmoid', 'gelu', 'identity' or an ``nn.Module``
            class. Defaults to 'relu'.
        in_features: flattened input size. Defaults to 64 (8x8 digits).
        num_classes: output logits. Defaults to 10.
        seed: seed of the weight initialisation. Defaults to 0.

    Returns:
        An ``nn.Sequential`` with layers ``0`` (Flatten), ``1, 2`` (Linear, activation), ...
    """
    act = _ACTIVATIONS[activation] if isinstance(activation, str) else activation

    def build() -> nn.Sequential:
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = in_features
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), act()]
            n_in = width
        layers.append(nn.Linear(n_in, num_classes))
        return nn.Sequential(*layers)

    return _seeded(seed, build)  # type: ignore[return-value]


def digits(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load scikit-learn's 8x8 digits as tensors (bundled with sklearn: no download).

    Args:
        n: keep the first ``n`` samples; all 1797 when None. Defaults to None.

    Returns:
        ``(x, y)``: float32 images (N, 1, 8, 8) scaled to [0, 1] and int64 labels (N,).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    return x, y
