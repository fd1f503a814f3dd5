"""MLflow tracking against a real SQLite store, read back with MLflow's own client: the recipe as dotted params,
every metrics.jsonl row at step = epoch, data fingerprint and git commit as tags, eval/export files as artifacts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bigmodel_cli.errors import UsageError
from bigmodel_cli.tracking import flatten, log_artifacts, open_trackers, parse_names, read_tracking, tracking_uri

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def rows(digits_run):
    """Real rows of a real training (the session's 3-epoch digits-cnn run)."""
    return [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def recipe(digits_run):
    return yaml.safe_load((digits_run / "recipe.yaml").read_text())


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(REPO)  # inside a git repository: the commit is tagged
    return tmp_path / "runs"


def client_for(run_dir):
    from mlflow.tracking import MlflowClient

    info = read_tracking(run_dir)["mlflow"]
    return MlflowClient(info["tracking_uri"]), info["run_id"]


def summary_of(rows):
    best = min(rows, key=lambda r: r["val_loss"])
    return {"best_metrics": best, "best_epoch": best["epoch"], "epochs_run": len(rows), "monitor": "val_loss",
            "stopped_early": False, "wall_time_s": 1.5}


def test_a_run_reads_back_with_mlflow(store, rows, recipe):
    run_dir = store / "digits"
    tracker = open_trackers("mlflow", run_dir, recipe, tags={"bigmodel.data_fingerprint": "f" * 64})
    for row in rows:
        tracker.log_epoch(row)
    tracker.log_summary(summary_of(rows))
    tracker.close("FINISHED")

    assert tracking_uri(run_dir) == f"sqlite:///{store.resolve()}/mlflow.db"  # beside the runs, not ./mlruns
    assert (store / "mlflow.db").is_file()
    client, run_id = client_for(run_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "digits"
    assert client.get_experiment(run.info.experiment_id).name == recipe["name"]
    expected = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in flatten(recipe).items()}
    assert run.data.params == expected
    assert run.data.params["train.optimizer.lr"] == str(recipe["train"]["optimizer"]["lr"])
    assert run.data.params["model.args.width"] == str(recipe["model"]["args"]["width"])
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert history == [(r["epoch"], pytest.approx(r[name])) for r in rows]
    assert "epoch" not in run.data.metrics and "step" not in run.data.metrics
    best = summary_of(rows)["best_metrics"]
    assert run.data.metrics["best_val_loss"] == pytest.approx(best["val_loss"])
    assert run.data.metrics["best_epoch"] == best["epoch"]
    tags = run.data.tags
    assert tags["bigmodel.data_fingerprint"] == "f" * 64 and tags["bigmodel.monitor"] == "val_loss"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head

    # eval and export add their files to the same run; a file in RUN_DIR keeps its folder
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval/test.json").write_text('{"metrics": {"accuracy": 0.97}}')
    (run_dir / "eval/test_roc.png").write_bytes(b"\x89PNG fake")
    (run_dir / "model.onnx").write_bytes(b"onnx bytes")
    report = {"split": "test", "metrics": {"accuracy": 0.97, "roc_auc": None}}
    assert log_artifacts(run_dir, [run_dir / "eval/test.json", run_dir / "eval/test_roc.png"], report,
                         prefix="test") == run_id
    assert log_artifacts(run_dir, [run_dir / "model.onnx"]) == run_id
    assert {a.path for a in client.list_artifacts(run_id)} >= {"eval", "model.onnx"}
    assert {a.path for a in client.list_artifacts(run_id, "eval")} == {"eval/test.json", "eval/test_roc.png"}
    assert client.get_run(run_id).data.metrics["test_accuracy"] == 0.97
    local = client.download_artifacts(run_id, "model.onnx", str(store / "download"))
    assert Path(local).read_bytes() == b"onnx bytes"


def test_resume_continues_the_same_run_and_a_killed_trainer_ends_it(store, rows, recipe):
    run_dir = store / "digits"
    first = open_trackers(["mlflow"], run_dir, recipe)
    first.log_epoch(rows[0])
    first.close("interrupted")
    client, run_id = client_for(run_dir)
    assert client.get_run(run_id).info.status == "KILLED"

    again = open_trackers(["mlflow"], run_dir, recipe, resume=True)
    for row in rows[1:]:
        again.log_epoch(row)
    tracker = again.trackers[0]
    tracker._stop()  # the trainer dies without closing: the worker ends the run itself
    assert client_for(run_dir)[1] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [r["epoch"] for r in rows]


def test_a_worker_started_ahead_opens_the_run_the_tracker_then_fills(store, rows, recipe):
    """`prestart` (bigmodel train, before torch's import) opens the run; the tracker takes the same worker over and
    adds the data's tags and the epochs. A command that fails before training ends its run FAILED."""
    from bigmodel_cli.tracking import mlflow_tracker

    run_dir = store / "ahead"
    mlflow_tracker.prestart(run_dir, recipe)
    worker = mlflow_tracker._AHEAD[tracking_uri(run_dir)].proc
    tracker = open_trackers("mlflow", run_dir, recipe, tags={"bigmodel.data_fingerprint": "a" * 64})
    assert tracker.trackers[0].proc is worker and not mlflow_tracker._AHEAD
    for row in rows:
        tracker.log_epoch(row)
    tracker.close("FINISHED")
    client, run_id = client_for(run_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bigmodel.data_fingerprint"] == "a" * 64
    assert run.data.params["model.args.width"] == str(recipe["model"]["args"]["width"])
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [r["epoch"] for r in rows]

    mlflow_tracker.prestart(store / "broken", recipe)  # e.g. its data was never prepared: fit raises
    mlflow_tracker.abandon("FAILED")
    client, failed_id = client_for(store / "broken")
    assert failed_id != run_id and client.get_run(failed_id).info.status == "FAILED"

    mlflow_tracker.prestart(run_dir, recipe, resume=True)  # on --resume it only opens the store
    again = open_trackers("mlflow", run_dir, recipe, resume=True)
    again.close("FINISHED")
    assert client_for(run_dir)[1] == run_id  # the same run continued, no other made


def test_mlflow_tracking_uri_and_experiment_from_the_environment(tmp_path, monkeypatch, rows, recipe):
    uri = f"sqlite:///{tmp_path}/elsewhere/tracking.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-digits")
    with open_trackers("mlflow", tmp_path / "runs/a", recipe) as tracker:
        tracker.log_epoch(rows[0])
    assert read_tracking(tmp_path / "runs/a")["mlflow"]["tracking_uri"] == uri
    client, run_id = client_for(tmp_path / "runs/a")
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "team-digits"
    assert not (tmp_path / "runs/mlflow.db").exists()


def test_a_store_that_cannot_be_written_is_a_usage_error_before_training(tmp_path, monkeypatch, recipe):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/a-file/mlflow.db")
    with pytest.raises(UsageError, match=r"store sqlite:///.*a-file/mlflow.db: .*a-file is a file, not a folder"):
        open_trackers("mlflow", tmp_path / "runs/a", recipe)
    (tmp_path / "not-a-db").write_text("plain text, not SQLite " * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/not-a-db")
    with pytest.raises(UsageError, match="cannot write .*not a database"):
        open_trackers("mlflow", tmp_path / "runs/a", recipe)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite://")
    with pytest.raises(UsageError, match="in-memory SQLite store keeps nothing"):
        open_trackers("mlflow", tmp_path / "runs/a", recipe)
    # a tracking server nobody listens on (port 9 on the loopback is closed)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(UsageError, match=r"MLflow store http://127.0.0.1:9: cannot open a run"):
        open_trackers("mlflow", tmp_path / "runs/a", recipe)
    assert not (tmp_path / "runs/a/tracking.json").exists()


def test_untracked_runs_and_unknown_trackers(tmp_path, recipe):
    assert log_artifacts(tmp_path, [tmp_path / "x"]) is None  # no tracking.json: nothing to add to
    assert parse_names("MLflow, tensorboard,none") == ["mlflow", "tensorboard"]
    assert parse_names(None) == [] and not open_trackers([], tmp_path, recipe)
    with pytest.raises(UsageError, match="'mlflw' is not a tracker .* did you mean 'mlflow'"):
        parse_names(["mlflw"])


def test_tensorboard_tracker_writes_event_files(tmp_path, rows, recipe):
    with open_trackers(["tensorboard"], tmp_path / "run", recipe) as tracker:
        for row in rows:
            tracker.log_epoch(row)
        tracker.log_summary(summary_of(rows))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [r["epoch"] for r in rows]
    assert "best/val_loss" in events.Tags()["scalars"]


def test_importing_tracking_does_not_import_mlflow():
    code = ("import sys, bigmodel_cli.tracking as t; t.open_trackers([], '.', {'name': 'x'}); "
            "print('mlflow' in sys.modules, 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"], out.stderr
