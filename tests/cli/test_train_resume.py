"""`train --resume` continues with the run's own recipe: a flag left off does not silently change the run, safe
overrides (more epochs) are applied and recorded, anything else is refused listing every difference."""

import json

import yaml

from tests.conftest import run_in_process


def test_resume_uses_the_runs_recipe_applies_more_epochs_and_refuses_other_changes(tmp_path):
    assert run_in_process("prepare-data", "-r", "breast-cancer-mlp", cwd=tmp_path).code == 0
    first = run_in_process("train", "-r", "breast-cancer-mlp", "--set", "train.epochs=2", "--set",
                           "train.early_stopping.patience=null", cwd=tmp_path)
    assert first.code == 0, first.stderr
    run = tmp_path / "runs/breast-cancer-mlp"

    # no flags: the run's own recipe (2 epochs, done), not the recipe file's 30 epochs with early stopping
    again = run_in_process("train", "-r", "breast-cancer-mlp", "--resume", "--json", cwd=tmp_path)
    assert again.code == 0 and again.json()["epochs_run"] == 2, again.stderr
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["epochs"] == 2

    refused = run_in_process("train", "-r", "breast-cancer-mlp", "--resume", "--set", "train.optimizer.lr=0.5",
                             "--set", "model.args.dropout=0.5", cwd=tmp_path)
    assert refused.code == 2
    assert "train.optimizer.lr: 0.001 -> 0.5" in refused.stderr and "model.args.dropout" in refused.stderr

    more = run_in_process("train", "-r", "breast-cancer-mlp", "--resume", "--set", "train.epochs=3", "--json",
                          cwd=tmp_path)
    assert more.code == 0 and more.json()["epochs_run"] == 3, more.stderr
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["epochs"] == 3
    recorded = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert recorded[-1]["changed"] == {"train.epochs": [2, 3]}
