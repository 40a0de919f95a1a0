"""Run the trace fuzzer by hand (``make fuzz``): many seeded mutants, an outcome table.

Usage: ``python bench/fuzz.py [--cases 100000] [--seed 1] [--workers 2] [--time-limit 30]``.
Cases run in worker processes with a memory limit and a time limit (tests/_fuzz.py);
progress is printed every 1,000 cases and the outcome table, the distinct problems and
the CPU time at the end. Exit code 1 if any case ended other than in a verdict or a
tracefmt error.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _fuzz import OK_OUTCOMES, build_seeds, run_fuzz, summarize  # noqa: E402


def main() -> int:
    """Run the fuzzer and print its outcome table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first case index (to resume)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=30.0)
    args = ap.parse_args()
    started = time.monotonic()
    print(
        f"tracefmt fuzz: {args.cases} cases, seed {args.seed}, {args.workers} workers, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tracefmt-fuzz-seeds-") as tmp:
        seeds = build_seeds(Path(tmp))

        def progress(done: int, counts: object) -> None:
            print(f"  {done} cases, {time.monotonic() - started:.0f} s: {dict(counts)}", flush=True)

        def problem(rec: dict) -> None:
            print(f"  problem: {json.dumps(rec)}", flush=True)

        results = run_fuzz(args.seed, args.cases, seeds, workers=args.workers, time_limit=args.time_limit, start=args.start,
                           progress=progress, on_problem=problem)  # fmt: skip
    outcomes, problems = summarize(results)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\n{len(results)} cases in {time.monotonic() - started:.0f} s wall, {cpu.ru_utime + cpu.ru_stime:.0f} CPU-s in workers")
    print("| outcome | cases | share |\n|---|---|---|")
    for name in ("verdict", "error", "unexpected", "memory", "crash", "hang", "escape", "inconsistent"):
        print(f"| {name} | {outcomes.get(name, 0)} | {100 * outcomes.get(name, 0) / max(1, len(results)):.2f} % |")
    for (outcome, op, detail), n in problems.most_common(40):
        print(f"{n:6d}  {outcome:12s} {op:16s} {detail}")
    return 0 if all(r["outcome"] in OK_OUTCOMES for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
