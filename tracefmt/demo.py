"""``tracefmt demo``: two traced training runs, an ONNX Runtime diff, analyzers and reports.

What it does, offline, in about a minute on two CPU cores:

1. trains a small residual CNN on scikit-learn's 8x8 digits twice with the PyTorch adapter
   on: a **healthy** configuration (He-initialised convolutions with BatchNorm, Adam at
   lr 1e-2) and a **broken** one built to fail in two known ways: the BatchNorm shift
   feeding ``layer1.act1`` starts at -10, so that ReLU receives only negative inputs and
   outputs zeros (it then gets no gradient and never recovers: a dead layer by
   construction), and the learning rate grows geometrically from 1e-2 to 1e2 over the run,
   far past any stable rate, so training diverges (the learning-rate range test of Smith,
   "Cyclical Learning Rates for Training Neural Networks", 2017, run past its useful range);
2. exports the healthy model to ONNX, traces it with ONNX Runtime and diffs that trace
   against a PyTorch evaluation trace of the same input;
3. runs every analyzer, writes the findings into each trace, draws the annotated graphs
   and writes one HTML report per run; prints a findings summary and the report paths.

torch, scikit-learn and onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["RunConfig", "HEALTHY", "BROKEN", "DemoResult", "RunOutcome", "run_demo", "build_model"]

#: The module whose ReLU the broken configuration kills.
DEAD_LAYER = "layer1.act1"


@dataclass(frozen=True)
class RunConfig:
    """One training configuration of the demo.

    Args:
        name: Run name (trace and report file names).
        lr: Adam's learning rate at the first step.
        lr_final: Learning rate at the last step, reached by geometric growth every step;
            None keeps ``lr`` constant.
        dead_shift: Initial BatchNorm shift before :data:`DEAD_LAYER`'s ReLU; None keeps
            the default 0.
    """

    name: str
    lr: float
    lr_final: float | None = None
    dead_shift: float | None = None

    def growth(self, steps: int) -> float:
        """Per-step learning-rate factor that takes ``lr`` to ``lr_final`` in ``steps`` steps."""
        return 1.0 if self.lr_final is None or steps < 2 else (self.lr_final / self.lr) ** (1.0 / (steps - 1))


HEALTHY = RunConfig("healthy", lr=1e-2)
BROKEN = RunConfig("broken", lr=1e-2, lr_final=1e2, dead_shift=-10.0)


@dataclass
class RunOutcome:
    """What one demo run produced."""

    name: str
    trace: Path
    report: Path | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""
    final: dict[str, float] = field(default_factory=dict)
    graphs: list[Path] = field(default_factory=list)


@dataclass
class DemoResult:
    """Everything the demo wrote, for callers and tests."""

    out: Path
    runs: dict[str, RunOutcome] = field(default_factory=dict)
    diff: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self, run: str) -> dict[str, int]:
        """Findings of ``run`` by severity."""
        sev = [f["severity"] for f in self.runs[run].findings]
        return {s: sev.count(s) for s in ("error", "warning", "info")}


def build_model(seed: int = 0) -> Any:
    """The demo's residual CNN for (N, 1, 8, 8) inputs: stem, two residual blocks, head.

    Every ReLU is its own module (``layerK.act1``, ``layerK.act2``) so a finding names
    exactly one place in the network.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        """conv-BN-ReLU-conv-BN plus the identity, then ReLU (He et al., 2016)."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.act1 = nn.ReLU()
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.act2 = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + x)

    class DigitsResNet(nn.Module):
        """A small ResNet for sklearn's digits."""

        def __init__(self, c: int = 16) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            self.layer1 = Block(c)
            self.layer2 = Block(c)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(c, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.flatten(self.pool(self.layer2(self.layer1(self.stem(x))))))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsResNet()
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def _data(quick: bool) -> tuple[Any, Any, Any, Any]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]
    n_val = 360
    n_train = 640 if quick else len(y) - n_val
    return x[n_val : n_val + n_train], y[n_val : n_val + n_train], x[:n_val], y[:n_val]


class _Progress:
    """A progress bar on ``stream`` (tqdm when installed, else a line per epoch)."""

    def __init__(self, total: int, desc: str, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled, self.desc, self.total, self.bar = stream, enabled, desc, total, None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, file=stream, leave=True, ncols=90, unit="step")
            except ImportError:
                pass

    def update(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3g} lr {lr:.2g}", refresh=False)
            self.bar.update(1)

    def epoch(self, text: str) -> None:
        if self.enabled and self.bar is None:
            self.stream.write(f"  {self.desc}: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _train(cfg: RunConfig, trace: Path, *, quick: bool, stream: TextIO, progress: bool) -> tuple[Any, dict[str, float]]:
    """Train one configuration with the tracer on; return the model and final metrics."""
    import torch
    import torch.nn.functional as F

    from tracefmt.adapters.torch import TorchTracer

    xtr, ytr, xva, yva = _data(quick)
    model = build_model(seed=0)
    if cfg.dead_shift is not None:
        with torch.no_grad():
            model.get_submodule(DEAD_LAYER.replace("act", "bn")).bias.fill_(cfg.dead_shift)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    epochs, batch = (3, 64) if quick else (4, 64)
    steps_per_epoch = math.ceil(len(ytr) / batch)
    growth = cfg.growth(epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(1)
    meta = {"config": cfg.name, "optimizer": "Adam", "lr": cfg.lr, "lr_final": cfg.lr_final, "dead_shift": cfg.dead_shift, "epochs": epochs, "batch": batch}
    # Bars go to stderr and only to a terminal: piped or captured output stays clean.
    bar = _Progress(epochs * steps_per_epoch, f"{cfg.name:>7}", sys.stderr, progress and _is_terminal(sys.stderr))
    final: dict[str, float] = {}
    # Weights every 4 steps: the checkpoints of the training-dynamics analyzer (its HMM
    # models a run as a sequence of checkpoints; ~23 per run here).
    with TorchTracer(
        model, trace, optimizer=opt, matrix_stats=True, weight_every=4, model_name="DigitsResNet", metadata=meta, mode="overwrite"
    ) as tracer:
        for epoch in range(epochs):
            tracer.epoch = epoch
            model.train()
            for idx in torch.randperm(len(ytr), generator=gen).split(batch):
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                tracer.log_scalar("loss", loss)
                tracer.log_scalar("lr", opt.param_groups[0]["lr"])
                opt.step()
                for group in opt.param_groups:
                    group["lr"] *= growth
                bar.update(loss.item(), opt.param_groups[0]["lr"])
            model.eval()
            with tracer.phase("eval"), torch.no_grad():
                logits = model(xva)
                val_loss = F.cross_entropy(logits, yva)
                acc = (logits.argmax(1) == yva).float().mean()
                tracer.log_scalar("loss", val_loss)
                tracer.log_scalar("accuracy", acc)
                tracer.log_predictions(yva, logits)
            final = {"train_loss": loss.item(), "val_loss": val_loss.item(), "val_accuracy": acc.item()}
            bar.epoch(f"epoch {epoch + 1}/{epochs} loss {final['train_loss']:.3g} val acc {final['val_accuracy']:.3f}")
    bar.close()
    return model, final


def _export_and_diff(model: Any, out: Path) -> tuple[Path, Path, Any]:
    """Export ``model`` to ONNX, trace it with ORT and with PyTorch on one batch, diff the two."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    from tracefmt.adapters.onnxruntime import trace_onnx
    from tracefmt.adapters.torch import trace_forward
    from tracefmt.analyzers.diff import diff_traces

    _, _, xva, _ = _data(quick=True)
    x = xva[:64]
    model.eval()
    onnx_path = out / "healthy.onnx"
    # The exporter logs its progress and optional-dependency notes; the demo prints its own.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(onnx_path), input_names=["x"], output_names=["logits"], dynamo=True, verbose=False)
    finally:
        quiet.setLevel(level)
    torch_eval = out / "healthy-eval.trace"
    shutil.rmtree(torch_eval, ignore_errors=True)
    trace_forward(model, x, torch_eval, model_name="DigitsResNet", raw="*")
    ort_trace = out / "healthy-onnx.trace"
    trace_onnx(onnx_path, {"x": x.numpy()}, ort_trace, phase="eval", raw=True, mode="overwrite", model_name="DigitsResNet (ONNX)")
    return ort_trace, torch_eval, diff_traces(ort_trace, torch_eval)


#: Figures of the reports also written as PNG files (the README shows them).
SAVED_FIGURES = ("activations/colorful_dimension", "activations/telemetry", "loss/loss", "dead/dead_fraction")


def _analyze(
    name: str, trace_path: Path, out: Path, result: DemoResult, *, compare: Path | None = None, findings: Any = None
) -> RunOutcome:
    """Run every analyzer on a trace, store its findings, draw its graph, write its report."""
    import tracefmt
    from tracefmt import analyzers
    from tracefmt.analyzers.render import render_graph, save, write_report
    from tracefmt.findings import write_findings

    trace = tracefmt.open(trace_path)
    outcome = result.runs.get(name) or RunOutcome(name, trace_path)
    analysis = analyzers.run(trace)
    write_findings(trace_path, analysis.findings, name="analyzers")
    outcome.verdict = analysis.verdict
    graphs = out / "graphs"
    if findings is None:
        g = render_graph(trace, metric="dead_fraction", kind="activation", findings=analysis.findings)
        outcome.graphs += [save(g, graphs / f"{name}-dead_fraction.svg"), save(g, graphs / f"{name}-dead_fraction.png")]
    else:
        g = render_graph(trace, metric="diff_error", findings=findings)
        outcome.graphs += [save(g, graphs / f"{name}-diff_error.svg"), save(g, graphs / f"{name}-diff_error.png")]
    info = write_report(trace, out / f"{name}.html", compare=compare, analysis=analysis)
    outcome.report = info.path
    outcome.findings = info.findings.to_pylist()  # what the report shows, so the counts agree
    for key in SAVED_FIGURES:
        if key in info.images:
            path = out / "figures" / f"{name}-{key.replace('/', '-')}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(info.images[key])
            result.figures.append(path)
    result.runs[name] = outcome
    return outcome


def _summary(result: DemoResult, stream: TextIO, *, wide: bool = False) -> None:
    import shutil
    import textwrap

    w = stream.write
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    w("\nFindings (warnings and errors; info in the reports)\n")
    for name, run in result.runs.items():
        c = result.counts(name)
        extra = ", ".join(f"{k} {v:.3g}" for k, v in run.final.items())
        w(f"  {name:<14} {c['error']} error, {c['warning']} warning, {c['info']} info" + (f"   ({extra})" if extra else "") + "\n")
        if run.verdict:
            w(f"      {run.verdict}\n")
        shown = [f for f in run.findings if f["severity"] in ("error", "warning")]
        for f in shown[:8]:
            steps = f"steps {f['step_first']}-{f['step_last']}" if f.get("step_first") is not None else ""
            w(f"      {f['severity']:<7} {f['analyzer']}/{f['code']:<16} {f.get('node') or '(run)':<14} {steps}\n")
            # The whole message: on one line with --wide, else wrapped at word boundaries.
            w(f"        {f['message']}\n" if wide else textwrap.fill(f["message"], width=width, initial_indent=" " * 8, subsequent_indent=" " * 8) + "\n")
        if len(shown) > 8:
            w(f"      ... {len(shown) - 8} more in the report\n")
    d = result.diff
    if d:
        verdict = (
            f"first divergence at {d['first_divergence']}" if d["divergent"] else {"agree": "no divergence"}.get(d["verdict"], d["verdict"])
        )
        w(
            f"  ONNX Runtime vs PyTorch (eval, same batch): {verdict}; {d['compared']} tensors compared, largest error {d['max_error']:.3g}x tolerance\n"
        )
    w("\nReports\n")
    for run in result.runs.values():
        if run.report is not None:
            w(f"  {run.report}\n")
    w(f"\nAll outputs in {result.out}/ ({result.seconds:.0f} s)\n")


def run_demo(
    out: str | Path = "demo-output", *, quick: bool = False, stream: TextIO | None = None, progress: bool = True, wide: bool = False
) -> DemoResult:
    """Run the whole demo and write everything under ``out``.

    Args:
        out: Output directory (created; previous demo outputs in it are replaced).
        quick: Fewer samples and epochs (for tests). Defaults to False.
        stream: Where the steps and the summary go. Defaults to stdout.
        progress: Show progress bars while training (on stderr, only when it is a
            terminal). Defaults to True.
        wide: Print each finding's message on one line instead of wrapping it. Defaults to False.

    Returns:
        The paths and findings of every run.
    """
    import torch

    stream = stream or sys.stdout
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # One intra-op thread: the tensors are tiny, and the tracer's writer thread gets the
    # other core instead of competing with spinning OpenMP workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, quick=quick, stream=stream, progress=progress, t0=t0, wide=wide)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, *, quick: bool, stream: TextIO, progress: bool, t0: float, wide: bool = False) -> DemoResult:
    result = DemoResult(out=out)
    say: Callable[[str], None] = lambda s: (stream.write(s + "\n"), stream.flush())  # noqa: E731
    say(f"tracefmt demo: residual CNN on sklearn digits, outputs in {out}/")
    models = {}
    for i, cfg in enumerate((HEALTHY, BROKEN), 1):
        say(
            f"[{i}/4] training the {cfg.name} configuration"
            + (f" (BatchNorm shift {cfg.dead_shift} before {DEAD_LAYER}; lr {cfg.lr:g} -> {cfg.lr_final:g})" if cfg.dead_shift else "")
        )
        models[cfg.name], final = _train(cfg, out / f"{cfg.name}.trace", quick=quick, stream=stream, progress=progress)
        result.runs[cfg.name] = RunOutcome(cfg.name, out / f"{cfg.name}.trace", final=final)
    say("[3/4] exporting the healthy model to ONNX, tracing it with ONNX Runtime and diffing against PyTorch")
    ort_trace, torch_eval, diff = _export_and_diff(models["healthy"], out)
    errors = [c.error for c in diff.compared if math.isfinite(c.error)]
    result.diff = {
        "divergent": diff.divergent,
        "verdict": diff.verdict,
        "first_divergence": diff.first_divergence.a_node if diff.first_divergence else None,
        "compared": len(diff.compared),
        "max_error": max(errors, default=0.0),
        "coverage": diff.coverage,
    }
    from tracefmt.findings import write_findings

    write_findings(ort_trace, diff.findings_table("a"), name="diff")
    say("[4/4] analyzing every trace, drawing graphs, writing reports")
    for name in ("healthy", "broken"):
        _analyze(name, out / f"{name}.trace", out, result)
    _analyze("onnx-vs-torch", ort_trace, out, result, compare=torch_eval, findings=diff.findings)
    result.seconds = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(_summary_json(result), indent=2, default=str) + "\n")
    _summary(result, stream, wide=wide)
    return result


def _summary_json(result: DemoResult) -> dict[str, Any]:
    return {
        "seconds": result.seconds,
        "diff": result.diff,
        "runs": {
            n: {
                "trace": str(r.trace),
                "report": str(r.report) if r.report else None,
                "final": r.final,
                "counts": result.counts(n),
                "findings": r.findings,
            }
            for n, r in result.runs.items()
        },
    }
