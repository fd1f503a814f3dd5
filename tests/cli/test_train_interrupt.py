"""Ctrl-C during `bigmodel train`: a resumable checkpoint, exit 130, and `--resume` finishes the run;
and a deterministic run repeats bit for bit."""

import json
import os
import signal
import subprocess
import sys

from tests.conftest import run_cli, run_in_process


def test_sigint_saves_exits_130_and_resume_completes(tmp_path):
    assert run_in_process("prepare-data", "-r", "digits-cnn", cwd=tmp_path).code == 0
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "train", "-r", "digits-cnn"], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    last_line = rest.strip().splitlines()[-1]
    assert last_line.startswith("error: SIGINT: saved") and "--resume" in last_line and "Traceback" not in rest
    run = tmp_path / "runs/digits-cnn"
    assert (run / "checkpoints/last.pt").is_file()

    resumed = run_cli("train", "-r", "digits-cnn", "--resume", "--json", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2
    assert resumed.json()["epochs_run"] == len(epochs)


def test_deterministic_training_repeats_exactly(tmp_path):
    assert run_in_process("prepare-data", "-r", "breast-cancer-mlp", cwd=tmp_path).code == 0
    args = ["train", "-r", "breast-cancer-mlp", "--set", "train.epochs=2", "--set", "train.deterministic=true"]
    for run in ("a", "b"):
        assert run_cli(*args, "--run-dir", run, cwd=tmp_path).code == 0
    import torch

    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["networks"]["model"]
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["networks"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
