"""The HTML report: content, self-containment, and a real headless Chromium loading it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _render_traces import write_trace

from tracefmt.analyzers.render import build_report, write_report
from tracefmt.analyzers.render.colors import NONFINITE_FILL
from tracefmt.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with console messages logged to stderr."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri(),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def page_status(page: Path, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The attributes the page's status script wrote, and the console messages Chromium logged."""
    proc = chromium(page, tmp, "--dump-dom")
    m = re.search(r'<pre id="page-status"([^>]*)>([^<]*)</pre>', proc.stdout)
    assert m, "the page did not render its status element"
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', m.group(1)))
    attrs["text"] = m.group(2)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return attrs, console


def screenshot(page: Path, tmp: Path, height: int = 4000) -> np.ndarray:
    from PIL import Image

    png = tmp / f"{page.stem}.png"
    proc = chromium(page, tmp, f"--screenshot={png}", f"--window-size=1280,{height}")
    assert png.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB"))


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    trace = write_trace(tmp / "toy.trace")
    return write_report(trace, tmp / "report.html")


def test_report_content_and_self_contained(toy_report):
    html = toy_report.html
    assert toy_report.path.read_text(encoding="utf-8") == html
    # The stored findings of the hand-written trace are shown (analyzer "handwritten" is not registered, so they are kept).
    assert "dead-layer" in html and "low-std" in html
    assert set(toy_report.findings.column("code").to_pylist()) >= {"dead-layer", "low-std"}
    assert "Run summary" in html and "toy-resnet" in html and "loss (train), last of 3" in html
    # The annotated graphs are inline SVG, one per metric that has records.
    assert html.count("<svg") == len(toy_report.graphs) == 3
    assert NONFINITE_FILL in html
    # Nothing is fetched: no external src/href, no stylesheet or script links.
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert "<link" not in html and "<script src" not in html
    assert not toy_report.figure_errors


@needs_chromium
def test_error_hook_catches_a_failing_script(tmp_path):
    # Control: the page's hook and the console check do see an error when there is one.
    info = build_report(write_trace(tmp_path / "t.trace"))
    broken = tmp_path / "broken.html"
    broken.write_text(info.html.replace("</main>", "<script>throw new Error('boom-control')</script></main>"))
    attrs, console = page_status(broken, tmp_path)
    assert attrs["data-errors"] == "1" and "boom-control" in attrs["text"]
    assert any("boom-control" in line for line in console)


@needs_chromium
def test_report_loads_in_chromium_without_errors(toy_report, tmp_path):
    attrs, console = page_status(toy_report.path, tmp_path)
    assert attrs["data-loaded"] == "1"
    assert attrs["data-errors"] == "0" and attrs["text"] == ""
    assert attrs["data-broken-images"] == "0"
    assert int(attrs["data-svgs"]) >= 3
    assert console == []
    shot = screenshot(toy_report.path, tmp_path)
    assert shot.std() > 20  # not a blank page
    # The dead layer's fill (top of the dead-fraction scale) and the NaN magenta are on screen.
    colours = {tuple(c) for c in shot.reshape(-1, 3)[:: 7].tolist()}
    assert (0xD4, 0x00, 0x6A) in colours


def test_report_cli_exit_code_and_output(tmp_path, capsys):
    trace = write_trace(tmp_path / "t.trace")
    out = tmp_path / "r.html"
    assert main(["report", str(trace), "-o", str(out)]) == 1  # the stored findings include an error
    line = capsys.readouterr().out
    errors = int(re.search(r"\((\d+) error", line).group(1))
    assert errors >= 1 and line.startswith(f"wrote {out}")
    assert out.read_text().startswith("<!DOCTYPE html>")
    clean = write_trace(tmp_path / "clean.trace", with_findings=False, healthy=True)
    assert main(["report", str(clean), "-o", str(tmp_path / "c.html"), "--only", "gradients"]) == 0
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "m.html")]) == 2
