"""`bigmodel train --report-to mlflow`, then `eval` and `export` adding their files to the same MLflow run, read back
with MLflow's own client."""

import json

import pytest

from tests.conftest import run_in_process


@pytest.mark.slow
def test_train_eval_export_land_in_one_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": ""}
    assert run_in_process("prepare-data", "-r", "breast-cancer-mlp", cwd=tmp_path).code == 0
    trained = run_in_process("train", "-r", "breast-cancer-mlp", "--set", "train.epochs=2", "--report-to", "mlflow",
                             "--json", cwd=tmp_path, env=env)
    assert trained.code == 0, trained.stderr
    run_dir = tmp_path / "runs/breast-cancer-mlp"
    assert run_in_process("eval", "runs/breast-cancer-mlp", cwd=tmp_path, env=env).code == 0
    assert run_in_process("export", "runs/breast-cancer-mlp", cwd=tmp_path, env=env).code == 0

    info = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert info["tracking_uri"] == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "mlp"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], pytest.approx(r["val_loss"])) for r in rows]
    manifest = json.loads((tmp_path / "data/breast-cancer-mlp/manifest.json").read_text())
    fingerprint = manifest.get("fingerprint") or manifest["source_sha256"]
    assert run.data.tags["bigmodel.data_fingerprint"] == fingerprint
    report = json.loads((run_dir / "eval/test.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"eval", "model.onnx", "export.json"}
    assert "eval/test.json" in {a.path for a in client.list_artifacts(run.info.run_id, "eval")}


def test_an_mlflow_store_that_cannot_be_written_stops_train_with_exit_2(tmp_path):
    assert run_in_process("prepare-data", "-r", "breast-cancer-mlp", cwd=tmp_path).code == 0
    (tmp_path / "a-file").write_text("not a folder")
    result = run_in_process("train", "-r", "breast-cancer-mlp", "--set", "train.epochs=1", "--report-to", "mlflow",
                            cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/a-file/mlflow.db"})
    assert result.code == 2 and "MLflow store sqlite:///" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs/breast-cancer-mlp/checkpoints").exists()  # stopped before training


def test_a_train_that_fails_before_training_ends_its_mlflow_run_failed(tmp_path):
    """The run is opened as the command starts (beside torch's import); data never prepared: exit 2, run FAILED."""
    from mlflow.tracking import MlflowClient

    result = run_in_process("train", "-r", "breast-cancer-mlp", "--report-to", "mlflow", cwd=tmp_path,
                            env={"MLFLOW_TRACKING_URI": ""})
    assert result.code == 2 and "prepare-data" in result.stderr and "Traceback" not in result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs/mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
