"""`bigmodel train --devices 2`: real torch.distributed processes (gloo on CPU) through torch.distributed.run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.training.loop import fit
from tests.conftest import history, run_cli, run_in_process

pytestmark = pytest.mark.slow

NO_DROPOUT = ["--set", "model.args.dropout=0", "--set", "train.early_stopping.patience=null"]

CRASHY = textwrap.dedent("""
    import os, signal, time
    from torch import nn

    class Net(nn.Module):
        '''Rank 1 dies (SIGKILL), raises, or produces NaN at its Nth training forward.'''
        def __init__(self, num_classes, input_shape, at=-1, how="kill", stamp=""):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))
            self.calls, self.at, self.how, self.stamp = 0, at, how, stamp
        def forward(self, x):
            out = self.body(x)
            if self.training and os.environ.get("RANK") == "1":
                self.calls += 1
                if self.calls == self.at:
                    if self.how == "nan":
                        return out * float("nan")
                    open(self.stamp, "w").write(str(time.time()))
                    if self.how == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError("rank one exploded")
            return out

    def build(num_classes, input_shape, at=-1, how="kill", stamp=""):
        return Net(num_classes, input_shape, at, how, stamp)
""")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    # val 0.16: 91 validation rows, odd, so that a padding sampler would count one row twice
    prepare(resolve("breast-cancer-mlp", {"data.prepared": str(root / "data/breast-cancer-mlp")},
                    ["data.split.val=0.16"]))
    (root / "crashy_nets.py").write_text(CRASHY)
    return root


@pytest.fixture(scope="module")
def ddp_run(work):
    """breast-cancer-mlp on 2 processes (DDP), batch 16 each, 3 epochs."""
    two = run_cli("train", "-r", "breast-cancer-mlp", "--devices", "2", "--run-dir", "runs/two", "--set",
                  "train.epochs=3", "--set", "train.batch_size=16", *NO_DROPOUT, "--json", cwd=work)
    assert two.code == 0, two.stderr
    return two


def on_path(folder):
    """PYTHONPATH with `folder` first, keeping the one this test runs with (a worktree's code, not the install)."""
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def test_ddp_two_processes_equal_one_process_with_the_global_batch(work, ddp_run):
    sizes = json.loads((work / "data/breast-cancer-mlp/manifest.json").read_text())["splits"]
    assert sizes["val"] % 2 == 1  # padding a sampler with a duplicate would change the metrics
    one = resolve("breast-cancer-mlp", {"data.prepared": str(work / "data/breast-cancer-mlp")},
                  ["train.epochs=3", "train.batch_size=32", "model.args.dropout=0",
                   "train.early_stopping.patience=null"])
    fit(one, work / "runs/one")
    summary = ddp_run.json()  # one JSON document, from rank 0 only
    assert summary["processes"] == 2 and summary["effective_batch_size"] == 32
    for a, b in zip(history(work / "runs/one"), history(work / "runs/two"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        for key in ("val_loss", "val_accuracy", "val_f1", "val_roc_auc"):
            assert b[key] == pytest.approx(a[key], rel=1e-5)  # computed on exactly the validation set


def test_fsdp_matches_ddp_saves_sharded_and_resumes_on_one_and_two(work, ddp_run, monkeypatch):
    args = ["train", "-r", "breast-cancer-mlp", "--devices", "2", "--set", "train.batch_size=16", *NO_DROPOUT]
    fsdp = run_cli(*args, "--run-dir", "runs/fsdp", "--set", "train.epochs=3", "--set", "train.strategy=fsdp",
                   cwd=work)
    assert fsdp.code == 0, fsdp.stderr
    last = work / "runs/fsdp/checkpoints/last"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2 and (last / "state.pt").is_file()
    for a, b in zip(history(work / "runs/two"), history(work / "runs/fsdp"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.02)

    import shutil

    shutil.copytree(work / "runs/fsdp", work / "runs/fsdp-on-1")
    on_one = resolve("breast-cancer-mlp", {"data.prepared": str(work / "data/breast-cancer-mlp")},
                     ["train.epochs=4", "train.batch_size=16", "train.strategy=fsdp", "model.args.dropout=0",
                      "train.early_stopping.patience=null"])
    summary = fit(on_one, work / "runs/fsdp-on-1", resume=True)
    assert summary["epochs_run"] == 4 and (work / "runs/fsdp-on-1/checkpoints/last.pt").is_file()
    on_two = run_cli(*args, "--run-dir", "runs/fsdp", "--set", "train.epochs=4", "--set", "train.strategy=fsdp",
                     "--resume", cwd=work)
    assert on_two.code == 0, on_two.stderr
    assert [r["epoch"] for r in history(work / "runs/fsdp")] == [1, 2, 3, 4]

    from bigmodel_cli.run import load_network, load_run

    monkeypatch.chdir(work)  # the run's recipe names its prepared data relative to where training ran
    net, _, path = load_network(load_run("runs/fsdp"), "best")  # one process reads the shards
    assert path.is_dir() and sum(p.numel() for p in net.parameters()) > 0


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    assert run_in_process("prepare-data", "-r", "digits-cnn", cwd=root).code == 0
    return root


def test_fsdp_cnn_small_matches_ddp(digits):
    tmp_path = digits
    common = ["train", "-r", "digits-cnn", "--devices", "2", "--set", "train.epochs=2", "--set",
              "train.batch_size=32", "--set", "model.args={width: 8, dropout: 0}"]
    ddp = run_cli(*common, "--run-dir", "runs/ddp", cwd=tmp_path)
    fsdp = run_cli(*common, "--run-dir", "runs/fsdp", "--set", "train.strategy=fsdp", "--set",
                   "train.activation_checkpointing=true", cwd=tmp_path)
    assert ddp.code == 0 and fsdp.code == 0, ddp.stderr + fsdp.stderr
    a, b = history(tmp_path / "runs/ddp")[-1], history(tmp_path / "runs/fsdp")[-1]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.02)


def test_fsdp_bf16_mixed_with_batchnorm_and_a_last_batch_of_one_row_on_cpu(digits):
    """BatchNorm under FSDP's bf16 on CPU crashed; and the rank whose share of the last global batch is empty
    must still run a forward (FSDP2 gathers parameters in every forward: a skipped one hangs the other rank)."""
    n = json.loads((digits / "data/digits-cnn/manifest.json").read_text())["splits"]["train"]
    per_rank = next(b for b in range(32, 0, -1) if n % (2 * b) == 1)
    result = run_cli("train", "-r", "digits-cnn", "--devices", "2", "--run-dir", "runs/fsdp-bf16", "--set",
                     "train.strategy=fsdp", "--set", "train.precision=bf16-mixed", "--set", "train.epochs=1",
                     "--set", f"train.batch_size={per_rank}", "--set", "model.args={width: 8}", "--json",
                     cwd=digits, timeout=240)
    assert result.code == 0, result.stderr
    row = history(digits / "runs/fsdp-bf16")[-1]
    assert row["val_accuracy"] > 0.4 and row["train_loss"] < 2.3  # learned in one epoch (chance: 0.1, ln 10 = 2.303)


def test_sync_batchnorm_on_cpu_is_refused_before_anything_is_written(digits):
    result = run_in_process("train", "-r", "digits-cnn", "--run-dir", "runs/sync", "--set", "train.sync_batchnorm=true",
                            "--set", "train.devices=cpu", cwd=digits)
    assert result.code == 2 and "sync_batchnorm needs CUDA" in result.stderr
    assert not (digits / "runs/sync").exists()


def test_a_killed_worker_fails_the_run_within_seconds(work):
    stamp = work / "killed-at"
    start = time.time()
    result = run_cli("train", "-r", "breast-cancer-mlp", "--devices", "2", "--run-dir", "runs/killed", "--set",
                     "model.name=null", "--set", "model.component=crashy_nets:build", "--set",
                     f"model.args={{at: 20, how: kill, stamp: {stamp}}}", "--set", "train.epochs=100",
                     cwd=work, env=on_path(work), timeout=120)
    ended = time.time()
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: worker rank 1 failed")
    assert "SIGKILL" in result.stderr.strip().splitlines()[-1]
    assert ended - float(stamp.read_text()) < 30 and ended - start < 120


def test_a_crashing_worker_reports_its_error(work):
    result = run_cli("train", "-r", "breast-cancer-mlp", "--devices", "2", "--run-dir", "runs/crash", "--set",
                     "model.name=null", "--set", "model.component=crashy_nets:build", "--set",
                     f"model.args={{at: 5, how: raise, stamp: {work / 'crash-stamp'}}}", cwd=work,
                     env=on_path(work))
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1] == ("error: worker rank 1 failed: internal error: RuntimeError: "
                                                      "rank one exploded (rerun with --debug for the traceback)")


def test_divergence_on_one_rank_stops_every_rank(work):
    result = run_cli("train", "-r", "breast-cancer-mlp", "--devices", "2", "--run-dir", "runs/nan", "--set",
                     "model.name=null", "--set", "model.component=crashy_nets:build", "--set",
                     "model.args={at: 9, how: nan}", cwd=work, env=on_path(work))
    assert result.code == 1 and "training diverged" in result.stderr and "at step 9" in result.stderr


def test_sigterm_saves_exits_130_and_resume_finishes(work):
    args = ["train", "-r", "breast-cancer-mlp", "--devices", "2", "--run-dir", "runs/term", "--set",
            "train.epochs=300", "--set", "train.early_stopping.patience=null"]
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args], cwd=work, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=90) == 130, rest
    assert "continue with --resume" in rest.strip().splitlines()[-1]
    saved = torch.load(work / "runs/term/checkpoints/last.pt", weights_only=True)
    assert saved["loop"]["epoch"] >= 2 and len(saved["rng_ranks"]) == 2
    resumed = run_cli(*args[:-4], "--set", f"train.epochs={saved['loop']['epoch'] + 1}", "--set",
                      "train.early_stopping.patience=null", "--resume", cwd=work)
    assert resumed.code == 0, resumed.stderr
    assert len(history(work / "runs/term")) == saved["loop"]["epoch"] + 1
