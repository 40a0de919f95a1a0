"""The mutation fuzzer in CI: a fixed, seeded set of damaged and hostile traces.

Every case (a conformance or adapter-written trace with one to three mutations, one
operation: validate, read, info, analyze, render, report, compact or a CLI command) must
end in a verdict or a one-line tracefmt error: no other exception, no native crash, no
hang, no memory blow-up, no file outside the trace touched. ``make fuzz`` runs the same
fuzzer over many more cases by hand (bench/fuzz.py).
"""

from __future__ import annotations

import pytest
from _fuzz import OK_OUTCOMES, build_seeds, run_fuzz, summarize

CASES = 2000
SEED = 13


@pytest.mark.slow
def test_fuzzed_traces_end_in_a_verdict_or_a_tracefmt_error(tmp_path_factory):
    seeds = build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))
    results = run_fuzz(SEED, CASES, seeds, workers=2, time_limit=30.0)
    assert len(results) == CASES
    outcomes, problems = summarize(results)
    bad = [r for r in results if r["outcome"] not in OK_OUTCOMES]
    assert not bad, f"{dict(outcomes)}; first problems: " + "; ".join(f"{n}x {k}" for k, n in problems.most_common(10))
    # The mutations reach the code: both verdicts and refusals occur.
    assert outcomes["verdict"] > CASES // 20 and outcomes["error"] > CASES // 20


#: Cases the long hand runs (bench/RESULTS.md) found and that were fixed: ``(fuzzer seed,
#: case index, seed traces that existed then, operation)``. Replayed exactly (same trace,
#: same mutations, same operation), each must now end in a verdict or a tracefmt error.
REGRESSIONS = [
    (2, 38327, 33, "cli_report"),  # OverflowError on statistics near 1e300
    (2, 29037, 33, "valid_then_read"),  # null tensors.values called valid
    (3, 21981, 33, "cli_report"),  # non-UTF-8 Parquet column names
    (3, 10329, 33, "analyze"),  # the harness aborted rewriting a damaged table
    (4, 596, 33, "cli_report"),  # manifest 'producer' a string
    (4, 747, 33, "analyze"),  # histograms without bins
    (4, 6320, 33, "read"),  # a Parquet list column retyped to string
    (4, 37428, 33, "validate"),  # format_version '².0'
    (12, 14393, 34, "read"),  # Parquet column chunks of different lengths
    (15, 28953, 34, "render"),  # the harness blocked writing a journal into a FIFO it had made
    (15, 49328, 34, "info"),  # a damaged IPC footer block read after the column checks
]


@pytest.mark.slow
def test_cases_found_by_long_runs_stay_fixed(tmp_path_factory):
    seeds = build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))
    results = run_fuzz(0, 0, seeds, workers=2, time_limit=30.0, cases=REGRESSIONS)
    assert [(r["seed_number"], r["index"], r["op"]) for r in results] == sorted((s, i, op) for s, i, _, op in REGRESSIONS)
    assert [r for r in results if r["outcome"] not in OK_OUTCOMES] == []
