"""Confusion matrix, per-class accuracy and the most confused class pairs, from predictions.

The confusion matrix ``C[i, j]`` counts samples of true class ``i`` predicted as ``j``;
per-class accuracy (recall) is ``C[i, i] / sum_j C[i, j]``; balanced accuracy is its mean
over the classes present (Brodersen et al. 2010, "The balanced accuracy and its posterior
distribution"). The predictions table is streamed, so its size does not matter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from tracefmt import Trace
from tracefmt.errors import UsageError
from tracefmt.findings import Finding

from .base import Analyzer, AnalyzerResult, Needs, NotApplicable, Param

__all__ = ["ConfusionAnalyzer", "confusion_matrix", "MAX_CLASSES"]

#: Most classes a confusion matrix is built for (a dense int64 matrix of 32 MiB).
MAX_CLASSES = 2048


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = samples of class ``i`` predicted as ``j`` (int64, square)."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class ConfusionAnalyzer(Analyzer):
    """Confusion matrix, per-class accuracy, most confused pairs, collapsed or missing classes."""

    name = "confusion"
    description = "Confusion matrix, per-class accuracy and the most confused class pairs from the predictions table; flags classes never predicted and predictions collapsed onto one class."
    needs = Needs(tables=("predictions",))
    params = (
        Param("phase", "", "phase to evaluate; empty: eval if present, else train, else infer"),
        Param("window", 0.1, "train phase: use predictions of this last fraction of the steps (eval/infer: the last step)", low=0, low_open=True, high=1),
        Param("min_support", 10, "classes with fewer true samples are not judged", low=0),
        Param("weak_ratio", 0.5, "a class whose accuracy is below this multiple of the balanced accuracy is weak (info)", low=0),
        Param("collapse_share", 0.9, "one class receiving at least this share of predictions (while truly at most half) is a collapse", low=0, high=1),
        Param("top_pairs", 3, "most confused pairs reported", low=0),
    )

    def analyze(self, trace: Trace, params: dict[str, Any]) -> AnalyzerResult:
        """Build the confusion matrix of ``trace``'s predictions."""
        spans: dict[str, list[int]] = {}
        for batch in trace.scan("predictions", columns=["step", "phase"]):
            for phase in pc.unique(batch.column("phase")).to_pylist():
                steps = batch.column("step").filter(pc.equal(batch.column("phase"), phase))
                mm = pc.min_max(steps).as_py()
                lo_hi = spans.setdefault(phase, [mm["min"], mm["max"]])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], mm["min"]), max(lo_hi[1], mm["max"])
        phase = str(params["phase"]) or next((p for p in ("eval", "train", "infer") if p in spans), "")
        if phase not in spans:
            if params["phase"]:
                raise UsageError(f"confusion.phase={phase!r}: the predictions table has phases {', '.join(sorted(spans)) or 'none'}")
            raise NotApplicable("the predictions table has no rows")
        lo, hi = spans[phase]
        first = hi if phase != "train" else int(hi - np.floor((hi - lo) * float(params["window"])))
        pairs: dict[tuple[int, int], int] = {}
        for batch in trace.scan("predictions", columns=["y_true", "y_pred"], phases=[phase], steps=(first, hi)):
            if not batch.num_rows:
                continue
            yt = batch.column("y_true").to_numpy(zero_copy_only=False)
            yp = batch.column("y_pred").to_numpy(zero_copy_only=False)
            if yt.dtype.kind not in "iu" or yp.dtype.kind not in "iu":
                raise UsageError(f"{trace.path}: table 'predictions' columns 'y_true'/'y_pred' hold nulls or non-integer class indices")
            if (yt < 0).any() or (yp < 0).any():
                raise UsageError(f"{trace.path}: table 'predictions' columns 'y_true'/'y_pred' hold negative class indices")
            # Counted per distinct (true, predicted) pair: memory follows the classes present,
            # never the size of a label a trace merely declares.
            uniq, counts = np.unique(np.stack([yt.astype(np.int64), yp.astype(np.int64)], axis=1), axis=0, return_counts=True)
            for (t, p), c in zip(uniq.tolist(), counts.tolist()):
                pairs[(t, p)] = pairs.get((t, p), 0) + c
        classes, cm = _dense(pairs)
        result = AnalyzerResult()
        result.findings += _findings(cm, params, phase, first, hi, result, classes)
        result.figures["confusion_matrix"] = lambda: _plot(cm, result.data.get("per_class_accuracy", []))
        return result


def _dense(pairs: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Class labels and the square confusion matrix over them.

    Labels ``0..max`` when they fit :data:`MAX_CLASSES` (classes absent from the data are
    zero rows), else only the labels present; more distinct labels than that are refused.
    """
    labels = sorted({t for t, _ in pairs} | {p for _, p in pairs})
    if labels and labels[-1] < MAX_CLASSES:
        classes = np.arange(labels[-1] + 1)
    elif len(labels) <= MAX_CLASSES:
        classes = np.asarray(labels, dtype=np.int64)
    else:
        raise NotApplicable(f"the predictions hold {len(labels)} distinct class labels, more than the {MAX_CLASSES} a confusion matrix is drawn for")
    index = {int(c): i for i, c in enumerate(classes.tolist())}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for (t, p), c in pairs.items():
        cm[index[t], index[p]] += c
    return classes, cm


def _findings(cm: np.ndarray, params: dict[str, Any], phase: str, first: int, last: int, result: AnalyzerResult,
              classes: np.ndarray | None = None) -> list[Finding]:  # fmt: skip
    label = (lambda i: int(i)) if classes is None else (lambda i: int(classes[i]))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    total = int(support.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(cm) / np.where(support > 0, support, 1), np.nan)
    present = support > 0
    accuracy = float(np.trace(cm) / total) if total else float("nan")
    balanced = float(np.nanmean(per_class[present])) if present.any() else float("nan")
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1]
    pairs = []
    for flat in order[: int(params["top_pairs"])]:
        i, j = divmod(int(flat), len(cm))
        if off[i, j] == 0:
            break
        pairs.append({"true": label(i), "pred": label(j), "count": int(off[i, j]), "fraction_of_true": float(off[i, j] / support[i])})
    result.data.update(
        phase=phase, steps=[first, last], matrix=cm.tolist(), classes=[label(i) for i in range(len(cm))], per_class_accuracy=[None if np.isnan(a) else float(a) for a in per_class],
        support=support.tolist(), accuracy=accuracy, balanced_accuracy=balanced, confused_pairs=pairs,
    )  # fmt: skip
    where = dict(step_first=first, step_last=last)
    out = [Finding("confusion", "accuracy", "info", f"Accuracy {accuracy:.1%} (balanced {balanced:.1%}) over {total} {phase} predictions, {int(present.sum())} classes.", metric="accuracy", value=accuracy, **where)]
    judged = support >= int(params["min_support"])
    # A class the model never gets right is a defect when it handles the other classes well
    # (balanced accuracy of the rest >= 1/2); in a model still learning everything it is expected.
    for c in np.flatnonzero(judged & (np.diag(cm) == 0)).tolist():
        rest = per_class[present & (np.arange(len(cm)) != c)]
        others = float(np.nanmean(rest)) if len(rest) else 0.0
        sev = "warning" if others >= 0.5 else "info"
        what = "never predicted" if predicted[c] == 0 else "never predicted correctly"
        out.append(Finding(
            "confusion", "never-predicted" if predicted[c] == 0 else "never-correct", sev,
            f"Class {label(c)} ({int(support[c])} samples) is {what}, while the other classes reach {others:.0%} balanced accuracy.",
            metric="class_accuracy", value=0.0, threshold=0.0, **where,
        ))  # fmt: skip
    for c in np.flatnonzero(judged & (np.diag(cm) > 0) & (per_class < params["weak_ratio"] * balanced)).tolist():
        out.append(Finding("confusion", "weak-class", "info", f"Class {label(c)} has accuracy {per_class[c]:.1%}, below {params['weak_ratio']:g} x the balanced accuracy {balanced:.1%}.", metric="class_accuracy", value=float(per_class[c]), threshold=params["weak_ratio"] * balanced, **where))
    if total and present.sum() >= 2:
        top = int(np.argmax(predicted))
        share = predicted[top] / total
        if share >= params["collapse_share"] and support[top] / total <= 0.5:
            out.append(Finding("confusion", "collapsed-predictions", "warning", f"{share:.0%} of predictions are class {label(top)}, which is only {support[top] / total:.0%} of the samples: the model predicts one class.", metric="prediction_share", value=float(share), threshold=params["collapse_share"], **where))
    for p in pairs:
        out.append(Finding("confusion", "confused-pair", "info", f"Class {p['true']} is predicted as {p['pred']} {p['count']} times ({p['fraction_of_true']:.0%} of class {p['true']}).", metric="confusion_fraction", value=p["fraction_of_true"], **where))
    return out


def _plot(cm: np.ndarray, per_class: list) -> Any:
    from .figures import SEQUENTIAL_CMAP, SERIES_COLORS, new_figure

    fig, (ax, ax2) = new_figure(ncols=2, width=10, height=4.5, gridspec_kw={"width_ratios": [3, 2]})
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(support > 0, cm / np.where(support > 0, support, 1), 0.0)
    img = ax.imshow(norm, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1, interpolation="nearest")
    k = len(cm)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="w" if norm[i, j] < 0.6 else "k")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (row-normalised)")
    fig.colorbar(img, ax=ax, fraction=0.046)
    acc = [a if a is not None else 0.0 for a in per_class]
    ax2.bar(range(len(acc)), acc, color=SERIES_COLORS[0])
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("class")
    ax2.set_ylabel("accuracy")
    ax2.set_title("Per-class accuracy")
    return fig
