"""Metrics, all computed with scikit-learn, under the names of SPEC.md.

    metrics, per_class, cm = classification(y_true, proba, classes)
    metrics = regression(y_true, y_pred)

A metric that is undefined for the data (ROC AUC with one class present) is `None`
with a warning, never a crash and never a made-up value.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

CLASSIFICATION_METRICS = (
    "accuracy", "balanced_accuracy", "precision", "recall", "f1",
    "precision_micro", "recall_micro", "f1_micro", "precision_weighted", "recall_weighted", "f1_weighted",
    "roc_auc", "average_precision", "log_loss",
)
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "error")


def lower_is_better(name: str) -> bool:
    return any(token in name for token in LOWER_IS_BETTER)


def metric_names(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def _safe(fn, *args, **kwargs) -> float | None:
    """Run a scikit-learn metric; undefined (raises or NaN) -> None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn(*args, **kwargs))
        except ValueError:
            return None
    return value if np.isfinite(value) else None


def classification(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                   threshold: float | None = None) -> tuple[dict[str, Any], dict[str, Any], list[list[int]]]:
    from sklearn import metrics as skm

    n_classes = len(classes)
    labels = list(range(n_classes))
    if n_classes == 2 and threshold is not None:
        y_pred = (proba[:, 1] >= threshold).astype(np.int64)
    else:
        y_pred = proba.argmax(axis=1)
    out: dict[str, Any] = {
        "accuracy": _safe(skm.accuracy_score, y_true, y_pred),
        "balanced_accuracy": _safe(skm.balanced_accuracy_score, y_true, y_pred),
    }
    for avg in ("macro", "micro", "weighted"):
        suffix = "" if avg == "macro" else f"_{avg}"
        for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
            out[name + suffix] = _safe(fn, y_true, y_pred, labels=labels, average=avg, zero_division=0)
    present = np.unique(y_true)
    if len(present) < 2:
        out["roc_auc"] = out["average_precision"] = None
    elif n_classes == 2:
        out["roc_auc"] = _safe(skm.roc_auc_score, y_true, proba[:, 1])
        out["average_precision"] = _safe(skm.average_precision_score, y_true, proba[:, 1])
    elif len(present) == n_classes:
        out["roc_auc"] = _safe(skm.roc_auc_score, y_true, proba, multi_class="ovr", average="macro", labels=labels)
        onehot = np.eye(n_classes)[y_true]
        out["average_precision"] = _safe(skm.average_precision_score, onehot, proba, average="macro")
    else:  # one-vs-rest AUC is undefined for the classes absent from y_true
        out["roc_auc"] = out["average_precision"] = None
    clipped = np.clip(proba, 1e-7, 1.0)
    out["log_loss"] = _safe(skm.log_loss, y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)

    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out, per_class, cm


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as skm

    mse = _safe(skm.mean_squared_error, y_true, y_pred)
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)) if mse is not None else None,
        "mae": _safe(skm.mean_absolute_error, y_true, y_pred),
        "r2": _safe(skm.r2_score, y_true, y_pred) if len(y_true) > 1 else None,
    }


def undefined(metrics: dict[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if v is None]
