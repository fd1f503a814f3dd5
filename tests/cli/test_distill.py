"""`bigmodel train --teacher RUN`: knowledge distillation from a trained run, for tables, images and text, with
DDP, exact resume and a logits cache; a teacher that does not fit the student's data is refused (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import signal

import numpy as np
import pytest
import torch

from bigmodel_cli import tasks
from bigmodel_cli.cli.app import main
from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.errors import Interrupted
from bigmodel_cli.export.metadata import fingerprint
from bigmodel_cli.run import load_network, load_run
from bigmodel_cli.tasks.supervised import Supervised
from bigmodel_cli.training.distill import DistillLoss
from bigmodel_cli.training.loop import fit
from tests.conftest import history, run_cli, tree

STUDENT = ["model.args.hidden=[3]", "model.args.dropout=0", "train.epochs=4", "train.early_stopping.patience=null"]


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """wine prepared once, a teacher MLP trained on it, and a breast-cancer run (other classes)."""
    root = tmp_path_factory.mktemp("distill")
    teacher = resolve("wine-mlp", {"data.prepared": str(root / "data/wine")}, ["train.epochs=15"])
    prepare(teacher)
    fit(teacher, root / "teacher")
    other = resolve("breast-cancer-mlp", {"data.prepared": str(root / "data/bc")}, ["train.epochs=1"])
    prepare(other)
    fit(other, root / "breast-cancer")
    return root


def student(root, *sets, teacher=True):
    flags = {"data.prepared": str(root / "data/wine"), "train.distill.teacher": str(root / "teacher") if teacher
             else None}
    return resolve("wine-mlp", flags, [*STUDENT, *sets])


def weights(run):
    return torch.load(run / "checkpoints/last.pt", weights_only=True)["networks"]["model"]


def test_distillation_loss_is_t_squared_kl_of_teacher_to_student():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    p_t, p_s = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)
    manual = 4 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(DistillLoss(2.0)(s, t), manual)
    assert float(DistillLoss(2.0)(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_table_student_mixes_both_terms_and_records_its_teacher(wine, tmp_path):
    fit(student(wine, "train.distill.weight=0.3"), tmp_path / "s")
    for row in history(tmp_path / "s"):
        mixed = 0.7 * row["train_task_loss"] + 0.3 * row["train_distill_loss"]
        assert row["train_loss"] == pytest.approx(mixed, rel=1e-6)
    record = json.loads((tmp_path / "s/preprocessing.json").read_text())["teacher"]
    assert record["run"] == str(wine / "teacher") and record["weight"] == 0.3
    assert record["sha256"] == fingerprint(wine / "teacher/checkpoints/best.pt")
    net, norm, _ = load_network(load_run(wine / "teacher"))
    x, y = manifests.load_split(wine / "data/wine", "val")
    with torch.no_grad():
        accuracy = float((net(norm(torch.from_numpy(np.array(x)))).argmax(1).numpy() == y).mean())
    assert record["val_accuracy"] == pytest.approx(accuracy) and record["val_rows"] == len(y)
    assert load_run(tmp_path / "s").recipe.train.distill.teacher == str(wine / "teacher")  # absolute in recipe.yaml


def test_student_taught_by_the_teacher_alone_predicts_what_the_teacher_predicts(wine, tmp_path):
    """weight 1: the labels are not used at all; a broken distillation term would leave the student at chance."""
    fit(student(wine, "train.distill.weight=1", "train.distill.temperature=2", "train.epochs=10",
                "train.optimizer.lr=0.01", "model.args.hidden=[8]"), tmp_path / "kd")
    x, _ = manifests.load_split(wine / "data/wine", "val")
    preds = []
    for run in (wine / "teacher", tmp_path / "kd"):
        net, norm, _ = load_network(load_run(run))
        with torch.no_grad():
            preds.append(net(norm(torch.from_numpy(np.array(x)))).argmax(1).numpy())
    assert (preds[0] == preds[1]).mean() >= 0.8  # chance: about 0.4


def test_cached_teacher_logits_train_the_same_student(wine, tmp_path):
    fit(student(wine), tmp_path / "live")
    fit(student(wine, "train.distill.cache_logits=true"), tmp_path / "cached")
    files = list((wine / "data/wine/teacher_logits").glob("*.npy"))
    assert len(files) == 1 and np.load(files[0]).shape[1] == 3
    live, cached = weights(tmp_path / "live"), weights(tmp_path / "cached")
    for key in live:  # the same logits, computed in batches of another size: equal to float rounding
        torch.testing.assert_close(cached[key], live[key], atol=1e-5, rtol=1e-4)
    rows = [r["train_distill_loss"] for r in history(tmp_path / "cached")]
    assert rows == pytest.approx([r["train_distill_loss"] for r in history(tmp_path / "live")], rel=1e-4)


class CutAt(Supervised):
    """The real task, with a SIGTERM at its Nth training step (as a user's Ctrl-C or a scheduler would)."""

    def __init__(self, at: int):
        super().__init__("classification")
        self.at, self.calls = at, 0

    def training_step(self, parts, batch, step):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        super().training_step(parts, batch, step)


def test_interrupted_distillation_resumes_bit_for_bit(wine, tmp_path, monkeypatch):
    sets = ["train.epochs=3", "train.batch_size=16"]
    fit(student(wine, *sets), tmp_path / "straight")
    monkeypatch.setitem(tasks._TASKS, "classification", lambda: CutAt(10))  # mid-epoch 2 (7 batches an epoch)
    with pytest.raises(Interrupted):
        fit(student(wine, *sets), tmp_path / "cut")
    monkeypatch.setitem(tasks._TASKS, "classification", lambda: Supervised("classification"))
    fit(student(wine, *sets), tmp_path / "cut", resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert history(tmp_path / "cut")[-1]["train_distill_loss"] == history(tmp_path / "straight")[-1][
        "train_distill_loss"]


def test_image_student_distils_from_a_cnn_run(digits_run, tmp_path):
    data = digits_run.parent / "data"
    recipe = resolve("digits-cnn", {"data.prepared": str(data), "train.distill.teacher": str(digits_run)},
                     ["train.epochs=1", "model.args.width=4", "train.early_stopping.patience=null"])
    summary = fit(recipe, tmp_path / "small")
    row = history(tmp_path / "small")[0]
    assert row["train_distill_loss"] > 0 and row["train_task_loss"] > 0 and summary["epochs_run"] == 1
    assert json.loads((tmp_path / "small/preprocessing.json").read_text())["teacher"]["val_accuracy"] > 0.5


def write_texts(path, rows=240, seed=0):
    rng = np.random.default_rng(seed)
    good, bad, filler = ["great", "superb", "fresh"], ["dull", "awful", "stale"], ["the", "film", "plot", "cast"]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for _ in range(rows):
            positive = bool(rng.random() < 0.5)
            words = list(rng.choice(filler, 5)) + [str(rng.choice(good if positive else bad))]
            rng.shuffle(words)
            out.writerow([" ".join(words), "positive" if positive else "negative"])
    return path


def test_text_student_distils_from_a_transformer_run(tmp_path):
    source = write_texts(tmp_path / "reviews.csv")
    base = {"data.source": str(source), "data.prepared": str(tmp_path / "data")}
    small = ["data.text.max_length=8", "model.args.num_layers=1", "model.args.num_heads=2",
             "train.early_stopping.patience=null", "train.batch_size=32"]
    teacher = resolve("text-transformer", base, [*small, "model.args.d_model=16", "model.args.dim_feedforward=32",
                                                 "train.epochs=3"])
    prepare(teacher)
    fit(teacher, tmp_path / "teacher")
    recipe = resolve("text-transformer", {**base, "train.distill.teacher": str(tmp_path / "teacher")},
                     [*small, "model.args.d_model=8", "model.args.dim_feedforward=8", "train.epochs=1"])
    fit(recipe, tmp_path / "student")
    assert history(tmp_path / "student")[0]["train_distill_loss"] > 0


@pytest.mark.slow
def test_two_processes_distil_like_one_process_with_the_global_batch(wine):
    """DDP wraps the student only; each process runs its own frozen teacher on its share of the batch."""
    sets = [a for s in [*STUDENT, "train.epochs=2"] for a in ("--set", s)]
    two = run_cli("train", "-r", "wine-mlp", "--devices", "2", "--teacher", "teacher", "--run-dir", "runs/two",
                  "--set", f"data.prepared={wine / 'data/wine'}", "--set", "train.batch_size=8", *sets, "--json",
                  cwd=wine)
    assert two.code == 0, two.stderr
    assert two.json()["processes"] == 2
    fit(student(wine, "train.epochs=2", "train.batch_size=16"), wine / "runs/one")
    for a, b in zip(history(wine / "runs/one"), history(wine / "runs/two"), strict=True):
        assert b["train_distill_loss"] == pytest.approx(a["train_distill_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


def _fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_teacher_that_does_not_fit_is_refused_before_anything_is_written(wine, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(wine)
    common = ["train", "-r", "wine-mlp", "--set", f"data.prepared={wine / 'data/wine'}", "--run-dir", "runs/s"]
    message = _fails(capsys, *common, "--teacher", "nowhere")
    assert f"train.distill.teacher: {tmp_path / 'nowhere'}: no such run directory" in message
    message = _fails(capsys, *common, "--teacher", str(wine / "breast-cancer"))
    assert "has classes [malignant, benign] (2), the student's data has [class_0, class_1, class_2] (3)" in message
    prepare(resolve("diabetes-regression", {"data.prepared": str(tmp_path / "diabetes")}))
    capsys.readouterr()
    message = _fails(capsys, "train", "-r", "diabetes-regression", "--set", f"data.prepared={tmp_path / 'diabetes'}",
                     "--run-dir", "runs/r", "--teacher", str(wine / "teacher"))
    assert "distillation needs a classification task, this recipe's task is regression" in message
    assert not (tmp_path / "runs").exists() and tree(wine) == before
