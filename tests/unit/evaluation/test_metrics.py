import numpy as np
import pytest
from sklearn import metrics as skm

from bigmodel_cli.evaluation import metrics as M


def proba_for(y, n_classes, rng, skill=2.0):
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += skill
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = proba_for(y, 4, rng)
    m, per_class, cm = M.classification(y, p, list("abcd"))
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["precision_micro"] == pytest.approx(skm.precision_score(y, pred, average="micro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-4)
    assert cm == skm.confusion_matrix(y, pred).tolist()
    assert per_class["b"]["recall"] == pytest.approx(skm.recall_score(y, pred, average=None)[1])
    assert sum(r["support"] for r in per_class.values()) == 300


def test_binary_uses_positive_class_probability():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.2).astype(int)  # imbalanced
    p = proba_for(y, 2, rng)
    m, _, _ = M.classification(y, p, ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))


def test_undefined_metrics_are_none_not_made_up():
    y = np.zeros(10, dtype=int)  # one class present only
    p = np.tile([0.9, 0.1], (10, 1))
    m, _, _ = M.classification(y, p, ["a", "b"])
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["accuracy"] == 1.0
    assert "roc_auc" in M.undefined(m)


def test_class_absent_from_split_keeps_all_labels():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)  # class 2 absent
    p = proba_for(y, 3, rng)
    m, per_class, cm = M.classification(y, p, ["a", "b", "c"])
    assert np.asarray(cm).shape == (3, 3) and per_class["c"]["support"] == 0
    assert m["roc_auc"] is None


def test_regression_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.normal(size=100)
    pred = y + rng.normal(scale=0.3, size=100)
    m = M.regression(y, pred)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_direction_of_metrics():
    assert M.lower_is_better("val_loss") and M.lower_is_better("rmse")
    assert not M.lower_is_better("val_accuracy") and not M.lower_is_better("r2")
