"""Exact resume: a training run killed with SIGKILL at several points and resumed each time ends with
weights bit-for-bit equal to an uninterrupted run (CPU), and the same metrics history."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import history as shared_history
from tests.conftest import run_cli, run_in_process

ARGS = ["train", "-r", "digits-cnn", "--set", "train.epochs=3", "--set", "train.checkpoint_every_steps=1",
        "--set", "train.early_stopping.patience=null", "--set", "model.args={width: 8, dropout: 0.2}"]


def history(run):
    return shared_history(run, drop=("time_s", "samples_per_s"))


def step_of(checkpoint):
    try:
        return torch.load(checkpoint, weights_only=True)["loop"]["step"]
    except (OSError, RuntimeError, EOFError):
        return None


def kill_after_steps(args, cwd, steps):
    """Start training and SIGKILL it once it has saved `steps` more optimiser steps; True if really killed."""
    checkpoint = cwd / "cut/checkpoints/last.pt"
    start = step_of(checkpoint) or 0
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args], cwd=cwd, env=env,
                            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if (step_of(checkpoint) or 0) >= start + steps:
            proc.send_signal(signal.SIGKILL)  # wherever it is: mid-step, mid-write, mid-validation
            break
        time.sleep(0.02)
    return proc.wait(timeout=60) == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bit_exact(tmp_path):
    assert run_in_process("prepare-data", "-r", "digits-cnn", cwd=tmp_path).code == 0
    straight = run_cli(*ARGS, "--run-dir", "straight", cwd=tmp_path)
    assert straight.code == 0, straight.stderr

    cut = [*ARGS, "--run-dir", "cut"]
    kills = 0
    for i, steps in enumerate((7, 16, 13)):  # mid-epoch, across an epoch end, mid-epoch again (20 steps/epoch)
        kills += kill_after_steps(cut if i == 0 else [*cut, "--resume"], tmp_path, steps)
    assert kills == 3 and step_of(tmp_path / "cut/checkpoints/last.pt") < 3 * 20  # really died mid-way, 3 times
    finished = run_cli(*cut, "--resume", cwd=tmp_path)
    assert finished.code == 0, finished.stderr

    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["networks"]["model"][k], b["networks"]["model"][k]) for k in a["networks"]["model"])
    assert a["loop"]["step"] == b["loop"]["step"] == 3 * 20
    assert history(tmp_path / "straight") == history(tmp_path / "cut")
    assert not list((tmp_path / "cut").rglob(".*.tmp"))  # temporaries of killed writes are cleaned on resume
