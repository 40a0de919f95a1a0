"""The conformance suite (spec/conformance/): the validator's verdict on every case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tracefmt
from tracefmt.cli import main

CONFORMANCE = Path(__file__).resolve().parent.parent / "spec" / "conformance"
CASES = sorted(p for p in (CONFORMANCE / "cases").iterdir() if (p / "expected.json").is_file())


def _expected(case: Path) -> dict:
    return json.loads((case / "expected.json").read_text())


def test_suite_has_valid_and_invalid_cases():
    verdicts = [_expected(c)["verdict"] for c in CASES]
    assert verdicts.count("valid") >= 4 and verdicts.count("invalid") >= 15 and "unreadable" in verdicts


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validator_verdict(case: Path):
    exp = _expected(case)
    trace = case / "trace"
    if exp["verdict"] == "unreadable":
        with pytest.raises(tracefmt.TraceError) as info:
            tracefmt.validate(trace)
        assert all(word in str(info.value) for word in exp["mentions"])
        return
    report = tracefmt.validate(trace)
    assert report.valid == (exp["verdict"] == "valid"), str(report)
    for code, word in zip(exp["codes"], exp["mentions"]):
        messages = [p.message + " " + (p.file or "") + " " + (p.column or "") for p in report.problems if p.code == code]
        assert messages, f"{case.name}: expected a '{code}' problem, got {sorted(report.codes)}"
        assert any(word in m for m in messages), f"{case.name}: no '{code}' message mentions {word!r}: {messages}"
    if exp["verdict"] == "invalid":
        # One defect per case: every error is of an expected code.
        assert {p.code for p in report.errors} <= set(exp["codes"]), str(report)
    else:
        for problem in report.problems:
            assert problem.code in exp["codes"], str(report)


@pytest.mark.parametrize("case", [c for c in CASES if _expected(c).get("readable_rows")], ids=lambda c: c.name)
def test_valid_cases_read_back(case: Path):
    trace = tracefmt.open(case / "trace")
    for table, rows in _expected(case)["readable_rows"].items():
        assert trace.dataset(table).count_rows() == rows


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_exit_code(case: Path, capsys):
    code = main(["validate", str(case / "trace"), "--format", "json"])
    verdict = _expected(case)["verdict"]
    assert code == {"valid": 0, "invalid": 1, "unreadable": 2}[verdict]
    captured = capsys.readouterr()
    if verdict == "unreadable":
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    else:
        assert json.loads(captured.out)["valid"] == (verdict == "valid")


def test_generator_reproduces_the_committed_cases(tmp_path):
    """The committed cases are exactly what generate.py (pyarrow + numpy only) writes."""
    script = (CONFORMANCE / "generate.py").read_text()
    assert "import tracefmt" not in script and "from tracefmt" not in script
    copy = tmp_path / "generate.py"
    copy.write_text(script)
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True)
    generated = sorted(p.relative_to(tmp_path / "cases") for p in (tmp_path / "cases").rglob("*") if p.is_file())
    committed = sorted(p.relative_to(CONFORMANCE / "cases") for p in (CONFORMANCE / "cases").rglob("*") if p.is_file())
    assert generated == committed
    for rel in generated:
        if rel.name == "expected.json":
            assert (tmp_path / "cases" / rel).read_text() == (CONFORMANCE / "cases" / rel).read_text()
