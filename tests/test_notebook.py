"""Notebooks: a real notebook executed by nbclient shows traces, reports, diffs and figures inline."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    """
import torch, tracefmt, tracefmt.analyzers as ta
from tracefmt.adapters.torch import TorchTracer
from tracefmt.analyzers.diff import diff_traces

def run(path, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TorchTracer(model, path, optimizer=opt) as tracer:
        for _ in range(4):
            x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); tracer.log_scalar("loss", loss); opt.step()
    return path

a, b = run(WORK + "/a.trace", 0), run(WORK + "/b.trace", 0)
""",
    "tracefmt.open(a)",
    "report = ta.run(a, names=['activations', 'loss']); report",
    "diff_traces(a, b)",
    "report.results['activations'].figure('telemetry')",
]


@pytest.mark.slow
def test_notebook_shows_trace_report_diff_and_figures_inline(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"WORK = {str(tmp_path)!r}")] + [nbformat.v4.new_code_cell(c) for c in CELLS]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outs = [c.outputs for c in nb.cells]
    html = [next((o["data"].get("text/html", "") for o in out if o.get("output_type") == "execute_result"), "") for out in outs]
    assert "tracefmt trace" in html[2] and "Sequential" in html[2] and "steps" in html[2]
    assert "tracefmt analysis" in html[3] and "data:image/png;base64," in html[3] and ("healthy" in html[3] or "warnings" in html[3])
    assert "no divergence" in html[4]
    figure = next(o for o in outs[5] if o.get("output_type") == "execute_result")
    assert "image/png" in figure["data"]  # a bare Figure displays without %matplotlib inline
