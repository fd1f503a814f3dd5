import json
import sys
import textwrap

import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.errors import Interrupted, JobFailed, UsageError
from bigmodel_cli.training.trainer import fit

NETS = textwrap.dedent("""
    import os, signal
    import torch
    from torch import nn

    class Net(nn.Module):
        '''An MLP with dropout that can signal itself (SIGTERM) or emit NaN after N training forwards.'''
        def __init__(self, num_classes, input_shape, term_at=-1, nan_at=-1):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Dropout(0.3),
                                      nn.Linear(16, num_classes))
            self.calls, self.term_at, self.nan_at = 0, term_at, nan_at
        def forward(self, x):
            if self.training:
                self.calls += 1
                if self.calls == self.term_at:
                    os.kill(os.getpid(), signal.SIGTERM)
            out = self.body(x)
            return out * float("nan") if self.training and self.calls == self.nan_at else out

    def build(num_classes, input_shape, term_at=-1, nan_at=-1):
        return Net(num_classes, input_shape, term_at, nan_at)
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bc")
    prepare(resolve("breast-cancer-mlp", {"data.prepared": str(root / "data")}))
    return root / "data"


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "test_nets_mod.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "test_nets_mod:build"
    sys.modules.pop("test_nets_mod", None)


def recipe(data_dir, *sets, **flags):
    return resolve("breast-cancer-mlp", {"data.prepared": str(data_dir), **flags},
                   ["train.epochs=3", "train.early_stopping.patience=null", *sets])


def test_training_learns_and_writes_the_run(data_dir, tmp_path):
    summary = fit(recipe(data_dir), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_f1", "val_roc_auc", "lr",
                "samples_per_s", "time_s"):
        assert key in rows[0]
    assert rows[-1]["val_accuracy"] > 0.9 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (tmp_path / "run/recipe.yaml").is_file()
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "loop", "rng", "meta"):
        assert key in state
    assert state["loop"]["epoch"] == 3
    assert torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["meta"]["model"] == "mlp"
    assert summary["best_epoch"] in (1, 2, 3) and summary["epochs_run"] == 3


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("term_at", [5, 14])  # mid-epoch, and just after an epoch boundary (13 batches/epoch)
def test_interrupt_then_resume_equals_uninterrupted(data_dir, tmp_path, nets, term_at):
    sets = [f"model.component={nets}", "model.name=null", "model.args={}", "train.optimizer.name=sgd"]
    fit(recipe(data_dir, *sets), tmp_path / "straight")
    with pytest.raises(Interrupted, match="--resume"):
        fit(recipe(data_dir, *sets, f"model.args={{term_at: {term_at}}}"), tmp_path / "cut")
    assert (tmp_path / "cut/checkpoints/last.pt").is_file()
    fit(recipe(data_dir, *sets), tmp_path / "cut", resume=True)
    a, b = _weights(tmp_path / "straight/checkpoints/last.pt"), _weights(tmp_path / "cut/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight = (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["val_loss"] for x in straight] == [json.loads(x)["val_loss"] for x in cut]


def test_nan_loss_stops_with_the_step(data_dir, tmp_path, nets):
    r = recipe(data_dir, f"model.component={nets}", "model.name=null", "model.args={nan_at: 7}")
    with pytest.raises(JobFailed, match="loss is nan at step 7"):
        fit(r, tmp_path / "run")


def test_early_stopping(data_dir, tmp_path):
    r = recipe(data_dir, "train.epochs=10", "train.early_stopping={monitor: val_loss, patience: 2, min_delta: 10}")
    summary = fit(r, tmp_path / "run")
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["best_epoch"] == 1


def test_bf16_mixed_trains_on_cpu_and_fp16_is_refused(data_dir, tmp_path):
    summary = fit(recipe(data_dir, "train.precision=bf16-mixed", "train.epochs=1"), tmp_path / "bf16")
    assert summary["last_metrics"]["val_accuracy"] > 0.5
    with pytest.raises(UsageError, match="16-mixed needs a CUDA GPU"):
        fit(recipe(data_dir, "train.precision=16-mixed"), tmp_path / "fp16")


def test_accumulation_and_clipping_change_the_step_count(data_dir, tmp_path):
    summary = fit(recipe(data_dir, "train.epochs=1", "train.accumulate=4", "train.clip_grad_norm=1.0"), tmp_path / "r")
    assert summary["steps"] == 4  # 13 batches of 32 (397 rows), optimiser steps every 4 and at the end


def test_bad_training_inputs(data_dir, tmp_path):
    with pytest.raises(UsageError, match="--resume: no checkpoint"):
        fit(recipe(data_dir), tmp_path / "none", resume=True)
    with pytest.raises(UsageError, match="larger than the 397 training rows"):
        fit(recipe(data_dir, "train.batch_size=1000"), tmp_path / "big")
    with pytest.raises(UsageError, match="run: bigmodel prepare-data -r breast-cancer-mlp"):
        fit(resolve("breast-cancer-mlp", {"data.prepared": str(tmp_path / "missing")}), tmp_path / "x")
    with pytest.raises(UsageError, match="did you mean 'val_accuracy'"):
        fit(recipe(data_dir, "train.early_stopping.monitor=val_acuracy"), tmp_path / "mon")
    assert not (tmp_path / "none").exists() and not (tmp_path / "big").exists()


def test_resume_with_a_checkpoint_of_another_model(data_dir, tmp_path):
    fit(recipe(data_dir, "train.epochs=1"), tmp_path / "run")
    with pytest.raises(UsageError, match="does not fit the model"):
        fit(recipe(data_dir, "model.args={hidden: [16]}"), tmp_path / "run", resume=True)
