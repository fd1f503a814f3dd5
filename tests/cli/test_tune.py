"""`bigmodel tune`: bad input refused before any trial, a study that resumes after Ctrl-C, best.yaml, trials.csv,
plots, and two processes sharing one study through a journal file. Trials are real `bigmodel train` runs of
breast-cancer-mlp for 1-2 epochs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import run_in_process, tree

SPACE = """
train.optimizer.lr: {float: [1.0e-3, 3.0e-2], log: true}
model.args.hidden: {choice: [[16], [32, 16]]}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with prepared breast-cancer data and a space file."""
    root = tmp_path_factory.mktemp("tune")
    assert run_in_process("prepare-data", "-r", "breast-cancer-mlp", cwd=root).code == 0
    (root / "space.yaml").write_text(SPACE)
    return root


def tune_args(study, trials, *extra):
    return ["tune", "-r", "breast-cancer-mlp", "--space", "space.yaml", "--trials", str(trials), "--study", study,
            *extra]


def test_bad_input_exits_2_before_any_trial(workdir):
    before = tree(workdir)
    (workdir / "bad.yaml").write_text("train.optimizer.lrr: {float: [1.0e-4, 1.0e-1]}")
    bad = run_in_process("tune", "-r", "breast-cancer-mlp", "--space", "bad.yaml", "--trials", "2", cwd=workdir)
    assert bad.code == 2 and "did you mean 'train.optimizer.lr'" in bad.stderr and "Traceback" not in bad.stderr
    (workdir / "bad.yaml").write_text("train.optimizer.lr: {float: [1.0e-1, 1.0e-4]}")
    bad = run_in_process("tune", "-r", "breast-cancer-mlp", "--space", "bad.yaml", "--trials", "2", cwd=workdir)
    assert bad.code == 2 and "inverted range" in bad.stderr
    # a database nobody listens on: a clear exit 2 at once, not a hang (port 9 is closed on the loopback)
    started = time.perf_counter()
    unreachable = run_in_process(*tune_args("pg", 2, "--storage", "postgresql://bench:secret@127.0.0.1:9/optuna"),
                                 cwd=workdir, env={"BIGMODEL_STORAGE_TIMEOUT": "3"}, timeout=60)
    assert unreachable.code == 2 and "--storage postgresql://bench:***@127.0.0.1:9/optuna" in unreachable.stderr
    assert "secret" not in unreachable.stderr and time.perf_counter() - started < 30
    (workdir / "bad.yaml").unlink()
    assert tree(workdir) == before  # nothing written: no runs/, no journal


@pytest.mark.slow
def test_an_objective_that_is_never_logged_stops_after_the_first_epoch(workdir):
    # 400 epochs of ~0.02 s: the trial is stopped at the first epoch row tune reads (it polls every 0.2 s), long
    # before the last one, however loaded the machine
    result = run_in_process(*tune_args("obj", 3, "--objective", "val_acc", "--set", "train.epochs=400"), cwd=workdir)
    assert result.code == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--objective 'val_acc' is not a logged metric; did you mean 'val_accuracy'?" in last
    assert "val_loss" in last
    rows = list(csv.DictReader((workdir / "runs/obj-tune/trials.csv").open()))
    assert [r["state"] for r in rows] == ["FAIL"]  # one trial, stopped: the other two never started
    metrics = (workdir / "runs/obj-tune/trial_000/metrics.jsonl").read_text().splitlines()
    assert len(metrics) < 200


@pytest.mark.slow
def test_an_interrupted_study_resumes_and_writes_the_best_recipe(workdir):
    args = [sys.executable, "-m", "bigmodel_cli", *tune_args("resume", 2, "--set", "train.epochs=2", "--seed", "1")]
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = workdir / "runs/resume-tune/trial_000/metrics.jsonl"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the running trial saves a checkpoint
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err.strip().splitlines()[-1]
    assert (workdir / "runs/resume-tune/trial_000/checkpoints/last.pt").is_file()

    result = run_in_process(*tune_args("resume", 2, "--set", "train.epochs=2", "--seed", "1", "--json"), cwd=workdir)
    assert result.code == 0, result.stderr
    doc = result.json()
    states = [(t["trial"], t["state"]) for t in doc["trials"]]
    assert states[0] == (0, "INTERRUPTED") and doc["counts"]["COMPLETE"] == 2
    resumed = [t for t in doc["trials"] if t["resumes"] == 0]
    assert len(resumed) == 1 and resumed[0]["run_dir"].endswith("trial_000") and resumed[0]["epochs"] == 2
    assert "--resume" in (workdir / "runs/resume-tune/trial_000/train.log").read_text()

    best = doc["best"]
    complete = [t for t in doc["trials"] if t["state"] == "COMPLETE"]
    assert best["value"] == min(t["value"] for t in complete)  # val_loss: lower is better
    recipe = yaml.safe_load((workdir / "runs/resume-tune/best.yaml").read_text())
    assert recipe["train"]["optimizer"]["lr"] == pytest.approx(best["params"]["train.optimizer.lr"])
    assert recipe["model"]["args"]["hidden"] == best["params"]["model.args.hidden"]
    assert run_in_process("recipes", "validate", "runs/resume-tune/best.yaml", cwd=workdir).code == 0
    rows = list(csv.DictReader((workdir / "runs/resume-tune/trials.csv").open()))
    assert len(rows) == 3 and {r["state"] for r in rows} == {"INTERRUPTED", "COMPLETE"}
    for plot in ("history.png", "importances.png"):
        assert (workdir / "runs/resume-tune" / plot).read_bytes()[:4] == b"\x89PNG"

    again = run_in_process(*tune_args("resume", 2, "--set", "train.epochs=2", "--json"), cwd=workdir)
    assert again.code == 0 and again.json()["counts"] == doc["counts"]  # finished: nothing more to run
    other = run_in_process("tune", "-r", "breast-cancer-mlp", "--space", "space.yaml", "--trials", "2", "--study",
                           "resume", "--objective", "val_accuracy", cwd=workdir)
    assert other.code == 2 and "was started with another objective" in other.stderr


@pytest.mark.slow
def test_two_processes_share_one_study_through_a_journal_file(workdir):
    args = [sys.executable, "-m", "bigmodel_cli", *tune_args("shared", 3, "--set", "train.epochs=1", "--storage",
                                                              "runs/shared.journal", "--json")]
    env = {**os.environ, "CI": "1"}
    procs = [subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-500:] + outputs[1][1][-500:]
    final = [json.loads(out) for out, _ in outputs]
    last = max(final, key=lambda d: d["counts"]["COMPLETE"])
    assert last["counts"]["COMPLETE"] == 3 and len(last["trials"]) == 3  # the study's total, not 3 each
    assert len({t["worker"] for t in last["trials"]}) == 2  # both processes ran trials
    assert len({t["run_dir"] for t in last["trials"]}) == 3
