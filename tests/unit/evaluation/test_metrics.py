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


def test_regression_undefined_values_are_none_not_sklearn_placeholders():
    m = M.regression(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 2.5]))
    assert m["mape"] is None  # sklearn would return ~1e15 (division by its epsilon)
    assert M.why_undefined("mape", np.zeros(3), None).startswith("a true value is 0")
    assert M.regression(np.ones(4), np.arange(4.0))["r2"] is None  # sklearn would say 0.0 for a constant target
    assert M.regression(np.array([1.0]), np.array([2.0]))["r2"] is None
    assert M.regression(np.array([1.0, 3.0]), np.array([2.0, 1.0]))["max_error"] == 2.0


def test_top_k_only_below_the_number_of_classes():
    assert M.top_k_names(2) == [] and M.top_k_names(3) == ["top_2_accuracy"]
    assert M.top_k_names(10, (5, 3)) == ["top_3_accuracy", "top_5_accuracy"]
    assert "top_5_accuracy" in M.metric_names("classification", 10) and "mape" in M.metric_names("regression")
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, 200)
    p = proba_for(y, 6, rng, skill=0.5)
    m, _, _ = M.classification(y, p, list("abcdef"), top_k=(2, 3, 5, 6))
    for k in (2, 3, 5):
        assert m[f"top_{k}_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=k))
    assert "top_6_accuracy" not in m


def test_normalized_confusion_rows_are_rates_and_absent_rows_none():
    assert M.normalized_confusion([[3, 1], [0, 0]]) == [[0.75, 0.25], [None, None]]


def test_binary_threshold_decides_the_positive_class():
    p = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]], dtype=np.float32)
    assert M.decide(p, 0.5).tolist() == [0, 1, 1]
    assert M.decide(p, 0.3).tolist() == [1, 1, 1] and M.decide(p, 0.7).tolist() == [0, 0, 1]
    m, _, cm = M.classification(np.array([0, 0, 1]), p, ["n", "p"], threshold=0.7)
    assert m["accuracy"] == 1.0 and cm == [[2, 0], [0, 1]]


def test_best_threshold_maximises_f1_and_youden():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9])
    t, f1 = M.best_threshold(y, p, "f1")
    assert t == 0.35 and f1 == pytest.approx(skm.f1_score(y, p >= 0.35))
    t, j = M.best_threshold(y, p, "youden")
    assert t in (0.35, 0.6) and j == pytest.approx(0.75)  # TPR 1, FPR 1/4 or TPR 3/4, FPR 0
    assert M.best_threshold(np.zeros(4), p[:4], "f1") is None


def test_why_undefined_names_the_absent_class():
    assert M.why_undefined("roc_auc", np.array([0, 1, 0]), ["a", "b", "c"]) == "class(es) c have no rows"
    assert M.why_undefined("roc_auc", np.array([1, 1]), ["a", "b"]) == "only one class is present"
