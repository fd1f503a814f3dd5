"""GANs and VAEs on the engine: both losses logged, every part checkpointed, D stepped d_steps times per G,
the EMA generator updated and judged, sample grids each epoch, exact resume, bf16, classification-only
options refused."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from bigmodel_cli.errors import Interrupted, UsageError
from bigmodel_cli.models import create_model
from bigmodel_cli.tasks.generation import Generation
from tests.unit.tasks.conftest import DENOISE, GAN, VAE, recipe, train


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_gan_trains_two_networks_with_an_ema_and_writes_grids_and_curves(gan_run):
    history = rows(gan_run)
    assert len(history) == 2
    first = history[0]
    assert {"train_d_loss", "train_g_loss", "val_fid", "lr_generator", "lr_discriminator"} <= set(first)
    assert all(np.isfinite(r["val_fid"]) and r["val_fid"] > 0 for r in history)
    assert (gan_run / "samples/epoch_001.png").is_file() and (gan_run / "samples/epoch_002.png").is_file()
    assert (gan_run / "curves.png").is_file()
    state = torch.load(gan_run / "checkpoints/last.pt", weights_only=True)
    assert set(state["networks"]) == set(state["optimizers"]) == {"generator", "discriminator"}
    assert state["averaged"]["generator"]["n_averaged"] > 0
    steps = state["loop"]["step"]
    g_steps = int(state["optimizers"]["generator"]["state"][0]["step"])
    d_steps = int(state["optimizers"]["discriminator"]["state"][0]["step"])
    assert (steps, d_steps, g_steps) == (8, 8, 4)  # D every step, G every second (d_steps 2)
    ema = state["averaged"]["generator"]
    raw = state["networks"]["generator"]
    assert not torch.equal(ema["module.project.0.weight"], raw["project.0.weight"])  # averaged, not a copy
    assert "module.project.1.running_mean" in ema  # BatchNorm statistics averaged too (use_buffers)


def test_sample_grid_comes_from_fixed_latents(gan_run):
    from PIL import Image

    grid = np.asarray(Image.open(gan_run / "samples/epoch_002.png"))
    assert grid.ndim == 2 and grid.shape[0] == grid.shape[1] >= 64  # 8 x 8 images, enlarged
    assert grid.std() > 0


def test_interrupt_then_resume_equals_uninterrupted_for_every_part(generation_data, tmp_path, monkeypatch):
    sets = [*GAN, "train.gan.r1_gamma=1.0", "train.gan.augment=[color, translation, cutout]"]  # random D inputs too
    train("digits-dcgan", generation_data, tmp_path / "straight", sets)
    calls = {"n": 0}
    original = Generation.training_step

    def step_then_term(self, parts, batch, step):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-epoch 2 (4 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, parts, batch, step)

    monkeypatch.setattr(Generation, "training_step", step_then_term)
    with pytest.raises(Interrupted):
        train("digits-dcgan", generation_data, tmp_path / "cut", sets)
    monkeypatch.setattr(Generation, "training_step", original)
    assert torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["loop"]["step"] == 6
    train("digits-dcgan", generation_data, tmp_path / "cut", sets, resume=True)
    a, b = (torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True) for run in ("straight", "cut"))
    for part in ("networks", "averaged", "optimizers"):
        for name, weights in a[part].items():
            if part == "optimizers":
                weights, other = weights["state"], b[part][name]["state"]
                assert all(torch.equal(weights[i]["exp_avg"], other[i]["exp_avg"]) for i in weights), name
                continue
            assert all(torch.equal(weights[k], b[part][name][k]) for k in weights), f"{part}.{name} differs"
    assert rows(tmp_path / "straight")[-1]["val_fid"] == rows(tmp_path / "cut")[-1]["val_fid"]


def test_a_last_batch_of_one_image_trains_the_batchnorm_generator(generation_data, tmp_path):
    # 128 train rows in batches of 127: the second step, a G step (d_steps 2), has one real image
    summary = train("digits-dcgan", generation_data, tmp_path / "run", [*GAN, "train.epochs=1", "train.batch_size=127"])
    last = summary["last_metrics"]
    assert np.isfinite(last["train_d_loss"]) and np.isfinite(last["train_g_loss"])
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert int(state["optimizers"]["generator"]["state"][0]["step"]) == 1


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_other_losses_spectral_norm_and_bf16_train_finite(generation_data, tmp_path, loss):
    sets = [*GAN, "train.epochs=1", f"train.gan.loss={loss}", "train.gan.spectral_norm=true",
            "train.precision=bf16-mixed"]
    summary = train("digits-dcgan", generation_data, tmp_path / "run", sets)
    last = summary["last_metrics"]
    assert np.isfinite(last["train_d_loss"]) and np.isfinite(last["train_g_loss"]) and np.isfinite(last["val_fid"])
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert any("parametrizations" in k for k in state["networks"]["discriminator"])  # spectral norm on D


def test_vae_logs_elbo_terms_and_improves(vae_run):
    history = rows(vae_run)
    assert {"train_loss", "train_reconstruction", "train_kl", "val_nelbo", "val_psnr", "val_fid"} <= set(history[0])
    assert history[-1]["val_nelbo"] < history[0]["val_nelbo"]
    assert history[-1]["train_loss"] == pytest.approx(history[-1]["train_reconstruction"] + history[-1]["train_kl"])
    assert (vae_run / "samples/epoch_002.png").is_file()


def test_generative_models_have_the_shapes_of_the_data():
    for shape in ([1, 8, 8], [1, 28, 28], [3, 32, 32]):
        gan = create_model("dcgan", num_classes=10, input_shape=shape, latent_dim=8, width=8, conditional=True,
                           blocks=1)
        label = torch.tensor([0, 9])
        images = gan.generator(torch.randn(2, 8), label)
        assert list(images.shape) == [2, *shape] and images.abs().max() <= 1
        assert gan.discriminator(images, label).shape == (2, 1)
        vae = create_model("conv_vae", num_classes=1, input_shape=shape, latent_dim=4, width=8)
        logits, mu, logvar = vae(torch.rand(2, *shape), None, torch.randn(2, 4))
        assert list(logits.shape) == [2, *shape] and mu.shape == logvar.shape == (2, 4)
        for name, args in (("dncnn", {"width": 8, "depth": 3}), ("unet_small", {"width": 8})):
            assert list(create_model(name, num_classes=1, input_shape=shape, **args)(torch.rand(2, *shape)).shape) \
                == [2, *shape]


def test_samples_are_scored_as_the_8_bit_images_the_export_gives():
    from bigmodel_cli.tasks.generation import sample_pixels, to_pixels

    gan = create_model("dcgan", num_classes=1, input_shape=[1, 8, 8], latent_dim=8, width=8).generator.eval()
    z = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    with torch.no_grad():
        pixels, raw = sample_pixels(gan, "gan", z, None), to_pixels(gan(torch.from_numpy(z)), "gan")
    assert torch.equal(pixels, raw.round()) and not torch.equal(pixels, raw)


def test_dcgan_d_width_sizes_the_discriminator_alone():
    gan = create_model("dcgan", num_classes=1, input_shape=[1, 8, 8], latent_dim=8, width=8, d_width=4)
    same = create_model("dcgan", num_classes=1, input_shape=[1, 8, 8], latent_dim=8, width=8)
    def count(net):
        return sum(p.numel() for p in net.parameters())

    assert count(gan.generator) == count(same.generator)
    assert count(gan.discriminator) < count(same.discriminator) / 3  # two conv layers: about (1/2)^2 of the weights
    assert gan.discriminator(gan.generator(torch.randn(2, 8))).shape == (2, 1)


@pytest.mark.parametrize(("sets", "message"), [
    (["train.class_weights=auto"], "train.class_weights is a classification option"),
    (["train.label_smoothing=0.1"], "train.label_smoothing is a classification option"),
    (["train.loss=cross_entropy"], "train.gan.loss"),
    (["data.corrupt.gaussian_noise=0.5"], "data.corrupt is for task restoration"),
    (["train.vae.beta=4"], "use train.gan"),
    (["model.name=cnn_small", "model.args={}"], "model 'cnn_small' is for task classification/regression"),
    (["train.early_stopping.monitor=val_accuracy"], "logged: train_d_loss, train_g_loss, val_fid"),
    (["model.args.width=0"], "model.args.width 0: must be 1 or more"),
    (["model.args.d_width=0"], "model.args.d_width 0: must be 1 or more"),
    (["model.args.latent_dim=0"], "model.args.latent_dim 0: must be 1 or more"),
    (["model.args.blocks=-1"], "model.args.blocks -1: must be 0 or more"),
])
def test_options_a_generative_run_cannot_use_are_refused(generation_data, tmp_path, sets, message):
    with pytest.raises(UsageError, match=message):
        train("digits-dcgan", generation_data, tmp_path / "run", [*GAN, *sets])
    assert not (tmp_path / "run").exists()


def test_vae_refuses_gan_options(generation_data, tmp_path):
    with pytest.raises(UsageError, match="use train.vae"):
        train("digits-vae", generation_data, tmp_path / "run", [*VAE, "train.gan.d_steps=2"])


@pytest.mark.parametrize(("sets", "message"), [
    (["model.args.levels=3"], r"model.args.levels 3: images 8x8 take 0 to 2"),
    (["model.name=dncnn", "model.args={width: 4, depth: 1}"], "dncnn needs at least 2 layers"),
    (["train.huber_delta=0.05"], "train.huber_delta is for train.loss huber"),
])
def test_restoration_models_that_cannot_take_the_images_are_refused(restoration_data, tmp_path, sets, message):
    with pytest.raises(UsageError, match=message):
        train("digits-denoise", restoration_data, tmp_path / "run", [*DENOISE, *sets])
    assert not (tmp_path / "run").exists()


def test_restoration_huber_loss_turns_linear_at_huber_delta():
    from bigmodel_cli.tasks.restoration import loss_function

    restored, clean = torch.tensor([0.5, 0.0]), torch.zeros(2)
    cfg = recipe("digits-denoise", "data", ["train.loss=huber", "train.huber_delta=0.1"]).train
    assert float(loss_function(cfg)(restored, clean)) == pytest.approx(0.1 * (0.5 - 0.05) / 2)  # linear part
    assert float(loss_function(recipe("digits-denoise", "data", ["train.loss=mae"]).train)(restored, clean)) == 0.25


def test_a_restoration_component_that_fails_on_the_images_is_exit_2(restoration_data, tmp_path, monkeypatch):
    (tmp_path / "too_big.py").write_text("import torch\n\ndef build(num_classes, input_shape):\n"
                                         "    return torch.nn.Conv2d(1, 1, 9)\n")  # a 9x9 kernel on 8x8 images
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match=r"model 'too_big:build' fails on images \[N, 1, 8, 8\]: "):
        train("digits-denoise", restoration_data, tmp_path / "run", [*DENOISE, "model.name=null", "model.args={}",
                                                                      "model.component=too_big:build"])
    assert not (tmp_path / "run").exists()


def test_recipe_task_takes_generation_and_restoration():
    assert recipe("digits-dcgan", "data", []).task == "generation"
    assert recipe("digits-denoise", "data", []).task == "restoration"
