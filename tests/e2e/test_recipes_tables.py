"""The table recipes end to end with the real commands: wine-mlp (multiclass), diabetes-regression and
tabular-csv on a generated CSV with missing values and a string column (the user's own table)."""

from __future__ import annotations

import numpy as np
import pytest
from recipe_pipeline import assert_learned, run_recipe

from tests.unit.data.conftest import people_rows, write_csv


@pytest.mark.slow
def test_wine_mlp(cli, tmp_path):
    result = run_recipe(cli, tmp_path, "wine-mlp", sets=["train.epochs=8"])
    report = result.eval
    assert result.manifest["classes"] == ["class_0", "class_1", "class_2"]
    assert report["n"] == result.manifest["splits"]["test"] == 36
    assert report["metrics"]["accuracy"] > 0.8 and "top_2_accuracy" in report["metrics"]
    assert_learned(report, margin=0.4)  # chance: the largest cultivar, 0.39 of the test rows
    assert len(report["confusion_matrix"]) == 3
    assert result.outputs["probabilities"].shape == (len(result.inputs), 3)


@pytest.mark.slow
def test_diabetes_regression(cli, tmp_path):
    result = run_recipe(cli, tmp_path, "diabetes-regression", sets=["train.epochs=40"])
    metrics = result.eval["metrics"]
    assert result.manifest["classes"] is None and result.eval["n"] == result.manifest["splits"]["test"]
    assert {"mse", "rmse", "mae", "r2"} <= set(metrics)
    assert metrics["r2"] > 0.2  # better than predicting the mean; the full recipe reaches ~0.5
    assert list(result.outputs) == ["prediction"] and result.outputs["prediction"].shape == (len(result.inputs), 1)
    # the recipe's gates are what CI would run: r2 and mae
    gated = cli("eval", str(result.run), "--fail-over", "mae=1", cwd=tmp_path)
    assert gated.code == 3 and "mae" in gated.stderr
    # raw rows of the same table as a CSV file; a target that is not a number names its row
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.head(30).rename(columns={"target": "progression"})
    frame.to_csv(tmp_path / "fresh.csv", index=False)
    scored = cli("eval", str(result.run), "--data", str(tmp_path / "fresh.csv"), "--json", cwd=tmp_path)
    assert scored.code == 0, scored.stderr
    assert scored.json()["n"] == 30 and scored.json()["metrics"]["r2"] is not None
    frame = frame.astype({"progression": object})
    frame.loc[4, "progression"] = "n/a"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    refused = cli("eval", str(result.run), "--data", str(tmp_path / "bad.csv"), cwd=tmp_path)
    assert refused.code == 2 and "row 5" in refused.stderr and "progression" in refused.stderr


@pytest.mark.slow
def test_tabular_csv_on_the_users_own_table(cli, tmp_path):
    table = write_csv(tmp_path / "people.csv", people_rows(300))
    before = table.read_bytes()
    result = run_recipe(cli, tmp_path, "tabular-csv", source=str(table),
                        sets=["data.target=label", "data.drop=[id]", "train.epochs=15"])
    assert table.read_bytes() == before  # source data untouched
    assert result.manifest["classes"] == ["high", "low", "mid"]
    assert "id" not in result.manifest["features"] and "label" not in result.manifest["features"]
    assert result.eval["metrics"]["accuracy"] > 0.6
    assert_learned(result.eval, margin=0.1)  # the label follows age and city; chance is the largest class's share
    # raw rows with missing values, as a user would bring them, through the fitted transform
    fresh = write_csv(tmp_path / "new.csv", people_rows(40, seed=1))
    scored = cli("eval", str(result.run), "--data", str(fresh), "--json", cwd=tmp_path)
    assert scored.code == 0, scored.stderr
    assert scored.json()["n"] == 40 and scored.json()["metrics"]["accuracy"] > 0.5
    assert (result.run / "eval" / "data-new" / "rows.json").is_file()  # a raw file has no split
    bad = write_csv(tmp_path / "bad.csv", [{**row, "label": "unknown"} if i == 3 else row
                                          for i, row in enumerate(people_rows(10, seed=2))])
    refused = cli("eval", str(result.run), "--data", str(bad), cwd=tmp_path)
    assert refused.code == 2 and "row 4" in refused.stderr and "'unknown'" in refused.stderr
    assert np.isfinite(result.outputs["probabilities"]).all()
