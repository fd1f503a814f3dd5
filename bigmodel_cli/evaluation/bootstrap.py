"""Seeded bootstrap confidence intervals for the headline metrics (`bigmodel eval --ci 0.95`).

    intervals = confidence_intervals("classification", y, proba, y_pred, level=0.95, resamples=1000, seed=0)
    # {"accuracy": [0.951, 0.978], "roc_auc": [0.981, 0.996], ...}

A resample draws n rows with replacement, held as integer row weights (a multinomial draw),
so no resampled copy of the data is ever made. On a resample each metric is scikit-learn's
definition with `sample_weight`, written with numpy so that a thousand resamples of 100,000
rows take seconds rather than minutes (tests compare every one with scikit-learn's weighted
metric). The interval is the percentile interval; a metric undefined on more than half of
the resamples (a rare class drawn out) gets None.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bigmodel_cli.evaluation.metrics import HEADLINE

Resample = Callable[[np.ndarray], dict[str, float]]


def confidence_intervals(task: str, y_true: np.ndarray, scores: np.ndarray | None, y_pred: np.ndarray,
                         level: float, resamples: int, seed: int,
                         names: tuple[str, ...] | None = None) -> dict[str, list[float] | None]:
    """[low, high] per headline metric (or `names`), from `resamples` seeded bootstrap draws."""
    names = names or HEADLINE[task]
    n = len(y_true)
    metric = (ClassificationResample(y_true, scores, y_pred) if task == "classification"
              else RegressionResample(y_true, y_pred))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        values = metric(weights)
        for name in names:
            draws[name].append(values.get(name, np.nan))
    tail = (1.0 - level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for name, values in draws.items():
        finite = np.asarray(values)[np.isfinite(values)]
        out[name] = ([float(v) for v in np.percentile(finite, [tail, 100 - tail])]
                     if len(finite) >= resamples / 2 else None)
    return out


class Ranking:
    """One binary ranking problem (positives, scores), sorted once; curves for any row weights."""

    def __init__(self, positives: np.ndarray, scores: np.ndarray):
        self.order = np.argsort(-np.asarray(scores), kind="mergesort")
        ranked = np.asarray(scores)[self.order]
        self.positive = np.asarray(positives, dtype=np.float64)[self.order]
        # the last row of each run of equal scores: one curve point per distinct threshold
        self.ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]

    def curve(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted true and false positives at each threshold, from the highest score down."""
        w = weights[self.order]
        tps = np.cumsum(w * self.positive)[self.ends]
        return tps, np.cumsum(w)[self.ends] - tps

    def scores(self, weights: np.ndarray) -> tuple[float, float]:
        """(ROC AUC, average precision) under these row weights; NaN when one side has no weight."""
        tps, fps = self.curve(weights)
        if len(tps) == 0 or tps[-1] <= 0 or fps[-1] <= 0:
            return np.nan, np.nan
        tpr = np.r_[0.0, tps / tps[-1]]
        fpr = np.r_[0.0, fps / fps[-1]]
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        called = tps + fps
        precision = np.divide(tps, called, out=np.ones_like(tps), where=called > 0)
        ap = float(np.sum(np.diff(tpr) * precision))
        return auc, ap


class ClassificationResample:
    """accuracy, balanced_accuracy, f1 (macro), roc_auc, average_precision, log_loss under row weights."""

    def __init__(self, y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray):
        y_true = np.asarray(y_true, dtype=np.int64)
        self.k = proba.shape[1]
        self.cell = y_true * self.k + np.asarray(y_pred, dtype=np.int64)
        positives = [1] if self.k == 2 else range(self.k)
        self.rankings = [Ranking(y_true == c, proba[:, c]) for c in positives]
        eps = np.finfo(proba.dtype).eps
        p_true = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1 - eps)
        self.row_loss = -np.log(p_true.astype(np.float64))

    def __call__(self, weights: np.ndarray) -> dict[str, float]:
        total = weights.sum()
        cm = np.bincount(self.cell, weights=weights, minlength=self.k * self.k).reshape(self.k, self.k)
        tp, actual, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * tp, actual + predicted, out=np.zeros_like(tp), where=(actual + predicted) > 0)
        ranked = np.array([r.scores(weights) for r in self.rankings])
        return {
            "accuracy": tp.sum() / total,
            "balanced_accuracy": recall[actual > 0].mean(),
            "f1": f1.mean(),
            "roc_auc": ranked[:, 0].mean(),  # NaN if a class is undefined, like the report
            "average_precision": ranked[:, 1].mean(),
            "log_loss": weights @ self.row_loss / total,
        }


class RegressionResample:
    """rmse, mae, r2 and mape (when no true value is 0) under row weights."""

    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray):
        self.y = np.asarray(y_true, dtype=np.float64)
        error = np.asarray(y_pred, dtype=np.float64) - self.y
        self.squared, self.absolute = error**2, np.abs(error)
        self.relative = self.absolute / np.abs(self.y) if np.all(self.y != 0) else None

    def __call__(self, weights: np.ndarray) -> dict[str, float]:
        total = weights.sum()
        mean = weights @ self.y / total
        spread = weights @ (self.y - mean) ** 2
        residual = weights @ self.squared
        return {
            "mse": residual / total,
            "rmse": np.sqrt(residual / total),
            "mae": weights @ self.absolute / total,
            "r2": 1.0 - residual / spread if spread > 0 else np.nan,
            "mape": weights @ self.relative / total if self.relative is not None else np.nan,
        }
