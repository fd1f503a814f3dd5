"""The human report in logs: every line within 100 columns, a wide confusion matrix summarised, not wrapped."""

import numpy as np
import pytest

from bigmodel_cli import console
from bigmodel_cli.evaluation import metrics as M
from bigmodel_cli.evaluation.report import LOG_WIDTH, confusion_summary, print_report


def report_for(classes: list[str], y: np.ndarray, pred: np.ndarray) -> dict:
    proba = np.full((len(y), len(classes)), 0.1 / (len(classes) - 1), np.float32)
    proba[np.arange(len(y)), pred] = 0.9
    values, per_class, cm = M.classification(y, proba, classes)
    return {"run": "runs/x", "split": "test", "data": "data/x", "n": len(y), "checkpoint": "runs/x/checkpoints/best.pt",
            "classes": classes, "metrics": values, "per_class": per_class, "confusion_matrix": cm,
            "confusion_matrix_normalized": M.normalized_confusion(cm), "gates": [],
            "files": {"report": "runs/x/eval/test.json"}}


@pytest.fixture
def logs(monkeypatch, capsys):
    """stderr as CI sees it (not a terminal, CI set), the console not quiet."""
    monkeypatch.setenv("CI", "1")
    was = console.is_quiet()
    console.quiet(False)
    yield lambda: capsys.readouterr().err
    console.quiet(was)


def twelve_classes():
    rng = np.random.default_rng(0)
    classes = [f"category_{i:02d}" for i in range(12)]
    y = np.repeat(np.arange(12), 30)
    pred = y.copy()
    pred[rng.choice(len(y), 60, replace=False)] = rng.integers(0, 12, 60)
    pred[y == 7] = np.where(np.arange(30) < 12, 3, 7)  # class 7 is taken for class 3 twelve times: the top confusion
    return classes, y, pred


def test_a_wide_confusion_matrix_is_summarised_within_100_columns(logs):
    classes, y, pred = twelve_classes()
    print_report(report_for(classes, y, pred))
    err = logs()
    assert max(len(line) for line in err.splitlines()) <= LOG_WIDTH
    assert "confusion matrix: 12 classes need" in err and "runs/x/eval/test.json" in err
    assert "true \\ predicted" not in err  # no (wrapped) matrix
    summary = err[err.index("confusion matrix: 12 classes"):]
    assert "category_07=0.60," in summary  # recall of the confused class: 18 of 30 (never split across lines)
    first = next(line for line in summary.splitlines() if line.startswith("  category"))
    assert first.strip() == "category_07 -> category_03: 12 rows (40% of category_07)"
    assert "category_00" in err and "precision" in err  # the per-class table is still there, within the width


def test_a_narrow_confusion_matrix_is_printed_whole(logs):
    y = np.array([0, 0, 1, 1, 2, 2])
    print_report(report_for(["a", "b", "c"], y, np.array([0, 1, 1, 1, 2, 0])))
    err = logs()
    assert "true \\ predicted" in err and "largest confusions" not in err
    assert max(len(line) for line in err.splitlines()) <= LOG_WIDTH


def test_confusion_summary_values():
    cm = [[5, 0, 1], [3, 2, 0], [0, 0, 0]]
    lines = confusion_summary(["cat", "dog", "bird"], cm)
    assert lines[0] == "recall per class (- where the class has no rows): cat=0.83, dog=0.40, bird=-"
    assert lines[2:] == ["  dog -> cat: 3 rows (60% of dog)", "  cat -> bird: 1 row (17% of cat)"]
    perfect = confusion_summary(["a", "b"], [[2, 0], [0, 3]])
    assert perfect[-1] == "no confusions: every row is predicted as its own class"
