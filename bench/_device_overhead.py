"""Training-step overhead on one device, GPU models included (``bench_torch_overhead.py --device``).

Models: a ResNet-50 (``transformers`` ResNetConfig defaults: resnet-50 sizes, 1000
classes; bf16 autocast, channels_last, batch 128 of 224x224), GPT-2 124M (GPT2Config
defaults, 8 x 1024 tokens) under bf16 autocast and in fp32, and the two small models of
the CPU benchmark; all randomly initialised, AdamW. ``--quick`` shrinks every model and
batch so that the same code paths run in seconds (on the CPU, to check the script).

Configurations: no tracing; ``TorchTracer(model, path, optimizer=opt)`` with its
defaults; naive hooks (one ``.item()`` per statistic and ``histc``). Rounds interleave
them; each step is timed alone (the device is synchronised around it, outside the
tracer) and a configuration's figure is the median step. One further step per
configuration runs under ``torch.profiler`` to count device kernels (on the CPU: aten
operator calls). Results are printed and written as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracefmt.adapters.torch import TorchTracer

CONFIGS = ("none", "tracefmt", "naive")
Case = tuple[nn.Module, Callable[[], torch.Tensor], bool]


def _resnet50(device: torch.device, quick: bool) -> Case:
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = (
        ResNetConfig(num_labels=1000)
        if not quick
        else ResNetConfig(num_labels=10, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=8)
    )
    batch, size = (128, 224) if not quick else (2, 32)
    model = ResNetForImageClassification(cfg).to(device).to(memory_format=torch.channels_last)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.num_labels, (batch,), device=device, generator=g)
    return model, lambda: model(pixel_values=x, labels=y).loss, True


def _gpt2(device: torch.device, quick: bool, autocast: bool) -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = (
        GPT2Config()
        if not quick
        else GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64, bos_token_id=511, eos_token_id=511)
    )
    batch, seq = (8, 1024) if not quick else (2, 32)
    model = GPT2LMHeadModel(cfg).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device, generator=g)
    return model, lambda: model(tokens, labels=tokens).loss, autocast


def _small(device: torch.device, quick: bool, which: str) -> Case:
    from models import residual_cnn, tiny_gpt2

    g = torch.Generator().manual_seed(0)
    if which == "cnn":
        batch, channels = (256, 64) if not quick else (16, 8)
        model = residual_cnn(channels=channels).to(device)
        x, y = torch.rand(batch, 1, 8, 8, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g).to(device)
        return model, lambda: nn.functional.cross_entropy(model(x), y), False
    batch, seq, width, layers = (16, 128, 256, 4) if not quick else (2, 16, 32, 2)
    model = tiny_gpt2(vocab=512, n_layer=layers, n_embd=width, n_head=4, n_positions=seq).to(device)
    tokens = torch.randint(0, 512, (batch, seq), generator=g).to(device)
    return model, lambda: model(tokens, labels=tokens).loss, False


#: name -> (label, builder(device, quick))
CASES: dict[str, tuple[str, Callable[[torch.device, bool], Case]]] = {
    "resnet50": ("ResNet-50, batch 128, 224x224, bf16 autocast, channels_last", _resnet50),
    "gpt2-bf16": ("GPT-2 124M, 8 x 1024 tokens, bf16 autocast", lambda d, q: _gpt2(d, q, True)),
    "gpt2-fp32": ("GPT-2 124M, 8 x 1024 tokens, fp32", lambda d, q: _gpt2(d, q, False)),
    "gpt2-small": ("GPT-2 4 layers x 256, 16 x 128 tokens, fp32", lambda d, q: _small(d, q, "gpt")),
    "cnn": ("residual CNN 64 channels, batch 256 of 8x8, fp32", lambda d, q: _small(d, q, "cnn")),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Run:
    """One configuration attached to a case's model for a few steps."""

    def __init__(self, config: str, model: nn.Module, opt: torch.optim.Optimizer, tmp: Path) -> None:
        from bench_torch_overhead import NaiveHooks

        self.tracer = self.hooks = None
        self.path = tmp / f"{config}-{time.monotonic_ns()}"
        if config == "tracefmt":
            self.tracer = TorchTracer(model, self.path, optimizer=opt).start()
        elif config == "naive":
            self.hooks = NaiveHooks(model)

    def after_step(self) -> None:
        if self.hooks is not None:
            self.hooks.step()

    def close(self) -> int:
        """Detach; return the records written per step (tracefmt only)."""
        records = 0
        if self.tracer is not None:
            self.tracer.close()
            import tracefmt

            t = tracefmt.open(self.path).records.to_table(columns=["step"])
            records = t.num_rows // max(len(set(t.column("step").to_pylist())), 1)
        if self.hooks is not None:
            self.hooks.close()
        shutil.rmtree(self.path, ignore_errors=True)
        return records


def _step(model: nn.Module, loss_fn, opt, autocast: bool, device: torch.device, run: _Run) -> None:
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    with ctx:
        loss = loss_fn()
    loss.backward()
    opt.step()
    run.after_step()
    opt.zero_grad()


def _kernels_per_step(step: Callable[[], None], device: torch.device) -> int:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)


def bench_case(key: str, device: torch.device, *, quick: bool, rounds: int, steps: int, warmup: int, tmp: Path) -> dict[str, Any]:
    """Time every configuration on one case; return the figures."""
    label, build = CASES[key]
    t0 = time.perf_counter()
    model, loss_fn, autocast = build(device, quick)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpu: dict[str, list[float]] = {c: [] for c in CONFIGS}
    kernels: dict[str, int] = {}
    records: dict[str, int] = {}
    peak: dict[str, int] = {}
    for r in range(rounds):
        for config in CONFIGS:
            run = _Run(config, model, opt, tmp)
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                for i in range(warmup + steps):
                    _sync(device)
                    w0, c0 = time.perf_counter(), time.process_time()
                    _step(model, loss_fn, opt, autocast, device, run)
                    _sync(device)
                    if i >= warmup:
                        times[config].append(time.perf_counter() - w0)
                        cpu[config].append(time.process_time() - c0)
                if r == rounds - 1:
                    kernels[config] = _kernels_per_step(lambda run=run: _step(model, loss_fn, opt, autocast, device, run), device)
                    if device.type == "cuda":
                        peak[config] = torch.cuda.max_memory_allocated(device)
            finally:
                n = run.close()
            if n:
                records[config] = n
    med = {c: statistics.median(v) for c, v in times.items()}
    out = {
        "case": key,
        "label": label if not quick else label + " (quick sizes)",
        "median_step_s": med,
        "median_cpu_s": {c: statistics.median(v) for c, v in cpu.items()},
        "ratio_vs_none": {c: med[c] / med["none"] for c in CONFIGS},
        "ratio_vs_naive": {c: med[c] / med["naive"] for c in CONFIGS},
        "kernels_per_step" if device.type == "cuda" else "aten_ops_per_step": kernels,
        "observed_tensors_per_step": records.get("tracefmt"),
        "seconds": time.perf_counter() - t0,
    }
    if peak:
        out["peak_allocated_bytes"] = peak
    return out


def run(
    device_name: str, *, quick: bool, cases: list[str], rounds: int, steps: int, warmup: int, json_path: str | None
) -> list[dict[str, Any]]:
    """Run the cases on ``device_name``, print a table and write JSON."""
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "quick": quick,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    print(json.dumps(env))
    results = []
    with tempfile.TemporaryDirectory() as d:
        for key in cases:
            res = bench_case(key, device, quick=quick, rounds=rounds, steps=steps, warmup=warmup, tmp=Path(d))
            results.append(res)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the case's model and optimizer are gone
            kern = res.get("kernels_per_step", res.get("aten_ops_per_step"))
            print(f"\n{res['label']}  ({res['seconds']:.0f} s, {res['observed_tensors_per_step']} observed tensors per step)")
            for c in CONFIGS:
                print(
                    f"  {c:9s} {res['median_step_s'][c] * 1e3:9.2f} ms/step  x{res['ratio_vs_none'][c]:6.2f} vs none  x{res['ratio_vs_naive'][c]:5.2f} vs naive  {kern.get(c)} launches/step"
                )
    if json_path:
        Path(json_path).write_text(json.dumps({"environment": env, "results": results}, indent=1))
    return results
