"""Tiny generative runs shared by the task, eval and export tests: digits, a few hundred rows, tiny networks."""

from __future__ import annotations

from pathlib import Path

import pytest

GAN = ["model.args={latent_dim: 8, width: 8, conditional: true}", "train.epochs=2", "train.batch_size=32",
       "train.gan.d_steps=2", "train.gan.ema_decay=0.9", "eval.generative.val_samples=96"]
VAE = ["model.args={latent_dim: 4, width: 8}", "train.epochs=2", "train.batch_size=32",
       "eval.generative.val_samples=96"]
DENOISE = ["model.args={width: 8}", "train.epochs=2", "train.batch_size=32", "data.corrupt.clip=true"]  # 8-bit
ROWS = {"train_rows": 128, "val_rows": 96}


def recipe(name: str, data: Path, sets: list[str]):
    from bigmodel_cli.config.recipe import resolve

    return resolve(name, {"data.prepared": str(data)}, sets)


def train(name: str, data: Path, run: Path, sets: list[str], resume: bool = False, rows=ROWS) -> dict:
    from bigmodel_cli.training.loop import fit, load_data

    r = recipe(name, data, sets)
    return fit(r, run, resume=resume, data=load_data(r).subset(**rows) if rows else None)


@pytest.fixture(scope="session")
def generation_data(tmp_path_factory) -> Path:
    from bigmodel_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("gen-data") / "data"
    prepare(recipe("digits-dcgan", root, []))
    return root


@pytest.fixture(scope="session")
def restoration_data(tmp_path_factory) -> Path:
    from bigmodel_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("restore-data") / "data"
    prepare(recipe("digits-denoise", root, []))
    return root


@pytest.fixture(scope="session")
def gan_run(generation_data, tmp_path_factory) -> Path:
    """A conditional GAN trained 2 epochs (4 steps each, D twice per G) on 128 digits."""
    run = tmp_path_factory.mktemp("gan") / "run"
    train("digits-dcgan", generation_data, run, GAN)
    return run


@pytest.fixture(scope="session")
def vae_run(generation_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vae") / "run"
    train("digits-vae", generation_data, run, VAE)
    return run


@pytest.fixture(scope="session")
def denoise_run(restoration_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("denoise") / "run"
    train("digits-denoise", restoration_data, run, DENOISE)
    return run
