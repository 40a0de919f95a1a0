"""Training-step overhead of the PyTorch adapter against no tracing and two baselines.

Run by hand: ``python bench/bench_torch_overhead.py [--steps N] [--rounds R]``.
``--device cuda`` (or ``--device cpu --quick`` to check the script) runs the device
benchmark of bench/_device_overhead.py instead: ResNet-50 and GPT-2 124M besides the two
small models, median steps, kernels per step, JSON output (``--json PATH``).

Configurations, each timed on the same model and data in the same process:
  (a) no tracing;
  (b) tracefmt TorchTracer: activations + gradients + weights + weight gradients with
      the default 99-bin histogram, every leaf module, every step;
  (c) a naive fast.ai-style hook baseline: the same tensors, statistics taken with one
      ``.item()`` each and ``torch.histc(|x|, 40, 0, 10)``;
  (d) ``torch.utils.tensorboard.SummaryWriter.add_histogram`` for the same tensors;
  (e) as (b) with ``histogram=None`` (statistics only).
Rounds interleave the configurations; each configuration's figure is its fastest round
(the least disturbed by other processes on the machine), in wall time and in CPU time
(all threads of the process, ``time.process_time``: the fairer figure on a loaded
machine). Ratios are against (a).

``--memory`` instead runs (a) and (b) each in its own subprocess and prints their peak
RSS (``ru_maxrss``) above the RSS after the model is built, and their ratio.
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


def time_config(build, config: str, steps: int, warmup: int, tmp: Path) -> tuple[float, float]:
    """Wall and CPU seconds per training step of ``config`` (after ``warmup`` steps)."""
    model, loss_fn = build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    out = tmp / f"{config}-{time.monotonic_ns()}"
    tracer = hooks = None
    if config == "b":
        tracer = TorchTracer(model, out, optimizer=opt).start()
    elif config == "e":
        tracer = TorchTracer(model, out, optimizer=opt, histogram=None).start()
    elif config == "c":
        hooks = NaiveHooks(model)
    elif config == "d":
        hooks = TensorBoardHistograms(model, str(out))
    try:
        for i in range(warmup + steps):
            if i == warmup:
                t0, c0 = time.perf_counter(), time.process_time()
            loss = loss_fn()
            loss.backward()
            opt.step()
            if hooks is not None:
                hooks.step()
            opt.zero_grad()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        if tracer is not None:
            tracer.close()  # the writer's remaining work is part of the cost: timed below
        if hooks is not None:
            hooks.close()
    if tracer is not None:
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(out, ignore_errors=True)
    return elapsed / steps, cpu / steps


MEMORY_CHILD = r"""
import resource, sys, tempfile, torch
sys.path.insert(0, sys.argv[1])
import bench_torch_overhead as b
from tracefmt.adapters.torch import TorchTracer
key, config, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]) or torch.get_num_threads())
model, loss_fn = b.CASES[key][1]()
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as d:
    tracer = TorchTracer(model, d + "/t.trace", optimizer=opt).start() if config == "b" else None
    for _ in range(steps):
        loss_fn().backward(); opt.step(); opt.zero_grad()
        if tracer is not None:
            tracer.step()
    if tracer is not None:
        tracer.close()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory(key: str, steps: int, threads: int) -> None:
    """Print the peak RSS above the built model of (a) and (b), each in its own process."""
    import subprocess

    here = str(Path(__file__).resolve().parent)
    grown = {}
    for c in "ab":
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, here, key, c, str(steps), str(threads)], capture_output=True, text=True, check=True
        )
        base, peak = map(int, out.stdout.split()[-2:])
        grown[c] = (peak - base) / 1024
        print(
            f"  ({c}) {'no tracing' if c == 'a' else 'tracefmt':12s} peak RSS {peak / 1024:7.1f} MiB, {grown[c]:7.1f} MiB above the built model"
        )
    print(f"  traced / untraced growth: {grown['b'] / max(grown['a'], 1e-9):.3f}")


CASES = {
    "cnn": ("residual CNN, 64 channels, batch 256 of 1x8x8", lambda: cnn_case(256, 64)),
    "gpt": ("GPT-2, 4 layers, n_embd 256, batch 16 x 128 tokens", lambda: gpt_case(16, 128, 256, 4)),
}


def main() -> None:
    """Run the benchmark and print per-step times and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="timed steps per round (default 10; with --device 6)")
    ap.add_argument("--warmup", type=int, help="untimed steps per round (default 3; with --device 2)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; with --device 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--models", default="cnn,gpt")
    ap.add_argument("--configs", default="abcde", help="configurations to run, (a) always included")
    ap.add_argument("--memory", action="store_true", help="peak RSS of (a) and (b) in subprocesses instead of timings")
    ap.add_argument("--device", help="run the device benchmark on this device (cuda, cpu)")
    ap.add_argument("--quick", action="store_true", help="with --device: small sizes, to check the code paths")
    ap.add_argument("--cases", default="resnet50,gpt2-bf16,gpt2-fp32,gpt2-small,cnn", help="with --device: the cases to run")
    ap.add_argument("--json", help="with --device: write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # The device run must fit a short loan of a GPU (under 4 minutes): fewer, median steps.
    for name, cpu_default, device_default in (("steps", 10, 6), ("warmup", 3, 2), ("rounds", 3, 2)):
        if getattr(args, name) is None:
            setattr(args, name, device_default if args.device else cpu_default)
    if args.device:
        from _device_overhead import run

        run(
            args.device,
            quick=args.quick,
            cases=args.cases.split(","),
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            json_path=args.json,
        )
        return
    cases = CASES
    if args.memory:
        for key in args.models.split(","):
            print(f"{cases[key][0]}, {args.warmup + args.steps} steps")
            peak_memory(key, args.warmup + args.steps, args.threads)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds (fastest round)")
    with tempfile.TemporaryDirectory() as d:
        for key in args.models.split(","):
            label, build = cases[key]
            configs = "a" + "".join(c for c in "bcde" if c in args.configs)
            best = {c: float("inf") for c in configs}
            best_cpu = dict(best)
            for _ in range(args.rounds):
                for c in configs:
                    wall, cpu = time_config(build, c, args.steps, args.warmup, Path(d))
                    best[c], best_cpu[c] = min(best[c], wall), min(best_cpu[c], cpu)
            a = best["a"]
            print(f"\n{label}")
            names = ("no tracing", "tracefmt", "naive .item()/histc hooks", "TensorBoard add_histogram", "tracefmt, histogram=None")
            for c, name in zip("abcde", names):
                if c not in configs:
                    continue
                print(f"  ({c}) {name:28s} {best[c] * 1e3:9.1f} ms/step   ratio {best[c] / a:6.2f}   "
                      f"CPU {best_cpu[c] * 1e3:9.1f} ms/step   ratio {best_cpu[c] / best_cpu['a']:6.2f}")  # fmt: skip
            if "b" in configs and "d" in configs:
                print(
                    f"  overhead (b)-(a) = {(best['b'] - a) * 1e3:.1f} ms; (d)-(a) = {(best['d'] - a) * 1e3:.1f} ms; "
                    f"(d) overhead / (b) overhead = {(best['d'] - a) / max(best['b'] - a, 1e-9):.1f}x"
                )


if __name__ == "__main__":
    main()
