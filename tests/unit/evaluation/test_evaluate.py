"""Every reported metric equals scikit-learn called directly on the saved predictions CSV."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation.evaluate import Options, evaluate


def saved(run, split="test", sub=""):
    """(report from disk, y_true as class indices or floats, y_pred, probabilities or None, classes)."""
    folder = run / "eval" / sub
    report = json.loads((folder / f"{split}.json").read_text())
    table = pd.read_csv(folder / f"{split}_predictions.csv")
    classes = report.get("classes")
    if classes is None:
        return report, table["y_true"].to_numpy(np.float64), table["y_pred"].to_numpy(np.float64), None, None
    index = {c: i for i, c in enumerate(classes)}
    proba = table[[f"p_{c}" for c in classes]].to_numpy(np.float32)
    return report, table["y_true"].map(index).to_numpy(), table["y_pred"].map(index).to_numpy(), proba, classes


def check_classification(report, y, pred, proba, classes):
    m, labels = report["metrics"], list(range(len(classes)))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for avg, suffix in (("macro", ""), ("micro", "_micro"), ("weighted", "_weighted")):
        for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
            want = fn(y, pred, labels=labels, average=avg, zero_division=0)
            assert m[name + suffix] == pytest.approx(want), name + suffix
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-5)
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    normalized = skm.confusion_matrix(y, pred, labels=labels, normalize="true")
    counts = np.bincount(y, minlength=len(labels))
    for row, want, count in zip(report["confusion_matrix_normalized"], normalized, counts, strict=True):
        assert row == ([None] * len(labels) if count == 0 else pytest.approx(want.tolist()))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        row = report["per_class"][c]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert report["n"] == len(y)


def test_binary_report_matches_sklearn_on_the_csv(run_copy):
    run = run_copy("binary")
    returned = evaluate(run)
    report, y, pred, proba, classes = saved(run)
    assert report["metrics"] == returned["metrics"]
    check_classification(report, y, pred, proba, classes)
    m = report["metrics"]
    assert pred.tolist() == (proba[:, 1] >= 0.5).astype(int).tolist()  # default eval.threshold
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert report["per_class"][classes[0]]["average_precision"] == pytest.approx(
        skm.average_precision_score(y == 0, proba[:, 0]))
    assert not [k for k in m if k.startswith("top_")]  # top-k only for k < number of classes
    assert report["threshold"] == {"value": 0.5, "source": "eval.threshold", "positive_class": classes[1]}
    assert m["accuracy"] > 0.85 and report["undefined_metrics"] == []
    for suffix in ("_roc.png", "_pr.png", "_confusion.png", "_calibration.png"):
        assert (run / "eval" / f"test{suffix}").read_bytes()[:4] == b"\x89PNG"


def test_multiclass_report_matches_sklearn_on_the_csv(run_copy):
    run = run_copy("multiclass")
    evaluate(run, Options(split="val"))
    report, y, pred, proba, classes = saved(run, "val")
    check_classification(report, y, pred, proba, classes)
    m, labels = report["metrics"], list(range(len(classes)))
    assert pred.tolist() == proba.argmax(axis=1).tolist()
    for avg, suffix in (("macro", ""), ("weighted", "_weighted")):
        want = skm.roc_auc_score(y, proba, multi_class="ovr", average=avg, labels=labels)
        assert m["roc_auc" + suffix] == pytest.approx(want)
        assert m["average_precision" + suffix] == pytest.approx(
            skm.average_precision_score(np.eye(len(classes))[y], proba, average=avg))
    assert m["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, proba, k=2, labels=labels))
    assert "top_3_accuracy" not in m  # wine has 3 classes
    assert report["per_class"][classes[2]]["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 2, proba[:, 2]))


def test_regression_report_matches_sklearn_on_the_csv(run_copy):
    run = run_copy("regression")
    evaluate(run)
    report, y, pred, _, _ = saved(run)
    m = report["metrics"]
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-5)
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred), rel=1e-5)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-5)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred), rel=1e-5)
    assert m["max_error"] == pytest.approx(skm.max_error(y, pred), rel=1e-5)
    assert report["confusion_matrix"] is None and report["n"] == len(y)
    for name in ("predicted_vs_true", "residuals"):
        assert (run / "eval" / f"test_{name}.png").is_file()


def test_imbalanced_binary_with_a_custom_threshold(run_copy):
    run = run_copy("imbalanced")
    evaluate(run, Options(threshold=0.2, plots=False))
    report, y, pred, proba, classes = saved(run)
    assert np.bincount(y).tolist() == [190, 10]
    assert pred.tolist() == (proba[:, 1] >= 0.2).astype(int).tolist()
    assert report["threshold"]["value"] == 0.2 and report["threshold"]["source"] == "--threshold"
    check_classification(report, y, pred, proba, classes)
    assert report["metrics"]["average_precision"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert not (run / "eval/test_roc.png").exists()  # --no-plots


@pytest.mark.parametrize("criterion", ["f1", "youden"])
def test_threshold_search_finds_the_best_threshold_on_val(run_copy, criterion):
    run = run_copy("imbalanced")
    evaluate(run, Options(split="val", plots=False))
    _, y_val, _, p_val, _ = saved(run, "val")
    report = evaluate(run, Options(threshold_search=criterion, plots=False))
    found = report["threshold_search"]
    assert report["threshold"]["value"] == found["threshold"] and "best" in report["threshold"]["source"]

    def score(t):
        decided = p_val[:, 1] >= t
        if criterion == "f1":
            return skm.f1_score(y_val, decided, zero_division=0)
        return skm.recall_score(y_val, decided) - (1 - skm.recall_score(y_val == 0, ~decided))

    best = max(score(t) for t in np.unique(p_val[:, 1]))
    assert found["val_score"] == pytest.approx(best, abs=1e-6)
    assert score(found["threshold"]) == pytest.approx(best, abs=1e-6)
    _, y, pred, proba, _ = saved(run)
    assert pred.tolist() == (proba[:, 1] >= found["threshold"]).astype(int).tolist()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # the direct sklearn call below
def test_class_absent_from_test_split(run_copy, capsys):
    run = run_copy("absent")
    report = evaluate(run, Options(plots=True))
    saved_report, y, pred, proba, classes = saved(run)
    assert 2 not in set(y)
    check_classification(saved_report, y, pred, proba, classes)
    m = report["metrics"]
    assert m["roc_auc"] is None and m["roc_auc_weighted"] is None and m["average_precision"] is None
    assert report["per_class"]["c"]["support"] == 0 and report["per_class"]["c"]["roc_auc"] is None
    assert report["per_class"]["a"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 0, proba[:, 0]))
    assert {"roc_auc", "average_precision"} <= set(report["undefined_metrics"])
    assert any("roc_auc is undefined" in w and "class(es) c have no rows" in w for w in report["warnings"])
    assert "roc_auc is undefined" in capsys.readouterr().err  # warned on the terminal, even when quiet


def test_confidence_intervals_are_seeded_and_bracket_the_metric(run_copy):
    run = run_copy("binary")
    first = evaluate(run, Options(ci=0.9, plots=False))
    again = evaluate(run, Options(ci=0.9, plots=False))
    assert first["ci"]["intervals"] == again["ci"]["intervals"]
    assert first["ci"]["level"] == 0.9 and first["ci"]["resamples"] == 1000
    for name in ("accuracy", "balanced_accuracy", "f1", "roc_auc", "average_precision", "log_loss"):
        low, high = first["ci"]["intervals"][name]
        assert low <= first["metrics"][name] <= high and low < high, name


def test_bad_cli_values_are_usage_errors(run_copy):
    run = run_copy("binary")
    with pytest.raises(UsageError, match=r"--threshold 1.5: .*less than or equal to 1"):
        evaluate(run, Options(threshold=1.5))
    with pytest.raises(UsageError, match="--threshold-search best: "):
        evaluate(run, Options(threshold_search="best"))
    with pytest.raises(UsageError, match="--split dev: expected one of train, val, test"):
        evaluate(run, Options(split="dev"))
    with pytest.raises(UsageError, match="--fail-under acuracy: unknown metric; did you mean 'accuracy'"):
        evaluate(run, Options(fail_under={"acuracy": 0.9}))
    with pytest.raises(UsageError, match="--fail-over logloss: unknown metric; did you mean 'log_loss'"):
        evaluate(run, Options(fail_over={"logloss": 0.9}))
    assert not (run / "eval").exists()  # nothing written by a refused evaluation


def test_gates_in_the_report(run_copy):
    run = run_copy("binary")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["eval"]["fail_under"] = {"roc_auc": 0.95, "f1": 0.2}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    report = evaluate(run, Options(plots=False, fail_under={"accuracy": 0.5, "f1": 1.01},
                                   fail_over={"log_loss": 0.0001}))
    gates = {g["metric"]: g for g in report["gates"]}
    assert gates["accuracy"]["passed"] and not gates["f1"]["passed"] and not gates["log_loss"]["passed"]
    assert gates["roc_auc"]["kind"] == "fail_under" and gates["roc_auc"]["limit"] == 0.95  # the recipe's gate
    assert gates["f1"]["limit"] == 1.01  # the command line's gate replaces the recipe's
    assert gates["log_loss"]["value"] == report["metrics"]["log_loss"]


def test_a_model_that_outputs_nan_fails_the_job_and_writes_nothing(run_copy):
    import torch

    from bigmodel_cli.errors import JobFailed

    run = run_copy("regression")
    state = torch.load(run / "checkpoints/best.pt", weights_only=True)
    first = next(k for k in state["networks"]["model"] if k.endswith("weight"))
    state["networks"]["model"][first][0, 0] = float("nan")
    torch.save(state, run / "checkpoints/best.pt")
    with pytest.raises(JobFailed, match=r"outputs are NaN or infinite on \d+ of \d+ rows of split 'test'"):
        evaluate(run)
    assert not (run / "eval").exists()


def test_files_are_renamed_together_only_when_all_succeeded(run_copy, monkeypatch):
    from bigmodel_cli.evaluation import plots

    run = run_copy("binary")
    evaluate(run, Options(plots=False))
    before = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(plots, "classification_plots", broken)
    with pytest.raises(RuntimeError):
        evaluate(run, Options(threshold=0.9))  # the CSV was already written to its temporary name
    assert {p.name: p.read_bytes() for p in (run / "eval").iterdir()} == before  # old files kept, no temp files
