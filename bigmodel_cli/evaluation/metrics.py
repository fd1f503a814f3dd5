"""Metrics computed with scikit-learn, under the names of SPEC.md.

    metrics, per_class, cm = classification(y_true, proba, classes, threshold=0.5, top_k=(2, 3, 5))
    metrics = regression(y_true, y_pred)

A metric that is undefined for the data (ROC AUC with one class present, MAPE with a true
value of 0, R² of a constant target) is `None`, never a crash and never a made-up value;
`why_undefined` says why, for the warning.

Each scikit-learn function is called once per report: the per-class precision, recall and
F1 of `precision_recall_fscore_support` and the per-class one-vs-rest AUCs give the macro,
micro and weighted averages by the same arithmetic scikit-learn uses (tests compare every
value with the direct scikit-learn call), which keeps a 100,000-row report fast.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASSIFICATION_METRICS = (
    "accuracy", "balanced_accuracy", "precision", "recall", "f1",
    "precision_micro", "recall_micro", "f1_micro", "precision_weighted", "recall_weighted", "f1_weighted",
    "roc_auc", "roc_auc_weighted", "average_precision", "average_precision_weighted", "log_loss",
)
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2", "mape", "max_error")
HEADLINE = {  # the metrics `--ci` puts a confidence interval on
    "classification": ("accuracy", "balanced_accuracy", "f1", "roc_auc", "average_precision", "log_loss"),
    "regression": ("rmse", "mae", "r2", "mape"),
}
LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "mape", "error", "fid", "kid", "nelbo", "bits_per_dim")
DEFAULT_TOP_K = (2, 3, 5)


def lower_is_better(name: str) -> bool:
    return any(token in name for token in LOWER_IS_BETTER)


def top_k_names(n_classes: int, top_k: Sequence[int] = DEFAULT_TOP_K) -> list[str]:
    """`top_3_accuracy`... for every k below the number of classes (top-k of all classes is always 1)."""
    return [f"top_{k}_accuracy" for k in sorted(set(top_k)) if 1 < k < n_classes]


def metric_names(task: str, n_classes: int | None = None, top_k: Sequence[int] = DEFAULT_TOP_K) -> tuple[str, ...]:
    """Every metric name a report of this task can hold (what `--fail-under` accepts)."""
    if task != "classification":
        return REGRESSION_METRICS
    return CLASSIFICATION_METRICS + tuple(top_k_names(n_classes or 0, top_k))


def _safe(fn, *args, **kwargs) -> float | None:
    """Run a scikit-learn metric; undefined (raises or NaN) -> None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn(*args, **kwargs))
        except ValueError:
            return None
    return value if np.isfinite(value) else None


def decide(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class per row: argmax, or for two classes `P(classes[1]) >= threshold`."""
    if proba.shape[1] == 2 and threshold is not None:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


def classification(y_true: np.ndarray, proba: np.ndarray, classes: list[str], threshold: float | None = None,
                   top_k: Sequence[int] = ()) -> tuple[dict[str, Any], dict[str, Any], list[list[int]]]:
    """Headline metrics, per-class report and confusion matrix (rows: true class, columns: predicted)."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    labels = list(range(len(classes)))
    y_pred = decide(proba, threshold)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    n = int(support.sum())
    out: dict[str, Any] = {
        "accuracy": float(np.trace(cm) / n) if n else None,
        "balanced_accuracy": float(r[support > 0].mean()) if n else None,
    }
    per_class_scores = {"precision": p, "recall": r, "f1": f}
    for name, per in per_class_scores.items():
        out[name] = float(per.mean()) if n else None
    for name in per_class_scores:
        out[f"{name}_micro"] = out["accuracy"]  # single-label, every class in `labels`: micro P = R = F1
    for name, per in per_class_scores.items():
        out[f"{name}_weighted"] = float(np.average(per, weights=support)) if n else None
    auc, ap = _one_vs_rest(y_true, proba, labels)
    out.update(_averages("roc_auc", auc, support), **_averages("average_precision", ap, support))
    out["log_loss"] = _safe(skm.log_loss, y_true, proba, labels=labels)
    for name in top_k_names(len(classes), top_k):
        k = int(name.split("_")[1])
        out[name] = _safe(skm.top_k_accuracy_score, y_true, proba, k=k, labels=labels)
    per_class = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i]),
            "roc_auc": auc[i], "average_precision": ap[i]}
        for i, c in enumerate(classes)
    }
    return out, per_class, cm.tolist()


def _one_vs_rest(y_true: np.ndarray, proba: np.ndarray, labels: list[int]) -> tuple[list, list]:
    """Per-class ROC AUC and average precision, class c against the rest; None where c is absent or alone.

    For two classes only the positive class (labels[1]) is scored, as scikit-learn's binary AUC does;
    class 0's entry mirrors it for ROC AUC and is scored separately for average precision.
    """
    from sklearn import metrics as skm

    auc: list[float | None] = []
    ap: list[float | None] = []
    for c in labels:
        positives = y_true == c
        if positives.all() or not positives.any():
            auc.append(None)
            ap.append(None)
            continue
        if len(labels) == 2 and c == 0:
            auc.append(None)  # filled from class 1 below: the same curve seen from the other side
        else:
            auc.append(_safe(skm.roc_auc_score, positives, proba[:, c]))
        ap.append(_safe(skm.average_precision_score, positives, proba[:, c]))
    if len(labels) == 2:
        auc[0] = auc[1]
    return auc, ap


def _averages(name: str, per_class: list[float | None], support: np.ndarray) -> dict[str, float | None]:
    """Macro and support-weighted averages, as scikit-learn's `average=`; undefined if one class is."""
    if len(per_class) == 2:  # binary: the positive class's score, like scikit-learn's binary metrics
        return {name: per_class[1], f"{name}_weighted": per_class[1]}
    if any(v is None for v in per_class):
        return {name: None, f"{name}_weighted": None}
    values = np.asarray(per_class, dtype=np.float64)
    return {name: float(values.mean()), f"{name}_weighted": float(np.average(values, weights=support))}


def normalized_confusion(cm: list[list[int]]) -> list[list[float | None]]:
    """Each row divided by its true count (row i: where class i's rows went); a class with no rows -> None."""
    matrix = np.asarray(cm, dtype=np.float64)
    rows = matrix.sum(axis=1)
    return [[float(v / total) for v in row] if total else [None] * len(row) for row, total in zip(matrix, rows,
                                                                                                 strict=True)]


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    mse = _safe(skm.mean_squared_error, y_true, y_pred)
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)) if mse is not None else None,
        "mae": _safe(skm.mean_absolute_error, y_true, y_pred),
        "r2": _safe(skm.r2_score, y_true, y_pred, force_finite=False) if len(y_true) > 1 else None,
        "mape": _safe(skm.mean_absolute_percentage_error, y_true, y_pred) if np.all(y_true != 0) else None,
        "max_error": _safe(skm.max_error, y_true, y_pred) if len(y_true) else None,
    }


def best_threshold(y_true: np.ndarray, p_positive: np.ndarray, criterion: str) -> tuple[float, float] | None:
    """The decision threshold on P(positive) maximising F1 or Youden's J (TPR - FPR); None if undefined.

    Thresholds are scores seen in the data (predict positive when P >= threshold), as
    scikit-learn's curves define them.
    """
    from sklearn import metrics as skm

    positives = np.asarray(y_true) == 1
    if positives.all() or not positives.any():
        return None
    if criterion == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(positives, p_positive)
        denom = precision[:-1] + recall[:-1]
        f1 = np.divide(2 * precision[:-1] * recall[:-1], denom, out=np.zeros_like(denom), where=denom > 0)
        best = int(np.argmax(f1))
        return float(thresholds[best]), float(f1[best])
    if criterion == "youden":
        fpr, tpr, thresholds = skm.roc_curve(positives, p_positive, drop_intermediate=False)
        j = (tpr - fpr)[1:]  # thresholds[0] is +inf: nothing predicted positive
        best = int(np.argmax(j))
        return float(thresholds[1 + best]), float(j[best])
    raise ValueError(f"unknown threshold criterion {criterion!r}")


def undefined(metrics: dict[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if v is None]


def why_undefined(name: str, y_true: np.ndarray, classes: list[str] | None) -> str:
    """One phrase for the warning about an undefined metric."""
    if classes is None:
        if name == "mape":
            return "a true value is 0 (percentage error divides by it)"
        if name == "r2":
            return "the true values are constant or fewer than 2"
        return "too few rows"
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(classes))
    absent = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if np.count_nonzero(counts) < 2:
        return "only one class is present"
    if absent:
        return f"class(es) {', '.join(absent)} have no rows"
    return "scikit-learn cannot compute it for these values"
