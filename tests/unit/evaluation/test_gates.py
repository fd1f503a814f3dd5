"""Quality gates: parsing, the recipe's and the command line's, and the one line exit 3 prints."""

import pytest

from bigmodel_cli.config.schema import EvalSection
from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation import gates as G
from bigmodel_cli.evaluation.metrics import metric_names


def test_parse_and_malformed_items():
    assert G.parse(["accuracy=0.9", " f1 = 0.8"]) == {"accuracy": 0.9, "f1": 0.8}
    for bad in ("accuracy", "accuracy=high", "=0.9"):
        with pytest.raises(UsageError, match=f"--fail-over '{bad}': expected METRIC=VALUE"):
            G.parse([bad], "fail_over")


def test_command_line_gates_replace_the_recipes_and_unknown_names_suggest():
    cfg = EvalSection(fail_under={"accuracy": 0.9, "f1": 0.8}, fail_over={"log_loss": 0.5})
    gates = G.resolve(cfg, {"accuracy": 0.95}, {}, metric_names("classification", 10))
    assert {(g.metric, g.limit, g.kind) for g in gates} == {
        ("accuracy", 0.95, "fail_under"), ("f1", 0.8, "fail_under"), ("log_loss", 0.5, "fail_over")}
    with pytest.raises(UsageError, match="--fail-under top5_accuracy: unknown metric; did you mean 'top_5_accuracy'"):
        G.resolve(EvalSection(), {"top5_accuracy": 0.9}, {}, metric_names("classification", 10))
    with pytest.raises(UsageError, match="--fail-over rmsee: unknown metric; did you mean 'rmse'"):
        G.resolve(EvalSection(), {}, {"rmsee": 1.0}, metric_names("regression"))
    with pytest.raises(UsageError, match="unknown metric; metrics: mse, rmse"):
        G.resolve(EvalSection(), {"zzzzzz": 1.0}, {}, metric_names("regression"))


def test_checks_and_messages():
    gates = [G.Gate("accuracy", 0.95, "fail_under"), G.Gate("rmse", 2.0, "fail_over"),
             G.Gate("roc_auc", 0.9, "fail_under")]
    results = G.check(gates, {"accuracy": 0.9123, "rmse": 2.5, "roc_auc": None})
    assert [r["passed"] for r in results] == [False, False, False]
    assert [G.failure_message(r) for r in results] == [
        "gate failed: accuracy = 0.9123 is below 0.95",
        "gate failed: rmse = 2.5 is above 2",
        "gate failed: roc_auc is undefined (null) here, so it cannot meet 0.9",
    ]
    assert all(r["passed"] for r in G.check(gates, {"accuracy": 0.95, "rmse": 2.0, "roc_auc": 0.91}))
