"""One trial: a real `bigmodel train` subprocess, reported epoch by epoch, stopped with SIGTERM when pruned."""

import threading

import optuna
import pytest

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tuning import trial as T
from bigmodel_cli.tuning.space import load_space
from bigmodel_cli.tuning.storage import open_storage
from bigmodel_cli.tuning.study import make_pruner, objective_of


def setup_for(tmp_path, cancer_data, objective="val_loss", direction="minimize", epochs=6):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("train.optimizer.lr: {float: [1.0e-3, 1.0e-2], log: true}")
    base = resolve("breast-cancer-mlp").model_dump(mode="json")
    sets = [f"data.prepared={cancer_data}", f"train.epochs={epochs}"]
    return T.Setup(recipe_ref="breast-cancer-mlp", sets=sets, space=load_space(space_file, base),
                   objective=objective, direction=direction, out=tmp_path / "tune", study_name="s",
                   env={"CI": "1", **__import__("os").environ}, stop=threading.Event())


def test_a_pruned_trial_is_stopped_after_the_epoch_that_decided_it(tmp_path, cancer_data):
    # 400 epochs of a few ms: tune polls every 0.2 s, so a short run could end before the SIGTERM reaches it
    setup = setup_for(tmp_path, cancer_data, epochs=400)
    # any val_loss above 0 prunes from epoch 2 on: the subprocess must be stopped there, not run its 400 epochs
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=2))
    trial = study.ask()
    values = setup.space.suggest(trial)
    run_dir, resume = T.prepare_dir(setup, trial, values)
    outcome = T.run(setup, trial, run_dir, values, resume)
    assert outcome.state == "PRUNED"
    assert outcome.epochs == 2
    assert sorted(study.trials[0].intermediate_values)[:2] == [1, 2]
    assert T.has_checkpoint(run_dir)  # SIGTERM saved a resumable checkpoint
    assert "SIGTERM: saved" in (run_dir / "train.log").read_text()
    assert len(T.read_rows(run_dir / "metrics.jsonl")) < 200


def test_a_trial_dir_of_another_study_is_not_overwritten(tmp_path, cancer_data):
    setup = setup_for(tmp_path, cancer_data)
    (setup.out / "trial_000").mkdir(parents=True)
    (setup.out / "trial_000" / "tune.json").write_text('{"study": "other", "trial": 0}')
    study = optuna.create_study()
    with pytest.raises(UsageError, match="already holds a run .study 'other'"):
        T.prepare_dir(setup, study.ask(), {})


def test_best_value_follows_the_direction():
    rows = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": None}, {"epoch": 3, "val_loss": 0.3}]
    assert T.best_value(rows, "val_loss", "minimize") == 0.3
    assert T.best_value(rows, "val_loss", "maximize") == 0.5
    assert T.best_value(rows, "val_f1", "maximize") is None


def test_objective_and_direction_defaults():
    recipe = resolve("digits-cnn")  # monitor val_accuracy, mode auto
    assert objective_of(recipe, None, None) == ("val_accuracy", "maximize")
    assert objective_of(recipe, "val_loss", None) == ("val_loss", "minimize")
    assert objective_of(recipe, "val_loss", "max") == ("val_loss", "maximize")
    with pytest.raises(UsageError, match="choose max or min"):
        objective_of(recipe, None, "up")
    with pytest.raises(UsageError, match="choose one of median, hyperband, none"):
        make_pruner("asha", 10)


def test_storages(tmp_path):
    store, label = open_storage(None, tmp_path / "a" / "study.journal")
    assert isinstance(store, optuna.storages.JournalStorage) and label.endswith("study.journal")
    optuna.create_study(storage=store, study_name="x")
    assert (tmp_path / "a" / "study.journal").is_file()
    store, _ = open_storage(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "unused")
    assert isinstance(store, optuna.storages.RDBStorage)
    with pytest.raises(UsageError, match="SQLite locks under parallel writers"):
        open_storage(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "unused", parallel=2)
    with pytest.raises(UsageError, match="not a storage"):
        open_storage("redis://localhost/0", tmp_path / "unused")
    (tmp_path / "dir.journal").mkdir()
    with pytest.raises(UsageError, match="not a file"):
        open_storage(str(tmp_path / "dir.journal"), tmp_path / "unused")


def test_trials_of_a_dead_tune_process_are_queued_to_resume(tmp_path):
    import socket
    import subprocess
    import sys

    from bigmodel_cli.tuning.study import _counted, _recover_stale

    store, _ = open_storage(None, tmp_path / "study.journal")
    study = optuna.create_study(storage=store, study_name="s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = study.ask({"train.optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
    stale.set_user_attr("worker", f"{socket.gethostname()}:{dead.stdout.strip()}")
    stale.set_user_attr("run_dir", str(tmp_path / "trial_000"))
    alive = study.ask()
    alive.set_user_attr("worker", T.worker_id())  # this process: still running, left alone
    _recover_stale(study)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {0: "FAIL", 1: "RUNNING", 2: "WAITING"}
    queued = study.get_trials()[2]
    assert queued.user_attrs == {"resumes": 0, "resume_dir": str(tmp_path / "trial_000")}
    assert queued.params == {} and study.get_trials()[0].user_attrs["interrupted"] is True
    assert _counted(study) == 1  # the interrupted trial does not count; its queued resumption will
    again = study.ask()
    assert again.number == 2  # the queued trial first, with the stale trial's values
    assert again.suggest_float("train.optimizer.lr", 1e-3, 1e-2, log=True) == stale.params["train.optimizer.lr"]
