"""The ONNX package's backend test models, traced: valid traces with the expected outputs.

Every model in ``backend/test/data/{pytorch-converted,pytorch-operator,simple}`` that ONNX
Runtime can run is traced on its first test data set; the trace must validate and the
statistics of each graph output must equal those of the expected ``output_*.pb`` within
the backend tests' default tolerance (rtol 1e-3, atol 1e-7). Models ONNX Runtime cannot
run must make the tracer fail with a one-line UsageError, not crash. The ``light/``
models (full-size networks whose weights are generated at run time) must trace with the
model's node count.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tracefmt
from tracefmt.adapters.onnxruntime import load_graph, random_feed, read_array, trace_onnx
from tracefmt.analyzers.diff_compare import Tolerance, compare_stats
from tracefmt.errors import UsageError
from tracefmt.stats import tensor_stats

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
CASES = sorted(
    os.path.join(sub, case) for sub in ("pytorch-converted", "pytorch-operator", "simple") for case in os.listdir(os.path.join(DATA, sub))
)
LIGHT = sorted(glob.glob(os.path.join(DATA, "light", "*.onnx")))
BACKEND_TOLERANCE = Tolerance(atol=1e-7, rtol=1e-3)


def _numbered(folder: str, stem: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, f"{stem}_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))


def _plain_run(model_path: str, feed: dict) -> list | None:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"]).run(None, feed)
    except Exception:  # ORT's own exception types: this model is not runnable by ORT
        return None


def test_backend_data_present():
    assert len(CASES) >= 130 and len(LIGHT) == 9


@pytest.mark.parametrize("case", CASES)
def test_backend_model_traces_with_expected_outputs(case, tmp_path):
    folder = os.path.join(DATA, case)
    model_path = os.path.join(folder, "model.onnx")
    data = sorted(glob.glob(os.path.join(folder, "test_data_set_*")))[0]
    info = load_graph(model_path)
    feed = {vi.name: read_array(p) for vi, p in zip(info.required_inputs, _numbered(data, "input"))}
    expected = [read_array(p) for p in _numbered(data, "output")]
    if _plain_run(model_path, feed) is None:
        with pytest.raises(UsageError, match="ONNX Runtime"):
            trace_onnx(model_path, feed, tmp_path / "t")
        return
    path = trace_onnx(model_path, feed, tmp_path / "t")
    report = tracefmt.validate(path)
    assert report.valid, report.as_dict()
    trace = tracefmt.open(path)
    producers = {}
    for row in trace.nodes.to_pylist():
        for slot, name in enumerate(row["outputs"]):
            producers[name] = (row["node_id"], str(slot))
    records = {(r["node_id"], r["slot"]): r for r in trace.read(kinds=["activation"]).to_pylist()}
    assert len(expected) == len(info.graph.output)
    for out, want in zip(info.graph.output, expected):
        rec = records[producers[out.name]]
        assert rec["shape"] == list(np.shape(want)), out.name
        if np.asarray(want).dtype.kind in "biuf":
            cmp = compare_stats(rec, tensor_stats(want), BACKEND_TOLERANCE)
            assert cmp.error <= 1, (out.name, cmp)


@pytest.mark.parametrize("model_path", LIGHT, ids=os.path.basename)
def test_light_model_traces_every_node(model_path, tmp_path):
    info = load_graph(model_path)
    # Weights come from ConstantOfShape nodes at run time; their outputs are not recorded
    # here (hundreds of MB of constants), every other node output is.
    path = trace_onnx(model_path, random_feed(info), tmp_path / "t", histogram=None, channels=False, exclude_ops=("ConstantOfShape",))
    assert tracefmt.validate(path).valid
    trace = tracefmt.open(path)
    assert trace.nodes.num_rows == len(onnx.load(model_path, load_external_data=False).graph.node)
    observed = set(trace.read(kinds=["activation"], columns=["node_id"]).column("node_id").to_pylist())
    expected = {i for i, n in enumerate(info.nodes) if n.op_type not in ("ConstantOfShape", "Constant")}
    assert observed == expected
