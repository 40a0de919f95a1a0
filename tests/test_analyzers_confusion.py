"""The confusion analyzer on real traced runs with predictions."""

from __future__ import annotations

import numpy as np
from _analyzer_runs import cached, healthy_mlp, mlp, train

import tracefmt
import tracefmt.analyzers as ta


def test_matrix_and_accuracy_match_the_predictions_table():
    path = cached("healthy-mlp", healthy_mlp)
    res = ta.run(path, names=["confusion"]).results["confusion"]
    pred = tracefmt.open(path).predictions
    last = max(pred.column("step").to_pylist())
    rows = [r for r in pred.to_pylist() if r["phase"] == "eval" and r["step"] == last]
    cm = np.zeros((10, 10), dtype=int)
    for r in rows:
        cm[r["y_true"], r["y_pred"]] += 1
    assert res.data["phase"] == "eval"
    assert np.array_equal(np.array(res.data["matrix"]), cm)
    assert res.data["accuracy"] == np.trace(cm) / cm.sum()
    per_class = np.diag(cm) / cm.sum(axis=1)
    assert np.allclose(res.data["per_class_accuracy"], per_class)
    pair = res.data["confused_pairs"][0]
    off = cm - np.diag(np.diag(cm))
    assert pair["count"] == off.max() and off[pair["true"], pair["pred"]] == off.max()


def test_class_missing_from_training_is_never_predicted(tmp_path):
    # Class 3 is left out of the training set: nothing teaches the model to predict it.
    path = train(tmp_path / "no3.trace", mlp(), steps=60, optimizer="adam", lr=1e-2, eval_every=20, predictions=True, exclude_class=3, channels=False, weight_updates=False)
    report = ta.run(path, names=["confusion"])
    never = [f for f in report.findings_list if f.code == "never-predicted"]
    assert len(never) == 1 and "Class 3 " in never[0].message and never[0].severity == "warning"
    assert report.results["confusion"].data["per_class_accuracy"][3] == 0.0
    assert not [f for f in report.findings_list if f.code == "collapsed-predictions"]
