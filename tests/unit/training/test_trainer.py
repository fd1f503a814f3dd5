import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.errors import Interrupted, JobFailed, UsageError
from bigmodel_cli.training.loop import fit

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
    assert set(state["networks"]) == set(state["optimizers"]) == set(state["schedules"]) == {"model"}
    for key in ("loop", "rng", "meta"):
        assert key in state
    assert state["loop"]["epoch"] == 3
    assert torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["meta"]["model"] == "mlp"
    # the monitor is val_loss and it fell every epoch: the best epoch is the last
    assert [r["val_loss"] for r in rows] == sorted((r["val_loss"] for r in rows), reverse=True)
    assert summary["best_epoch"] == 3 and summary["epochs_run"] == 3


def _weights(path):
    return torch.load(path, weights_only=True)["networks"]["model"]


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
    def history(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in rows]

    assert history("straight") == history("cut")  # train_loss of the interrupted epoch included


def test_a_signal_after_the_steps_sum_stops_at_the_next_step(data_dir, tmp_path, monkeypatch):
    """Every rank stops on the flag summed over ranks, not on its own: a SIGTERM that lands after step 5's sum
    waits for step 6's. (Read after the sum, it once sent that rank into the save while the others trained on,
    and both hung until the launcher killed them.)"""
    import os
    import signal

    from bigmodel_cli.training.distributed import Dist

    real, sums = Dist.sum, []

    def sum_then_signal(self, *values):
        out = real(self, *values)
        sums.append(float(out[-1]))  # the stop flag, summed
        if len(sums) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, after the sum, before the decision
        return out

    monkeypatch.setattr(Dist, "sum", sum_then_signal)
    with pytest.raises(Interrupted, match="SIGTERM: saved .* at step 6;"):
        fit(recipe(data_dir), tmp_path / "run")
    assert sums == [0.0] * 5 + [1.0]
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["loop"]["step"] == 6


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


@pytest.mark.parametrize("optimizer,scheduler", [("sgd", "step"), ("adam", "exponential"), ("adamw", "linear"),
                                                 ("adagrad", "cosine"), ("rmsprop", "onecycle"), ("sgd", "plateau")])
def test_every_optimizer_and_scheduler_trains(data_dir, tmp_path, optimizer, scheduler):
    lr = {"sgd": 0.05, "adagrad": 0.05}.get(optimizer, 0.003)
    r = recipe(data_dir, f"train.optimizer={{name: {optimizer}, lr: {lr}}}",
               f"train.scheduler={{name: {scheduler}, warmup_steps: 3, step_size: 1, gamma: 0.8}}")
    summary = fit(r, tmp_path / "run")
    assert summary["last_metrics"]["val_accuracy"] > 0.85
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    if scheduler in ("step", "exponential", "linear", "cosine", "onecycle"):
        assert lrs[-1] < lrs[0]


def test_curves_tensorboard_and_json_summary(data_dir, tmp_path):
    summary = fit(recipe(data_dir, "train.tensorboard=true", "train.epochs=2"), tmp_path / "run")
    assert (tmp_path / "run/curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))
    for key in ("best_epoch", "best_value", "wall_time_s", "samples_per_s", "checkpoints", "effective_batch_size"):
        assert summary[key] is not None


def test_compile_that_fails_at_the_first_forward_falls_back_with_a_warning(data_dir, tmp_path, monkeypatch, capsys):
    """The real failure: torch.compile returns at once, inductor fails when the first batch runs (no compiler)."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    summary = fit(recipe(data_dir, "train.compile=true", "train.epochs=1"), tmp_path / "run")
    err = capsys.readouterr().err
    assert "torch.compile failed at the first forward" in err and "C++ compiler" in err
    assert summary["epochs_run"] == 1 and summary["last_metrics"]["val_accuracy"] > 0.6


def test_freeze_backbone_trains_only_the_head(data_dir, tmp_path):
    fit(recipe(data_dir, "train.epochs=1"), tmp_path / "start")
    r = recipe(data_dir, "train.epochs=1", f"model.weights={tmp_path / 'start/checkpoints/last.pt'}",
               "model.freeze=backbone")
    fit(r, tmp_path / "tuned")
    before, after = _weights(tmp_path / "start/checkpoints/last.pt"), _weights(tmp_path / "tuned/checkpoints/last.pt")
    last = max(int(k.split(".")[1]) for k in before)  # the last Linear of the Sequential: the head
    head = [f"net.{last}.weight", f"net.{last}.bias"]
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    assert not all(torch.equal(before[k], after[k]) for k in head)
    with pytest.raises(UsageError, match="matches no parameter"):
        fit(recipe(data_dir, "model.freeze=[bodyy]"), tmp_path / "bad")


def test_pretrained_weights_state_dict_and_safetensors_with_a_new_head(data_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    fit(recipe(data_dir, "train.epochs=3"), tmp_path / "start")
    weights = _weights(tmp_path / "start/checkpoints/last.pt")
    bare = {k.removeprefix("net."): v for k, v in weights.items()}
    last = max(int(k.split(".")[0]) for k in bare)
    bare[f"{last}.weight"], bare[f"{last}.bias"] = torch.zeros(7, 32), torch.zeros(7)  # a 7-class head: skipped
    save_file(bare, str(tmp_path / "w.safetensors"))
    torch.save(bare, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        r = recipe(data_dir, "train.epochs=1", "train.optimizer.lr=0.00001", f"model.weights={tmp_path / name}")
        summary = fit(r, tmp_path / f"from-{name}")
        assert f"skipped {last}.bias, {last}.weight (shape)" in capsys.readouterr().err
        loaded = _weights(tmp_path / f"from-{name}/checkpoints/last.pt")
        first = min(weights, key=lambda k: int(k.split(".")[1]))
        assert torch.allclose(loaded[first], weights[first], atol=1e-3)
        assert summary["epochs_run"] == 1
    with pytest.raises(UsageError, match="model.weights: file not found"):
        fit(recipe(data_dir, f"model.weights={tmp_path / 'nope.pt'}"), tmp_path / "x")


def test_bf16_true_and_early_stopping_on_train_loss(data_dir, tmp_path):
    summary = fit(recipe(data_dir, "train.precision=bf16-true", "train.epochs=2",
                         "train.early_stopping.monitor=train_loss"), tmp_path / "run")
    assert summary["monitor"] == "train_loss" and summary["last_metrics"]["val_accuracy"] > 0.8
    weights = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["networks"]["model"]
    assert all(w.dtype == torch.bfloat16 for w in weights.values())


def test_class_weights_and_label_smoothing_for_multiclass(tmp_path):
    root = tmp_path / "wine"
    r = resolve("breast-cancer-mlp", {"data.prepared": str(root)},
                ["data.source=sklearn:wine", "train.epochs=20", "train.class_weights=auto", "train.label_smoothing=0.1",
                 "train.early_stopping.patience=null"])
    prepare(r)
    summary = fit(r, tmp_path / "run")
    assert summary["last_metrics"]["val_accuracy"] > 0.8
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["meta"]["loss"] == "cross_entropy"


def test_cross_validation_writes_every_fold_and_the_summary(data_dir, tmp_path):
    from bigmodel_cli.training.cross_validation import cross_validate

    report = cross_validate(recipe(data_dir, "train.epochs=2"), tmp_path / "cv", folds=3)
    assert [f["fold"] for f in report["per_fold"]] == [1, 2, 3]
    sizes = json.loads((data_dir / "manifest.json").read_text())["splits"]
    assert sum(f["val_rows"] for f in report["per_fold"]) == sizes["train"] + sizes["val"]  # each row validated once
    accuracy = report["metrics"]["val_accuracy"]
    folds = [f["metrics"]["val_accuracy"] for f in report["per_fold"]]
    assert accuracy["mean"] == pytest.approx(sum(folds) / 3) and accuracy["std"] == pytest.approx(np.std(folds, ddof=1))
    assert min(folds) > 0.75  # every fold learned in 2 epochs (the majority class is 0.63 of the rows)
    assert json.loads((tmp_path / "cv/cv.json").read_text()) == report
    assert all((tmp_path / f"cv/fold_{k}/checkpoints/best.pt").is_file() for k in (1, 2, 3))
    with pytest.raises(UsageError, match="at least 2 folds"):
        cross_validate(recipe(data_dir), tmp_path / "cv1", folds=1)


def test_augmentation_is_applied_to_training_batches_and_resume_stays_exact(tmp_path):
    data = tmp_path / "digits"
    base = ["train.epochs=2", "train.batch_size=128", "train.early_stopping.patience=null",
            "model.args={width: 8, dropout: 0.0}"]
    r = resolve("digits-cnn", {"data.prepared": str(data)},
                [*base, "data.augment={crop_padding: 1, rotation: 10}"])
    manifest = prepare(r)
    assert manifest["preprocessing"]["augment"]
    plain = resolve("digits-cnn", {"data.prepared": str(tmp_path / "plain")}, base)
    prepare(plain)
    fit(plain, tmp_path / "no-aug")
    fit(r, tmp_path / "aug")
    no_aug = [json.loads(x)["train_loss"] for x in (tmp_path / "no-aug/metrics.jsonl").read_text().splitlines()]
    aug = [json.loads(x)["train_loss"] for x in (tmp_path / "aug/metrics.jsonl").read_text().splitlines()]
    assert no_aug != aug  # the same data and seed, different batches: augmentation is on
    x_before = np.load(data / "train/x.npy")
    fit(r, tmp_path / "aug-again")
    assert np.array_equal(np.load(data / "train/x.npy"), x_before)  # never baked into the stored arrays
    a = _weights(tmp_path / "aug/checkpoints/last.pt")
    b = _weights(tmp_path / "aug-again/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same augmentations every time
