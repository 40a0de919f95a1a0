"""A seeded mutation fuzzer over traces (used by tests/test_fuzz.py and bench/fuzz.py).

Seeds are the conformance traces (spec/conformance/cases) and traces written by the
adapters (PyTorch, ONNX Runtime, plus a compacted copy). Each case copies one seed,
applies one to three mutations (tests/_fuzz_mutations.py) and runs one operation on it
(validate, read every table, info, analyze, render, report, compact, or a CLI command)
in a worker process with a memory limit (``resource.setrlimit``) and a time limit. The
outcome of each case is one of

- ``verdict``: the operation finished (a valid/invalid verdict, findings, a rewrite);
- ``error``: it raised a :class:`tracefmt.errors.TraceError` (one line for the user);
- ``unexpected``: any other exception (labelled with its type and innermost tracefmt frame);
- ``memory``: a MemoryError, or the worker died of its memory limit;
- ``crash``: the worker process died of a signal (a native crash);
- ``hang``: the case used more CPU time than its limit, or answered nothing within a
  wall-clock limit (blocked);
- ``escape``: a file outside the trace was changed or removed;
- ``inconsistent``: ``validate`` said valid but reading the same trace failed.

Only the first two are acceptable. Cases are reproducible: ``(seed, index)`` fixes the
seed trace, the mutations and the operation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OK_OUTCOMES = ("verdict", "error")
#: Memory a worker may map on top of what its imports took.
MEMORY_LIMIT = 2 * 1024**3


# ---------------------------------------------------------------------------------- seeds
def build_seeds(out: Path, *, adapters: bool = True) -> list[Path]:
    """Copy the conformance traces and write adapter traces into ``out``; return the seed dirs."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = []
    for case in sorted((ROOT / "spec" / "conformance" / "cases").iterdir()):
        if case.is_dir():
            dst = out / f"conf-{case.name}"
            if not dst.exists():
                shutil.copytree(case, dst, symlinks=True)
            seeds.append(dst)
    if adapters:
        seeds += _adapter_seeds(out)
    return seeds


def _adapter_seeds(out: Path) -> list[Path]:
    """A PyTorch training trace (scalars, predictions, raw tensors), its compacted copy, an ONNX Runtime trace,
    a PyTorch CNN trace in closed IPC segments."""
    import numpy as np

    made = []
    torch_dir = out / "torch-mlp"
    if not torch_dir.exists():
        import torch

        from tracefmt.adapters.torch import TorchTracer

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        with TorchTracer(model, torch_dir, optimizer=opt, raw="*") as tracer:
            for _ in range(3):
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
                tracer.log_scalar("loss", loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
            with tracer.phase("eval"), torch.no_grad():
                tracer.log_predictions(y, model(x))
    made.append(torch_dir)
    compact_dir = out / "torch-mlp-compacted"
    if not compact_dir.exists():
        from tracefmt.compaction import compact_trace

        shutil.copytree(torch_dir, compact_dir)
        compact_trace(compact_dir)
    made.append(compact_dir)
    onnx_dir = out / "onnx-mlp"
    if not onnx_dir.exists():
        from onnx import TensorProto, helper, numpy_helper

        from tracefmt.adapters.onnxruntime import trace_onnx

        rng = np.random.default_rng(0)
        w = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
            "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], initializer=[w],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        trace_onnx(model, {"x": rng.standard_normal((2, 4)).astype(np.float32)}, onnx_dir, raw=True)
    made.append(onnx_dir)
    cnn_dir = out / "torch-cnn-arrow"
    if not cnn_dir.exists():
        import torch

        import tracefmt
        from tracefmt.adapters.torch import TorchTracer

        # Closed IPC segments, one per step: the reader's column-selective IPC path.
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 2))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        opts = tracefmt.WriterOptions(segment_format="arrow", roll_steps=1, flush_interval=0)
        with TorchTracer(model, cnn_dir, optimizer=opt, writer_options=opts) as tracer:
            for _ in range(3):
                loss = model(torch.randn(4, 2, 6, 6)).pow(2).mean()
                tracer.log_scalar("loss", loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
    made.append(cnn_dir)
    return made


# ------------------------------------------------------------------------------ operations
def _op_validate(trace: Path, work: Path) -> None:
    import tracefmt

    tracefmt.validate(trace)


def _op_read(trace: Path, work: Path) -> None:
    import tracefmt

    t = tracefmt.open(trace)
    tables = [t.nodes, t.scalars, t.predictions, t.read("records"), t.findings]
    t.edges()
    for _ in t.tensors():
        pass
    del tables


def _op_scan(trace: Path, work: Path) -> None:
    import tracefmt

    t = tracefmt.open(trace)
    for _ in t.scan("records", columns=["step", "node_id", "mean", "hist_counts"], kinds=["activation"], steps=(1, None)):
        pass
    for _ in t.scan("records", columns=["node_id", "zero_count", "numel"]):
        pass
    t.read("scalars", columns=["step", "value"], phases=["train"])


def _op_info(trace: Path, work: Path) -> None:
    from tracefmt.summary import trace_summary

    trace_summary(trace)


def _op_analyze(trace: Path, work: Path) -> None:
    from tracefmt.analyzers import run

    run(trace)  # every registered analyzer, dynamics included


def _op_render(trace: Path, work: Path) -> None:
    from tracefmt.analyzers.render import render_graph

    render_graph(trace).pipe(format="svg")


def _op_compact(trace: Path, work: Path) -> None:
    from tracefmt.compaction import compact_trace

    compact_trace(trace, force=True)


def _op_valid_then_read(trace: Path, work: Path) -> None:
    import tracefmt
    from tracefmt.errors import TraceError

    if not tracefmt.validate(trace).valid:
        return
    try:
        _op_read(trace, work)
    except TraceError as exc:
        raise _Inconsistent(f"validate said valid, reading failed: {exc}") from None


def _cli(args: list[str]) -> Callable[[Path, Path], None]:
    def op(trace: Path, work: Path) -> None:
        from tracefmt.cli import EXIT_INTERNAL, main

        # {reference}: the unmutated seed, copied beside the trace (it must not change either).
        argv = [a.replace("{trace}", str(trace)).replace("{work}", str(work)).replace("{reference}", str(trace.parent / "reference")) for a in args]
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
        if code == EXIT_INTERNAL or code not in (0, 1, 2):
            raise _Unexpected(f"exit code {code}: {err.getvalue().strip()[:300]}")

    return op


OPERATIONS: dict[str, Callable[[Path, Path], None]] = {
    "validate": _op_validate,
    "read": _op_read,
    "scan": _op_scan,
    "info": _op_info,
    "analyze": _op_analyze,
    "render": _op_render,
    "compact": _op_compact,
    "valid_then_read": _op_valid_then_read,
    "cli_info": _cli(["info", "{trace}", "--format", "json"]),
    "cli_analyze": _cli(["analyze", "{trace}", "--only", "dead,loss,confusion", "--format", "json"]),
    "cli_report": _cli(["report", "{trace}", "-o", "{work}/report.html", "--only", "dead"]),
    "cli_compact": _cli(["compact", "{trace}", "--force"]),
    "cli_diff": _cli(["diff", "{trace}", "{reference}", "--format", "json"]),
}
#: Relative weights: the cheap, most exposed reads run most often.
WEIGHTS = {"validate": 4, "read": 4, "scan": 2, "info": 2, "analyze": 2, "render": 1, "compact": 2, "valid_then_read": 2,
           "cli_info": 1, "cli_analyze": 1, "cli_report": 1, "cli_compact": 1, "cli_diff": 1}  # fmt: skip


class _Unexpected(Exception):
    """An operation ended in a way that is not a verdict or a tracefmt error."""


class _Inconsistent(Exception):
    """validate said valid but the reader refused the trace."""


class _Timeout(BaseException):
    """The case used more CPU time than its limit (raised by SIGPROF)."""


# ---------------------------------------------------------------------------------- a case
def plan(seed: int, index: int, n_seeds: int) -> tuple[int, list[int], str, random.Random]:
    """The seed trace, mutation indices and operation of case ``index`` (reproducible)."""
    from _fuzz_mutations import MUTATIONS, sparse_huge

    rng = random.Random(seed * 1_000_003 + index)
    seed_index = rng.randrange(n_seeds)
    mutations = [rng.randrange(len(MUTATIONS)) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    # A multi-gigabyte sparse file only ever comes last (other mutations read whole files).
    mutations = [m for m in mutations if MUTATIONS[m] is not sparse_huge] + [m for m in mutations if MUTATIONS[m] is sparse_huge][:1]
    names = list(OPERATIONS)
    op = rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
    return seed_index, mutations, op, rng


def _snapshot(scratch: Path) -> dict[str, str]:
    out = {}
    for p in sorted(scratch.rglob("*")):
        if p.relative_to(scratch).parts[0] in ("trace", "out") or p.is_symlink():
            continue
        if p.is_file():
            out[str(p.relative_to(scratch))] = p.read_bytes().hex()[:64] + str(p.stat().st_size)
    return out


def _where(tb: traceback.StackSummary) -> str:
    frames = [f for f in tb if "/tracefmt/" in f.filename or "/analyzers/" in f.filename or "/adapters/" in f.filename]
    f = (frames or list(tb) or [None])[-1]
    return f"{Path(f.filename).name}:{f.lineno}" if f else "?"


def run_case(seed: int, index: int, seeds: list[Path], workdir: Path, *, time_limit: float, op: str | None = None) -> dict:
    """Build and run case ``index`` in this process (with operation ``op`` instead of the planned one); return its outcome."""
    from _fuzz_mutations import MUTATIONS

    from tracefmt.errors import TraceError

    seed_index, mutation_ids, op_name, rng = plan(seed, index, len(seeds))
    op_name = op or op_name
    scratch = workdir / "case"
    if scratch.exists():
        for p in scratch.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(scratch)
    scratch.mkdir()
    (scratch / "victim.txt").write_text("victim: must never change\n")
    (scratch / "outside").mkdir()
    (scratch / "out").mkdir()
    (scratch / "outside" / "data.arrow").write_bytes(
        (seeds[seed_index] / "manifest.json").read_bytes() if (seeds[seed_index] / "manifest.json").is_file() else b"x"
    )
    trace = scratch / "trace"
    shutil.copytree(seeds[seed_index], trace, symlinks=True)
    if op_name == "cli_diff":
        shutil.copytree(seeds[seed_index], scratch / "reference", symlinks=True)
    labels = []
    for m in mutation_ids:
        try:
            labels.append(MUTATIONS[m](rng, trace, scratch))
        except Exception as exc:  # noqa: BLE001 - the mutation could not apply (a FIFO already there, an unreadable file)
            labels.append(f"{MUTATIONS[m].__name__}:skipped({type(exc).__name__})")
    before = _snapshot(scratch)
    record = {"index": index, "seed": seeds[seed_index].name, "mutations": labels, "op": op_name}
    # The limit is CPU time (a loaded machine must not turn slowness into "hang"); a case
    # blocked without using CPU (a FIFO) is caught by the runner's wall-clock limit.
    signal.setitimer(signal.ITIMER_PROF, time_limit)
    try:
        OPERATIONS[op_name](trace, scratch / "out")
        record["outcome"] = "verdict"
    except TraceError as exc:
        record["outcome"], record["detail"] = "error", str(exc)[:200]
    except _Timeout:
        record["outcome"], record["detail"] = "hang", f"over {time_limit:g} s"
    except MemoryError as exc:
        record["outcome"], record["detail"] = "memory", f"{type(exc).__name__} at {_where(traceback.extract_tb(exc.__traceback__))}"
    except _Inconsistent as exc:
        record["outcome"], record["detail"] = "inconsistent", str(exc)[:300]
    except RecursionError as exc:
        record["outcome"], record["detail"] = "unexpected", f"RecursionError at {_where(traceback.extract_tb(exc.__traceback__))}"
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        record["outcome"] = "unexpected"
        record["detail"] = f"{type(exc).__name__} at {_where(traceback.extract_tb(exc.__traceback__))}: {str(exc)[:160]}"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    if record["outcome"] in OK_OUTCOMES and _snapshot(scratch) != before:
        record["outcome"], record["detail"] = "escape", "a file outside the trace changed"
    return record


# ------------------------------------------------------------------------------- a worker
def worker_main() -> None:
    """Worker loop: read ``{"seed", "index"}`` lines from stdin, write one JSON outcome per line."""
    config = json.loads(sys.stdin.readline())
    seeds = [Path(p) for p in config["seeds"]]
    workdir = Path(config["workdir"])
    # Import everything an operation may need before limiting memory.
    import tracefmt.analyzers  # noqa: F401
    import tracefmt.analyzers.render  # noqa: F401
    import tracefmt.cli  # noqa: F401
    import tracefmt.compaction  # noqa: F401
    import tracefmt.summary  # noqa: F401

    os.environ.setdefault("MPLBACKEND", "Agg")
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + int(config.get("memory", MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(signum, frame):  # noqa: ARG001
        raise _Timeout()

    signal.signal(signal.SIGPROF, on_alarm)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        job = json.loads(line)
        rec = run_case(job["seed"], job["index"], seeds[: job.get("n_seeds", len(seeds))], workdir, time_limit=config["time_limit"], op=job.get("op"))
        rec["seed_number"] = job["seed"]
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------ the runner
def run_fuzz(seed: int, count: int, seeds: list[Path], *, workers: int = 2, time_limit: float = 10.0,
             start: int = 0, progress: Callable[[int, Counter], None] | None = None,
             on_problem: Callable[[dict], None] | None = None,
             cases: Sequence[tuple[int, int, int, str]] | None = None) -> list[dict]:  # fmt: skip
    """Run cases ``start .. start+count-1`` over ``workers`` worker processes; return every outcome.

    ``cases`` replaces that range with given ``(seed, index, number of seeds, operation)``:
    a case found when fewer seed traces or operations existed is replayed exactly, over the
    first seeds (new ones are only ever appended) and with its recorded operation (the
    operation is drawn with one random number, so the mutations that follow are the same).

    A worker that dies (a native crash, the memory limit) or stops answering within twice
    the time limit is replaced, and its case recorded as ``crash``, ``memory`` or ``hang``.
    """
    results: list[dict] = []
    wall_limit = max(120.0, 4 * time_limit)
    todo = [(seed, i, len(seeds), None) for i in range(start, start + count)][::-1] if cases is None else list(cases)[::-1]
    tmp = Path(tempfile.mkdtemp(prefix="tracefmt-fuzz-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    slots: list[dict] = []
    counts: Counter = Counter()

    def spawn(i: int) -> dict:
        wdir = tmp / f"w{i}-{time.monotonic_ns()}"
        wdir.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", "import _fuzz; _fuzz.worker_main()"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=wdir)  # fmt: skip
        proc.stdin.write(json.dumps({"seeds": [str(s) for s in seeds], "workdir": str(wdir), "time_limit": time_limit}) + "\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("fuzz worker failed to start")
        return {"proc": proc, "case": None, "since": 0.0, "dir": wdir}

    def send(slot: dict) -> None:
        if not todo:
            slot["case"] = None
            return
        slot["case"], slot["since"] = todo.pop(), time.monotonic()
        case_seed, index, n_seeds, op = slot["case"]
        slot["proc"].stdin.write(json.dumps({"seed": case_seed, "index": index, "n_seeds": n_seeds, "op": op}) + "\n")
        slot["proc"].stdin.flush()

    def lost(i: int, outcome: str, detail: str) -> None:
        slot = slots[i]
        case_seed, index, n_seeds, op = slot["case"]
        op = op or plan(case_seed, index, n_seeds)[2]
        results.append({"index": index, "seed_number": case_seed, "outcome": outcome, "detail": detail, "op": op})
        counts[outcome] += 1
        if on_problem:
            on_problem(results[-1])
        with contextlib.suppress(ProcessLookupError):
            slot["proc"].kill()
        slot["proc"].wait()
        shutil.rmtree(slot["dir"], ignore_errors=True)
        slots[i] = spawn(i)
        send(slots[i])

    try:
        for i in range(workers):
            slots.append(spawn(i))
            send(slots[i])
        while any(s["case"] is not None for s in slots):
            busy = {s["proc"].stdout.fileno(): i for i, s in enumerate(slots) if s["case"] is not None}
            ready, _, _ = select.select(list(busy), [], [], 1.0)
            for fd in ready:
                i = busy[fd]
                line = slots[i]["proc"].stdout.readline()
                if not line:
                    code = slots[i]["proc"].wait()
                    sig = -code if code < 0 else 0
                    name = signal.Signals(sig).name if sig else f"exit {code}"
                    lost(i, "memory" if sig == signal.SIGKILL else "crash", f"worker died: {name}")
                    continue
                rec = json.loads(line)
                results.append(rec)
                counts[rec["outcome"]] += 1
                if on_problem and rec["outcome"] not in OK_OUTCOMES:
                    on_problem(rec)
                send(slots[i])
                if progress and len(results) % 1000 == 0:
                    progress(len(results), counts)
            now = time.monotonic()
            for i, s in enumerate(slots):
                if s["case"] is not None and now - s["since"] > wall_limit:
                    lost(i, "hang", f"no answer within {wall_limit:g} s wall (blocked, or stuck in native code)")
    finally:
        for s in slots:
            with contextlib.suppress(Exception):
                s["proc"].stdin.close()
                s["proc"].kill()
                s["proc"].wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(results, key=lambda r: (r.get("seed_number", seed), r["index"]))


def summarize(results: list[dict]) -> tuple[Counter, Counter]:
    """Outcome counts, and the distinct problems (outcome, op, detail head) with their counts."""
    outcomes = Counter(r["outcome"] for r in results)
    problems = Counter((r["outcome"], r.get("op", "?"), (r.get("detail") or "")[:90]) for r in results if r["outcome"] not in OK_OUTCOMES)
    return outcomes, problems
