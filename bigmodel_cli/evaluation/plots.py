"""Evaluation plots as PNG (matplotlib, Agg backend): ROC, precision-recall, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigmodel_cli import atomic


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, dest: Path) -> None:
    with atomic.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def classification_plots(y: np.ndarray, proba: np.ndarray, classes: list[str], cm: list[list[int]],
                         out_dir: Path, split: str) -> list[str]:
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _figure()
    written = []
    curves = [(1, classes[1])] if len(classes) == 2 else list(enumerate(classes))
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for c, name in curves:
            positives = y == c
            if positives.all() or not positives.any():
                continue  # undefined for a class absent (or alone) in this split
            if kind == "roc":
                fpr, tpr, _ = roc_curve(positives, proba[:, c])
                ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
            else:
                prec, rec, _ = precision_recall_curve(positives, proba[:, c])
                ax.plot(rec, prec, label=name)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({split})")
        else:
            ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({split})")
        if ax.lines:
            ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        dest = out_dir / f"{split}_{kind}.png"
        _save(fig, dest)
        plt.close(fig)
        written.append(str(dest))

    matrix = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(classes), 1 + 0.45 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({split})")
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > top / 2 else "black")
    dest = out_dir / f"{split}_confusion.png"
    _save(fig, dest)
    plt.close(fig)
    written.append(str(dest))
    return written


def regression_plots(y: np.ndarray, pred: np.ndarray, out_dir: Path, split: str) -> list[str]:
    plt = _figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.scatter(y, pred, s=8, alpha=0.6)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a.set(xlabel="true", ylabel="predicted", title=f"predicted vs true ({split})")
    b.scatter(pred, y - pred, s=8, alpha=0.6)
    b.axhline(0, color="k", lw=0.8)
    b.set(xlabel="predicted", ylabel="residual", title="residuals")
    dest = out_dir / f"{split}_regression.png"
    _save(fig, dest)
    plt.close(fig)
    return [str(dest)]
