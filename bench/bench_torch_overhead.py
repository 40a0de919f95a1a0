"""Training-step overhead of the PyTorch adapter against no tracing and two baselines.

Run by hand: ``python bench/bench_torch_overhead.py [--steps N] [--rounds R]``.

Configurations, each timed on the same model and data in the same process:
  (a) no tracing;
  (b) tracefmt TorchTracer: activations + gradients + weights + weight gradients with
      the default 99-bin histogram, every leaf module, every step;
  (c) a naive fast.ai-style hook baseline: the same tensors, statistics taken with one
      ``.item()`` each and ``torch.histc(|x|, 40, 0, 10)``;
  (d) ``torch.utils.tensorboard.SummaryWriter.add_histogram`` for the same tensors;
  (e) as (b), with the C statistics kernel on two threads (``TRACEFMT_NATIVE_THREADS=2``).
Rounds interleave the configurations; each configuration's figure is its fastest round
(the least disturbed by other processes on the machine). Ratios are against (a).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from models import residual_cnn, tiny_gpt2  # noqa: E402

from tracefmt.adapters.torch import TorchTracer  # noqa: E402


def cnn_case(batch: int, channels: int):
    """Residual CNN on (batch, 1, 8, 8) inputs with cross-entropy."""
    model = residual_cnn(channels=channels)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)
    return model, lambda: nn.functional.cross_entropy(model(x), y)


def gpt_case(batch: int, seq: int, n_embd: int, n_layer: int):
    """GPT-2 language model on random tokens."""
    model = tiny_gpt2(vocab=512, n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=seq)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 512, (batch, seq), generator=g)
    return model, lambda: model(tokens, labels=tokens).loss


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module without children."""
    return [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]


class NaiveHooks:
    """fast.ai-style: a forward hook per leaf, per-statistic ``.item()``, ``histc`` on |x|."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stats: list[tuple] = []
        self.handles = [m.register_forward_hook(self.hook) for _, m in leaf_modules(model)]

    def record(self, t: torch.Tensor) -> None:
        t = t.detach().float()
        self.stats.append(
            (
                t.mean().item(), t.std().item(), t.min().item(), t.max().item(), t.abs().mean().item(),
                t.norm().item(), torch.isnan(t).sum().item(), torch.isinf(t).sum().item(),
                (t == 0).sum().item(), (t > 0).sum().item(), t.abs().histc(40, 0, 10).tolist(),
            )
        )  # fmt: skip

    def hook(self, module, args, out) -> None:
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.record(t)
                if t.requires_grad:
                    t.register_hook(lambda g: self.record(g) and None)

    def step(self) -> None:
        for _, m in leaf_modules(self.model):
            for p in m.parameters(recurse=False):
                self.record(p)
                if p.grad is not None:
                    self.record(p.grad)
        self.stats.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class TensorBoardHistograms(NaiveHooks):
    """``SummaryWriter.add_histogram`` for every leaf output, output gradient, weight and weight gradient."""

    def __init__(self, model: nn.Module, logdir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(logdir)
        self.n = 0
        self.global_step = 0
        super().__init__(model)

    def record(self, t: torch.Tensor) -> None:
        self.writer.add_histogram(f"t{self.n}", t.detach(), self.global_step)
        self.n += 1

    def step(self) -> None:
        super().step()
        self.n = 0
        self.global_step += 1

    def close(self) -> None:
        super().close()
        self.writer.close()


def time_config(build, config: str, steps: int, warmup: int, tmp: Path) -> float:
    """Seconds per training step of ``config`` (after ``warmup`` steps)."""
    model, loss_fn = build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    out = tmp / f"{config}-{time.monotonic_ns()}"
    tracer = hooks = None
    if config in ("b", "e"):
        tracer = TorchTracer(model, out, optimizer=opt).start()
        if config == "e":
            tracer.kernel.threads = 2  # the C kernel splits large tensors over two threads
    elif config == "c":
        hooks = NaiveHooks(model)
    elif config == "d":
        hooks = TensorBoardHistograms(model, str(out))
    try:
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            opt.step()
            if hooks is not None:
                hooks.step()
            opt.zero_grad()
        elapsed = time.perf_counter() - t0
    finally:
        if tracer is not None:
            tracer.close()  # the writer's remaining work is part of the cost: timed below
        if hooks is not None:
            hooks.close()
    if tracer is not None:
        elapsed = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return elapsed / steps


def main() -> None:
    """Run the benchmark and print per-step times and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--models", default="cnn,gpt")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {
        "cnn": ("residual CNN, 64 channels, batch 256 of 1x8x8", lambda: cnn_case(256, 64)),
        "gpt": ("GPT-2, 4 layers, n_embd 256, batch 16 x 128 tokens", lambda: gpt_case(16, 128, 256, 4)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds (fastest round)")
    with tempfile.TemporaryDirectory() as d:
        for key in args.models.split(","):
            label, build = cases[key]
            best = {c: float("inf") for c in "abcde"}
            for _ in range(args.rounds):
                for c in "abcde":
                    best[c] = min(best[c], time_config(build, c, args.steps, args.warmup, Path(d)))
            a = best["a"]
            print(f"\n{label}")
            names = ("no tracing", "tracefmt", "naive .item()/histc hooks", "TensorBoard add_histogram", "tracefmt, 2 kernel threads")
            for c, name in zip("abcde", names):
                print(f"  ({c}) {name:28s} {best[c] * 1e3:9.1f} ms/step   ratio {best[c] / a:6.2f}")
            print(f"  overhead (b)-(a) = {(best['b'] - a) * 1e3:.1f} ms; (d)-(a) = {(best['d'] - a) * 1e3:.1f} ms; "
                  f"(d) overhead / (b) overhead = {(best['d'] - a) / max(best['b'] - a, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
