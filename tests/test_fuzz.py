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
