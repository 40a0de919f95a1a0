"""Traces on object storage: URIs and filesystem= for open, validate, compact, analyze, report and the CLI.

A local S3 server (moto in server mode on 127.0.0.1) is started by the fixture; the trace
is uploaded file by file, as a user syncs closed segments, and read back through tracefmt.
"""

from __future__ import annotations

import json
import os
import socket

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from conftest import write_tiny_trace

import tracefmt
from tracefmt.cli import main

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3():
    """(pyarrow S3FileSystem, URI query string) of a fresh local S3 server with bucket 'traces'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true"
    )
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
            allow_bucket_creation=True,
        )
        fs.create_dir("traces")
        yield fs, f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _upload(fs, local, key: str) -> str:
    pafs.copy_files(str(local), f"traces/{key}", destination_filesystem=fs)
    return key


def test_open_validate_info_analyze_report_and_compact_an_s3_trace(tmp_path, s3, capsys):
    fs, query = s3
    local = write_tiny_trace(tmp_path / "tiny.trace", steps=6, options=tracefmt.WriterOptions(roll_steps=2, flush_interval=0))
    _upload(fs, local, "lake/tiny.trace")
    uri = f"s3://traces/lake/tiny.trace?{query}"
    want = tracefmt.open(local).read().sort_by([("step", "ascending"), ("node_id", "ascending")])
    got = tracefmt.open(uri).read().sort_by([("step", "ascending"), ("node_id", "ascending")])
    assert got.equals(want)
    assert tracefmt.open("traces/lake/tiny.trace", filesystem=fs).records.count_rows() == want.num_rows
    assert tracefmt.validate(uri).valid
    assert main(["validate", uri]) == 0 and main(["info", uri]) == 0
    assert main(["analyze", uri, "--only", "dead,activations"]) in (0, 1)
    html = tmp_path / "r.html"
    assert main(["report", uri, "-o", str(html), "--only", "dead"]) in (0, 1) and html.stat().st_size > 0
    capsys.readouterr()
    # Compaction on S3: one file per partition afterwards, the same rows for an outside reader.
    assert main(["compact", uri]) == 0
    files = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector("traces/lake/tiny.trace/records", recursive=True))
        if f.type == pafs.FileType.File
    ]
    assert len(files) == 1 and files[0].endswith(".parquet")
    assert ds.dataset(files, format="parquet", filesystem=fs).count_rows() == want.num_rows
    with pytest.raises(tracefmt.TraceNotFoundError):
        tracefmt.open(f"s3://traces/lake/missing.trace?{query}")
    assert main(["info", f"s3://traces/lake/missing.trace?{query}"]) == 2


def test_an_s3_lake_with_a_run_selection(tmp_path, s3, capsys):
    fs, query = s3
    for run in ("r1", "r2"):
        _upload(
            fs,
            write_tiny_trace(tmp_path / f"{run}.trace", run_id=run, options=tracefmt.WriterOptions(flush_interval=0)),
            f"lake2/{run}.trace",
        )
    chosen = tracefmt.open(f"s3://traces/lake2?{query}", run="r2")
    assert chosen.run_id == "r2" and chosen.records.count_rows() > 0
    # Only the chosen run's files are copied (and the other members' manifests, to find it).
    copied = sorted(str(p.relative_to(chosen.path.parent)) for p in chosen.path.parent.rglob("*") if p.is_file())
    assert [c for c in copied if not c.startswith("r2.trace/")] == ["r1.trace/manifest.json"]
    # The CLI takes a remote lake and a run selection too.
    assert main(["analyze", f"s3://traces/lake2?{query}", "--run", "r1", "--run", "r2", "--only", "dead", "--format", "json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    assert sorted(os.path.basename(t) for t in out["traces"]) == ["r1.trace", "r2.trace"]
    assert main(["report", f"s3://traces/lake2?{query}", "--run", "r1", "-o", str(tmp_path / "r1.html"), "--only", "dead"]) in (0, 1)
    assert (tmp_path / "r1.html").stat().st_size > 0
    with pytest.raises(tracefmt.UsageError, match="available: r1, r2"):
        tracefmt.open(f"s3://traces/lake2?{query}")


def test_an_fsspec_filesystem(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    local = write_tiny_trace(tmp_path / "t.trace", options=tracefmt.WriterOptions(flush_interval=0))
    mem.put(str(local), "/store/t.trace", recursive=True)
    mem.pipe("/store/t.trace/records/rank-0/.part-00099.open.arrow", b"x")  # hidden files are never copied
    t = tracefmt.open("/store/t.trace", filesystem=mem)
    assert t.records.count_rows() == tracefmt.open(local).records.count_rows()
    assert tracefmt.validate("/store/t.trace", filesystem=mem).valid
