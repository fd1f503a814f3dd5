"""The bootstrap's fast weighted metrics are scikit-learn's metrics with sample_weight; intervals are seeded."""

import numpy as np
import pytest
from sklearn import metrics as skm

from bigmodel_cli.evaluation.bootstrap import (
    ClassificationResample,
    Ranking,
    RegressionResample,
    confidence_intervals,
)
from bigmodel_cli.inference.batch import softmax


def draw(rng, n):
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def classified(n, k, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), y] += 1.5
    logits = np.round(logits, 1)  # ties in the scores, as a coarse model gives
    return y, softmax(logits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_is_sklearn_auc_and_ap_with_sample_weight(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + y * 0.3, 2)  # many ties
    w = draw(rng, 300)
    auc, ap = Ranking(y, scores).scores(w)
    assert auc == pytest.approx(skm.roc_auc_score(y, scores, sample_weight=w))
    assert ap == pytest.approx(skm.average_precision_score(y, scores, sample_weight=w))


@pytest.mark.parametrize("k", [2, 4])
def test_classification_resample_is_sklearn_with_sample_weight(k):
    y, proba = classified(400, k, seed=k)
    pred = proba.argmax(axis=1)
    w = draw(np.random.default_rng(5), 400)
    got = ClassificationResample(y, proba, pred)(w)
    labels = list(range(k))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred, sample_weight=w))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", sample_weight=w, labels=labels))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, sample_weight=w, labels=labels), rel=1e-6)
    if k == 2:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1], sample_weight=w))
        assert got["average_precision"] == pytest.approx(skm.average_precision_score(y, proba[:, 1],
                                                                                     sample_weight=w))
    else:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", sample_weight=w))
        assert got["average_precision"] == pytest.approx(
            skm.average_precision_score(np.eye(k)[y], proba, average="macro", sample_weight=w))


def test_regression_resample_is_sklearn_with_sample_weight():
    rng = np.random.default_rng(3)
    y = rng.normal(size=200) + 5
    pred = y + rng.normal(scale=0.5, size=200)
    w = draw(rng, 200)
    got = RegressionResample(y, pred)(w)
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred, sample_weight=w))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred, sample_weight=w))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred, sample_weight=w))
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred, sample_weight=w))


def test_intervals_are_seeded_and_narrow_with_more_rows():
    def width(n, seed):
        y, proba = classified(n, 2, seed=0)
        ci = confidence_intervals("classification", y, proba, proba.argmax(1), 0.95, 200, seed)
        return ci["accuracy"][1] - ci["accuracy"][0], ci

    small, first = width(200, seed=7)
    _, again = width(200, seed=7)
    _, other = width(200, seed=8)
    large, _ = width(5000, seed=7)
    assert first == again and first != other
    assert large < small / 2  # ~1/sqrt(n)


def test_metric_undefined_on_most_resamples_has_no_interval():
    y = np.zeros(100, dtype=int)
    y[:20] = 1
    proba = softmax(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    ci = confidence_intervals("classification", y, proba, proba.argmax(1), 0.95, 100, 0)
    assert ci["roc_auc"] is not None
    ci = confidence_intervals("classification", np.zeros(100, dtype=int), proba, proba.argmax(1), 0.95, 100, 0)
    assert ci["roc_auc"] is None and ci["average_precision"] is None  # one class: undefined on every resample
    assert ci["accuracy"] is not None and ci["log_loss"] is not None
