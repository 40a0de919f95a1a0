"""The core commands info, validate and compact, --help everywhere, and the error convention."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracefmt.cli import build_parser, main

TRACEFMT = [sys.executable, "-m", "tracefmt.cli"]


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_core_commands_are_registered():
    assert {"info", "validate", "compact"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tracefmt {command}") and "--help" in out


def test_top_level_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "info" in capsys.readouterr().out
    assert main([]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["info"])  # missing TRACE
    assert exc.value.code == 2 and "TRACE" in _error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["validate", "x", "--format", "xml"])
    assert exc.value.code == 2 and "invalid choice: 'xml'" in _error_line(capsys)


def test_info(tiny_trace, capsys):
    assert main(["info", str(tiny_trace)]) == 0
    out = capsys.readouterr().out
    for text in ("tiny-mlp", "complete     yes", "4 (1 containers, 2 edges", "16 rows on 3 nodes", "activation 12, weight 4", "4 (0..3)", "loss", "records"):
        assert text in out, text
    assert main(["info", str(tiny_trace), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"]["rows"] == 16 and info["records"]["kinds"] == {"activation": 12, "weight": 4}
    assert info["records"]["steps"] == {"count": 4, "first": 0, "last": 3} and info["records"]["ranks"] == [0]
    assert info["nodes"]["count"] == 4 and info["complete"] is True and info["producer"]["adapter"] == "tests"
    assert info["sizes"]["records"]["files"] == 1 and info["sizes"]["records"]["bytes"] > 0


def test_validate_exit_codes_and_outputs(tiny_trace, capsys):
    assert main(["validate", str(tiny_trace)]) == 0
    assert "valid (0 errors, 0 warnings" in capsys.readouterr().out
    m = json.loads((tiny_trace / "manifest.json").read_text())
    (tiny_trace / "manifest.json").write_text(json.dumps({**m, "format_version": "9.1"}))
    assert main(["validate", str(tiny_trace), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and report["problems"][0]["code"] == "unsupported-version"
    assert main(["info", str(tiny_trace)]) == 2  # a reader refuses an unknown major version
    assert "9.1 is not supported" in _error_line(capsys)


def test_compact(tmp_path, capsys):
    from conftest import write_tiny_trace

    path = write_tiny_trace(tmp_path / "t", batch_rows=4, segment_bytes=20_000, flush_interval=0)
    assert main(["compact", str(path), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    tables = {p["table"]: p for p in result["partitions"]}
    assert tables["records"]["rows"] == 16 and len(tables["records"]["segments_replaced"]) > 1
    assert main(["compact", str(path)]) == 0
    assert "nothing to compact" in capsys.readouterr().out
    assert main(["validate", str(path)]) == 0


def test_compact_refuses_an_open_writer_unless_forced(tmp_path, capsys):
    from conftest import write_tiny_trace

    path = write_tiny_trace(tmp_path / "t")
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, "complete": False}))
    assert main(["compact", str(path)]) == 2
    assert "not complete" in _error_line(capsys)
    assert main(["compact", str(path), "--force", "--table", "records"]) == 0
    assert "records" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["info", "validate", "compact"])
def test_unreadable_inputs_give_one_line_and_exit_2(command, tmp_path, capsys, tiny_trace):
    assert main([command, str(tmp_path / "no-such.trace")]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"tracefmt {command}: error:") and "no-such.trace" in line and "no such directory" in line
    (tmp_path / "empty").mkdir()
    assert main([command, str(tmp_path / "empty")]) == 2
    assert "missing manifest.json" in _error_line(capsys)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_trace, broken)
    (broken / "manifest.json").write_text('{"format": "tracefmt", ')
    assert main([command, str(broken)]) == 2
    assert "manifest.json: not valid JSON" in _error_line(capsys)


def test_console_entry_point_has_no_traceback(tmp_path: Path):
    proc = subprocess.run([*TRACEFMT, "validate", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([*TRACEFMT, "compact", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--force" in proc.stdout
