"""A second kind of job on the same loop: a toy adversarial task with two networks, two optimizers stepped in
a chosen order (D every step, G every second step), an EMA copy and its own metrics. Not shipped: it shows
that the task interface admits what GANs, distillation and VAEs need, and that every guarantee of the loop
(checkpoints of every part, exact resume after an interrupt) holds for it."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel_cli import tasks
from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.data.transform import normalizer
from bigmodel_cli.errors import Interrupted
from bigmodel_cli.tasks.base import Parts
from bigmodel_cli.training.loop import fit
from bigmodel_cli.training.optim import create_schedule

Z = 8
D_STEPS = 2


class ToyAdversarial:
    """G maps noise to table rows (in normalised units), D tells real rows from G's; G's EMA is what is judged."""

    name = "classification"  # the data is a labelled table; the labels are not used
    inference_network = "generator"

    def __init__(self, term_at: int = -1):
        self.term_at, self.calls = term_at, 0

    def check(self, recipe, data):
        if data["kind"] != "tabular":
            raise AssertionError("toy task: tables only")

    def metrics(self, recipe, data):
        return ["val_gap", "val_d_accuracy"]

    def terms(self, recipe):
        return ["d_loss", "g_loss"]

    def build(self, ctx):
        features = ctx.data["input_shape"][0]
        generator = nn.Sequential(nn.Linear(Z, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, features))
        discriminator = nn.Sequential(nn.Linear(features, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        ema = torch.optim.swa_utils.AveragedModel(
            generator, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
        return Parts(networks={"generator": generator, "discriminator": discriminator}, inputs=normalizer(ctx.data),
                     losses={"bce": nn.BCEWithLogitsLoss()}, averaged={"generator": ema})

    def optimizers(self, ctx, parts):
        out = {}
        for name, lr in (("generator", 5e-3), ("discriminator", 1e-3)):
            opt = torch.optim.Adam(parts.networks[name].parameters(), lr=lr, betas=(0.5, 0.999))
            out[name] = (opt, create_schedule(opt, ctx.recipe.train.scheduler, ctx.total_steps, ctx.steps_per_epoch))
        return out

    def training_step(self, parts, batch, step):
        self.calls += 1
        if self.calls == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        real = parts.inputs(batch.x)
        z = torch.randn(len(real), Z)
        bce, g, d = parts.losses["bce"], parts.modules["generator"], parts.modules["discriminator"]
        fake = g(z)
        d_loss = bce(d(real), torch.ones(len(real), 1)) + bce(d(fake.detach()), torch.zeros(len(real), 1))
        step.backward(d_loss, "discriminator")
        step.step_optimizer("discriminator")
        step.log(d_loss=d_loss)
        if step.step % D_STEPS == D_STEPS - 1:  # G after every D_STEPS discriminator steps
            with step.frozen("discriminator"):  # D takes no gradient from G's loss
                # non-saturating loss plus matching the batch mean (Salimans et al.'s feature matching, on the input)
                g_loss = bce(d(fake), torch.ones(len(real), 1)) + (fake.mean(0) - real.mean(0)).pow(2).sum()
                step.backward(g_loss, "generator")
            step.step_optimizer("generator")
            step.log(g_loss=g_loss)
            if step.boundary:
                step.update_average("generator")

    @torch.no_grad()
    def validate(self, parts, val, ctx):
        real = parts.inputs(torch.from_numpy(val.take(np.arange(len(val)))[0]))
        gen = torch.Generator().manual_seed(0)
        ema = parts.averaged["generator"].eval()
        fake = ema(torch.randn(len(real), Z, generator=gen))
        d = parts.networks["discriminator"].eval()
        accuracy = ((d(real) > 0).float().mean() + (d(fake) < 0).float().mean()) / 2
        d.train()
        return {"val_gap": float((fake.mean(0) - real.mean(0)).norm()), "val_d_accuracy": float(accuracy)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    prepare(resolve("breast-cancer-mlp", {"data.prepared": str(root / "data")}))
    return root / "data"


def toy_recipe(data_dir, epochs=4):
    return resolve("breast-cancer-mlp", {"data.prepared": str(data_dir)},
                   [f"train.epochs={epochs}", "train.early_stopping.monitor=val_gap", "train.early_stopping.mode=min",
                    "train.batch_size=32"])


@pytest.fixture
def toy(monkeypatch):
    made = {}

    def use(term_at=-1):
        made["task"] = ToyAdversarial(term_at)
        monkeypatch.setitem(tasks._TASKS, "classification", lambda: made["task"])
        return made["task"]

    return use


def test_two_networks_two_optimizers_and_an_ema_train_and_are_checkpointed(data_dir, tmp_path, toy):
    toy()
    summary = fit(toy_recipe(data_dir), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert {"train_d_loss", "train_g_loss", "val_gap", "lr_generator", "lr_discriminator"} <= set(rows[0])
    assert rows[-1]["val_gap"] < 0.75 * rows[0]["val_gap"]  # the generator's mean moves onto the data's
    assert summary["monitor"] == "val_gap" and summary["best_value"] == min(r["val_gap"] for r in rows)
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert set(state["networks"]) == set(state["optimizers"]) == {"generator", "discriminator"}
    assert set(state["averaged"]) == {"generator"} and state["averaged"]["generator"]["n_averaged"] > 0
    steps = state["loop"]["step"]
    g_steps = state["optimizers"]["generator"]["state"][0]["step"]
    assert int(g_steps) == steps // D_STEPS  # G stepped once for every D_STEPS discriminator steps


def test_interrupt_then_resume_equals_uninterrupted_for_every_part(data_dir, tmp_path, toy):
    toy()
    fit(toy_recipe(data_dir, epochs=3), tmp_path / "straight")
    toy(term_at=17)  # mid-epoch 2 (13 batches per epoch)
    with pytest.raises(Interrupted):
        fit(toy_recipe(data_dir, epochs=3), tmp_path / "cut")
    toy()
    fit(toy_recipe(data_dir, epochs=3), tmp_path / "cut", resume=True)
    a, b = (torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True) for run in ("straight", "cut"))
    for part in ("networks", "averaged"):
        for name, weights in a[part].items():
            assert all(torch.equal(weights[k], b[part][name][k]) for k in weights), f"{part}.{name} differs"
    assert a["loop"]["history"][-1]["val_gap"] == b["loop"]["history"][-1]["val_gap"]
