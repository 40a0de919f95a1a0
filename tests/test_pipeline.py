"""The analyzer pipeline, registry and CLI on traces written with plain pyarrow (no tracefmt writer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import tracefmt
import tracefmt.analyzers as ta
from tracefmt.cli import main
from tracefmt.errors import UsageError
from tracefmt.schema import FINDINGS

STEPS = 20
NODES = ["fc1", "relu1", "fc2"]


def write_plain_trace(path: Path, *, dead: bool = True) -> Path:
    """A conforming trace written with pyarrow and json only: activations, no gradients, a loss.

    ``relu1`` outputs only zeros when ``dead`` (a dead layer by construction).
    """
    path.mkdir(parents=True)
    manifest = {"format": "tracefmt", "format_version": "1.0", "run_id": f"plain-{path.name}", "created": "2026-11-23T00:00:00+00:00", "complete": True, "producer": {"adapter": "hand-written"}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    nodes = pa.table(
        {
            "node_id": pa.array([0, 1, 2], pa.int32()),
            "name": NODES,
            "scope": NODES,
            "op_type": ["Linear", "ReLU", "Linear"],
            "parent": pa.array([None, None, None], pa.int32()),
            "container": [False, False, False],
            "inputs": [["x"], ["h1"], ["a1"]],
            "outputs": [["h1"], ["a1"], ["y"]],
            "attributes": pa.array([None, None, None], pa.string()),
            "param_count": pa.array([80, 0, 18], pa.int64()),
            "order": pa.array([0, 1, 2], pa.int32()),
            "note": pa.array([None, None, None], pa.string()),
        }
    )
    with ipc.new_file(str(path / "nodes.arrow"), nodes.schema) as w:
        w.write_table(nodes)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("step", "phase", "rank", "node_id", "kind", "slot", "call", "dtype", "shape", "numel", "nan_count", "inf_count", "zero_count", "pos_count", "mean", "std", "min", "max", "abs_mean", "l2")}
    for step in range(STEPS):
        for nid in range(3):
            x = rng.standard_normal(256) * (1.0 + 0.1 * step)
            if nid == 1:
                x = np.zeros(256) if dead else np.maximum(x, 0)
            stats = {"numel": 256, "nan_count": 0, "inf_count": 0, "zero_count": int((x == 0).sum()), "pos_count": int((x > 0).sum()), "mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max(), "abs_mean": np.abs(x).mean(), "l2": float(np.sqrt((x**2).sum()))}
            for k, v in {"step": step, "phase": "train", "rank": 0, "node_id": nid, "kind": "activation", "slot": "0", "call": 0, "dtype": "float32", "shape": [16, 16], **stats}.items():
                rows[k].append(v)
    types = {"step": pa.int64(), "rank": pa.int32(), "node_id": pa.int32(), "call": pa.int32(), "shape": pa.list_(pa.int64()), "numel": pa.int64(), "nan_count": pa.int64(), "inf_count": pa.int64(), "zero_count": pa.int64(), "pos_count": pa.int64()}
    records = pa.table({k: pa.array(v, types.get(k, pa.float64() if isinstance(v[0], float) else None)) for k, v in rows.items()})
    (path / "records" / "rank=0").mkdir(parents=True)
    with ipc.new_file(str(path / "records" / "rank=0" / "part-00000.arrow"), records.schema) as w:
        w.write_table(records)
    loss = 2.3 * np.exp(-np.arange(STEPS) / 8) + 0.1
    scalars = pa.table({"step": pa.array(range(STEPS), pa.int64()), "phase": ["train"] * STEPS, "rank": pa.array([0] * STEPS, pa.int32()), "name": ["loss"] * STEPS, "value": loss})
    (path / "scalars" / "rank=0").mkdir(parents=True)
    with ipc.new_file(str(path / "scalars" / "rank=0" / "part-00000.arrow"), scalars.schema) as w:
        w.write_table(scalars)
    return path


@pytest.fixture()
def plain(tmp_path):
    return write_plain_trace(tmp_path / "plain.trace")


def test_registry_lists_the_builtins_without_importing_them():
    assert {"activations", "dead", "gradients", "loss", "confusion"} <= set(ta.names())
    assert ta.entries()["dead"].target == "tracefmt.analyzers.dead:DeadAnalyzer"
    assert ta.get("dead").name == "dead"
    with pytest.raises(UsageError, match="unknown analyzer 'deed'; available: .*dead"):
        ta.get("deed")


def test_plain_pyarrow_trace_analyzed_and_missing_needs_skipped(plain):
    report = ta.run(plain, names=["activations", "dead", "gradients", "loss", "confusion"])
    assert set(report.results) == {"activations", "dead", "loss"}
    assert "kind gradient or weight_grad" in report.skipped["gradients"]
    assert "predictions" in report.skipped["confusion"]
    dead = [f for f in report.findings_list if f.code == "dead-layer"]
    assert [(f.node, f.severity) for f in dead] == [("relu1", "error")]
    table = report.findings
    assert table.schema.equals(FINDINGS.schema) and table.num_rows == len(report.findings_list)
    assert table.column("severity")[0].as_py() == "error"  # most severe first


def test_params_flat_nested_and_errors(plain):
    flat = ta.run(plain, names="dead", params={"dead.threshold": 0.95})
    nested = ta.run(plain, names="dead", params={"dead": {"threshold": 0.95}})
    assert flat.params["dead"]["threshold"] == nested.params["dead"]["threshold"] == 0.95
    with pytest.raises(UsageError, match=r"unknown parameter 'dead.thresh'; dead has: threshold, "):
        ta.run(plain, names="dead", params={"dead.thresh": 1})
    with pytest.raises(UsageError, match=r"unknown analyzer 'nope' in parameter 'nope.x'; available: "):
        ta.run(plain, names="dead", params={"nope.x": 1})
    with pytest.raises(UsageError, match="cannot read 'high' as float"):
        ta.run(plain, names="dead", params={"dead.threshold": "high"})
    with pytest.raises(UsageError, match="expected float, got list"):
        ta.run(plain, names="dead", params={"dead.threshold": [1]})
    with pytest.raises(UsageError, match="unknown analyzer 'deed'"):
        ta.run(plain, names="deed")


def test_several_traces_single_run_analyzers_run_on_each(tmp_path):
    a = write_plain_trace(tmp_path / "a.trace")
    b = write_plain_trace(tmp_path / "b.trace", dead=False)
    report = ta.run([a, tracefmt.open(b)], names=["dead"])
    assert len(report.per_trace) == 2 and all("dead" in r for r in report.per_trace)
    dead = [f for f in report.findings_list if f.code == "dead-layer"]
    assert [f.message.split("]")[0] for f in dead] == ["[a.trace"]


def test_progress_callback_counts_scanned_records(plain):
    seen = []
    ta.run(plain, names=["dead"], progress=seen.append)
    assert sum(seen) >= STEPS * 3


def test_cli_table_exit_code_and_skip_reason(plain, capsys):
    assert main(["analyze", str(plain), "--only", "dead,gradients", "--no-progress"]) == 1
    out = capsys.readouterr().out
    # The verdict comes first, then the findings table.
    assert out.splitlines()[0].startswith("Root cause: 'relu1' at step ")
    assert out.splitlines()[2].split()[:3] == ["severity", "analyzer", "code"]
    assert "dead-layer" in out and "relu1" in out
    assert "skipped gradients: the trace has no records of kind gradient or weight_grad" in out
    assert main(["analyze", str(plain), "--only", "dead", "--set", "dead.threshold=1.5", "--set", "dead.error_threshold=1.5"]) == 0


def test_cli_usage_errors_are_one_line_exit_2(plain, capsys):
    assert main(["analyze", str(plain), "--only", "deed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown analyzer 'deed'; available:" in err
    assert main(["analyze", str(plain), "--set", "dead.threshold"]) == 2
    assert "--set expects ANALYZER.PARAM=VALUE" in capsys.readouterr().err
    assert main(["analyze", str(plain.parent / "missing.trace")]) == 2


def test_cli_json_out_and_write(plain, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = main(["analyze", str(plain), "--only", "dead,activations", "--format", "json", "--out", str(out_dir), "--figure-format", "png,svg", "--write"])
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["findings"][0]["code"] == "dead-layer" and data["ran"] == ["activations", "dead"]
    with pa.memory_map(str(out_dir / "findings.arrow")) as src:
        table = ipc.open_file(src).read_all()
    assert table.schema.equals(FINDINGS.schema) and table.num_rows == len(data["findings"])
    assert json.loads((out_dir / "findings.json").read_text())["findings"] == data["findings"]
    figures = sorted(p.name for p in (out_dir / "figures").iterdir())
    assert "dead-dead_fraction.png" in figures and "dead-dead_fraction.svg" in figures and "activations-telemetry.png" in figures
    stored = tracefmt.open(plain).findings
    assert stored is not None and "dead-layer" in stored.column("code").to_pylist()
    assert sorted(p.name for p in (plain / "findings").iterdir()) == ["activations.parquet", "dead.parquet"]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracefmt.cli", *args], capture_output=True, env={**os.environ, **(env or {})}, timeout=120)


def test_cli_arrow_stream_to_stdout(plain):
    proc = _cli("analyze", str(plain), "--only", "dead", "--format", "arrow")
    assert proc.returncode == 1
    table = ipc.open_stream(pa.py_buffer(proc.stdout)).read_all()
    assert table.schema.equals(FINDINGS.schema) and "dead-layer" in table.column("code").to_pylist()


PLUGIN = '''
from tracefmt.analyzers import Analyzer, AnalyzerResult, Needs, Param
from tracefmt.findings import Finding


class RecordCount(Analyzer):
    """Counts records (a third-party analyzer)."""

    name = "reccount"
    description = "Counts the records of a trace."
    needs = Needs(tables=("records",))
    params = (Param("limit", 10, "warn above this many records"),)

    def analyze(self, trace, params):
        n = sum(b.num_rows for b in trace.scan(columns=["step"]))
        sev = "warning" if n > params["limit"] else "info"
        return AnalyzerResult(findings=[Finding("reccount", "record-count", sev, f"{n} records", value=n, threshold=params["limit"])])
'''


@pytest.fixture()
def plugin_path(tmp_path):
    """A third-party distribution on sys.path: a module and a dist-info declaring its entry points."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "tf_reccount.py").write_text(textwrap.dedent(PLUGIN))
    (root / "tf_broken.py").write_text("raise ImportError('tf_broken needs a package that is not installed')\n")
    info = root / "tf_reccount-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-reccount\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tracefmt.analyzers]\nreccount = tf_reccount:RecordCount\nbroken = tf_broken:Nope\n")
    return {"PYTHONPATH": str(root)}


def test_third_party_analyzer_runs_through_the_cli(plain, plugin_path):
    listed = _cli("analyzers", "--format", "json", env=plugin_path)
    assert listed.returncode == 0
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["reccount"]["distribution"] == "tf-reccount" and rows["reccount"]["params"][0]["name"] == "limit"
    assert "tf_broken needs a package" in rows["broken"]["error"]
    proc = _cli("analyze", str(plain), "--only", "reccount", "--set", "reccount.limit=5", env=plugin_path)
    assert proc.returncode == 0, proc.stderr
    assert "record-count" in proc.stdout.decode() and "60 records" in proc.stdout.decode()
    assert "warning" in proc.stdout.decode()


def test_broken_plugin_reported_when_selected_not_at_startup(plain, plugin_path):
    everything = _cli("analyze", str(plain), "--format", "json", env=plugin_path)
    assert everything.returncode == 1  # the dead layer; the broken plugin does not stop the others
    skipped = {s["analyzer"]: s["reason"] for s in json.loads(everything.stdout)["skipped"]}
    assert "could not be loaded" in skipped["broken"]
    chosen = _cli("analyze", str(plain), "--only", "broken", env=plugin_path)
    assert chosen.returncode == 2
    assert chosen.stderr.decode().count("\n") == 1 and "tf_broken needs a package" in chosen.stderr.decode()
