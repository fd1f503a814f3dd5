"""Evaluation plots as PNG (matplotlib, Agg backend).

    paths = classification_plots(y, proba, classes, cm, out_dir, "test", files)
    paths = regression_plots(y, pred, out_dir, "test", files)

Classification: ROC and precision-recall curves (one-vs-rest per class; the positive class
for binary problems), the confusion matrix as a heat map of row-normalised rates annotated
with counts, and a calibration (reliability) curve. Regression: predicted vs true, and
residuals. Large splits stay quick: curves are thinned to a few thousand points and scatter
plots show a seeded sample of rows. `files` opens each destination (atomic writes that are
renamed together when the whole evaluation succeeds).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

MAX_POINTS = 20_000  # rows drawn in a scatter plot
MAX_CURVE = 2_000  # points drawn per curve

Opener = Callable[[Path], AbstractContextManager[Path]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, dest: Path, files: Opener) -> str:
    with files(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(dest)


def _thin(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    if len(arrays[0]) <= MAX_CURVE:
        return arrays
    keep = np.unique(np.linspace(0, len(arrays[0]) - 1, MAX_CURVE).astype(np.int64))
    return tuple(a[keep] for a in arrays)


def _scored_classes(y: np.ndarray, classes: list[str]) -> list[tuple[int, str]]:
    """Classes with a curve: the positive class of a binary problem, else each class present (not alone)."""
    candidates = [(1, classes[1])] if len(classes) == 2 else list(enumerate(classes))
    return [(c, name) for c, name in candidates if 0 < np.count_nonzero(y == c) < len(y)]


def classification_plots(y: np.ndarray, proba: np.ndarray, classes: list[str], cm: list[list[int]],
                         out_dir: Path, split: str, files: Opener) -> list[str]:
    plt = _pyplot()
    return [_roc(plt, y, proba, classes, out_dir / f"{split}_roc.png", split, files),
            _pr(plt, y, proba, classes, out_dir / f"{split}_pr.png", split, files),
            _confusion(plt, cm, classes, out_dir / f"{split}_confusion.png", split, files),
            _calibration(plt, y, proba, out_dir / f"{split}_calibration.png", split, files)]


def _roc(plt, y, proba, classes, dest: Path, split: str, files: Opener) -> str:
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, name in _scored_classes(y, classes):
        fpr, tpr, _ = roc_curve(y == c, proba[:, c])
        ax.plot(*_thin(fpr, tpr), label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, one-vs-rest ({split})")
    if len(ax.lines) > 1:
        ax.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, dest, files)


def _pr(plt, y, proba, classes, dest: Path, split: str, files: Opener) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, name in _scored_classes(y, classes):
        precision, recall, _ = precision_recall_curve(y == c, proba[:, c])
        ap = average_precision_score(y == c, proba[:, c])
        ax.step(*_thin(recall, precision), where="post", label=f"{name} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({split})", xlim=(0, 1), ylim=(0, 1.02))
    if ax.lines:
        ax.legend(fontsize=7, loc="lower left")
    return _save(plt, fig, dest, files)


def _confusion(plt, cm, classes, dest: Path, split: str, files: Opener) -> str:
    counts = np.asarray(cm)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * k, 1.2 + 0.5 * k))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({split})")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    return _save(plt, fig, dest, files)


def _calibration(plt, y, proba, dest: Path, split: str, files: Opener) -> str:
    """Binary: P(positive) against the observed positive rate. Multiclass: confidence against accuracy."""
    from sklearn.calibration import calibration_curve

    if proba.shape[1] == 2:
        hit, confidence, label = (y == 1), proba[:, 1], "P(positive class)"
    else:
        hit, confidence, label = (proba.argmax(axis=1) == y), proba.max(axis=1), "confidence (top probability)"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    if 0 < np.count_nonzero(hit) < len(hit):
        observed, predicted = calibration_curve(hit, confidence, n_bins=10, strategy="uniform")
        top.plot(predicted, observed, "o-", label="model")
    top.set(ylabel="observed frequency", title=f"calibration ({split})", xlim=(0, 1), ylim=(0, 1))
    top.legend(fontsize=7, loc="upper left")
    bottom.hist(confidence, bins=20, range=(0, 1), color="tab:gray")
    bottom.set(xlabel=label, ylabel="rows")
    return _save(plt, fig, dest, files)


def _sample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def regression_plots(y: np.ndarray, pred: np.ndarray, out_dir: Path, split: str, files: Opener) -> list[str]:
    plt = _pyplot()
    rows = _sample(len(y))
    shown = "" if len(rows) == len(y) else f", {len(rows)} of {len(y)} rows"
    y_s, p_s = np.asarray(y)[rows], np.asarray(pred)[rows]

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(y_s, p_s, s=6, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="true", ylabel="predicted", title=f"predicted vs true ({split}{shown})")
    fitted = _save(plt, fig, out_dir / f"{split}_predicted_vs_true.png", files)

    fig, (scatter, hist) = plt.subplots(1, 2, figsize=(10, 4.5), width_ratios=(2, 1))
    residual = y_s - p_s
    scatter.scatter(p_s, residual, s=6, alpha=0.5)
    scatter.axhline(0, color="k", lw=0.8)
    scatter.set(xlabel="predicted", ylabel="residual (true - predicted)", title=f"residuals ({split}{shown})")
    hist.hist(residual, bins=40, orientation="horizontal", color="tab:gray")
    hist.set(xlabel="rows", title="distribution")
    residuals = _save(plt, fig, out_dir / f"{split}_residuals.png", files)
    return [fitted, residuals]
