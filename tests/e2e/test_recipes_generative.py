"""The generative recipes end to end with the real commands, one pipeline per family (GAN, VAE, restoration),
plus generators trained by 2 DDP and FSDP processes and a GAN killed with SIGKILL mid-epoch and resumed bit-exactly.

    pytest tests/e2e/test_recipes_generative.py --durations=0

Tiny networks and one or two epochs on scikit-learn's digits; everything else is the recipe file's. The
commands run with one intra-op thread (OMP_NUM_THREADS=1): tiny networks gain nothing from two, and on cores
shared with other jobs two spinning threads per process make each step many times slower.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import history

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY_GAN = ["--set", "model.args={latent_dim: 8, width: 8, conditional: true}", "--set", "train.epochs=2",
            "--set", "eval.generative.val_samples=96", "--set", "train.early_stopping.patience=null"]


def step_of(checkpoint):
    try:
        return torch.load(checkpoint, weights_only=True)["loop"]["step"]
    except (OSError, RuntimeError, EOFError):
        return None


def kill_after_steps(args, cwd, steps) -> bool:
    """Start training and SIGKILL it once its last.pt holds `steps` optimiser steps; True if really killed."""
    checkpoint = cwd / "cut/checkpoints/last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args], cwd=cwd,
                            env={**os.environ, "CI": "1", **ONE_THREAD},
                            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if (step_of(checkpoint) or 0) >= steps:
            proc.send_signal(signal.SIGKILL)  # wherever it is: mid-step, mid-write, mid-validation
            break
        time.sleep(0.02)
    if proc.poll() is None and time.time() >= deadline:
        proc.kill()
    return proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture
def cli(tmp_path):
    from tests.conftest import run_in_process

    return lambda *args, **kw: run_in_process(*args, cwd=kw.pop("cwd", tmp_path), env=ONE_THREAD, timeout=900, **kw)


def ok(result, step: str) -> dict:
    assert result.code == 0, f"{step} exited {result.code}: {result.stderr[-2000:]}"
    return result.json()


@pytest.mark.slow
def test_digits_dcgan_pipeline(cli, tmp_path, digits_run):
    ok(cli("prepare-data", "-r", "digits-dcgan", "--json"), "prepare-data")
    trained = ok(cli("train", "-r", "digits-dcgan", *TINY_GAN, "--json"), "train")
    run = tmp_path / "runs/digits-dcgan"
    assert trained["monitor"] == "val_fid" and trained["epochs_run"] == 2
    assert (run / "samples/epoch_002.png").is_file() and (run / "curves.png").is_file()
    gate = cli("eval", str(run), "--features", str(digits_run), "--samples", "100", "--fail-over", "fid=0.0001",
               "--json")
    assert gate.code == 3 and "gate failed: fid" in gate.stderr  # the report is written and printed all the same
    evaluated = gate.json()
    assert evaluated["metrics"]["fid"] > evaluated["floor"]["fid"] > 0 and len(evaluated["class_shares"]) == 10
    exported = ok(cli("export", str(run), "--json"), "export")
    assert exported["inputs"]["label"]["dtype"] == "int64" and exported["outputs"]["image"]["dtype"] == "uint8"
    for out in ("a.png", "b.png"):
        ok(cli("generate", str(run / "model.onnx"), "--n", "16", "--seed", "5", "--label", "7", "--out", out,
               "--json"), "generate")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # same seed, same bytes
    missing = cli("generate", str(run / "model.onnx"), "--label", "12", "--out", "c.png")
    assert missing.code == 2 and "out of range" in missing.stderr and not (tmp_path / "c.png").exists()
    bad = cli("train", "-r", "digits-dcgan", "--set", "train.class_weights=auto", "--run-dir", "runs/bad")
    assert bad.code == 2 and "classification option" in bad.stderr and not (tmp_path / "runs/bad").exists()


@pytest.mark.slow
def test_digits_vae_pipeline(cli, tmp_path):
    ok(cli("prepare-data", "-r", "digits-vae", "--json"), "prepare-data")
    ok(cli("train", "-r", "digits-vae", "--set", "model.args={latent_dim: 4, width: 8}", "--set", "train.epochs=2",
           "--json"), "train")
    run = tmp_path / "runs/digits-vae"
    evaluated = ok(cli("eval", str(run), "--fail-over", "nelbo=1000", "--json"), "eval")  # 2 epochs: not the
    assert evaluated["gates"] == [{"metric": "nelbo", "kind": "fail_over", "limit": 1000.0,  # recipe's gate (40)
                                   "value": evaluated["metrics"]["nelbo"], "passed": True}]
    assert {"nelbo", "bits_per_dim", "mse", "psnr"} <= set(evaluated["metrics"])
    assert (run / "eval/test_interpolation.png").is_file()
    exported = ok(cli("export", str(run), "--json"), "export")
    assert exported["inputs"] == {"z": {"dtype": "float32", "shape": [-1, 4]}}
    assert exported["network"]["exported"] == "decoder"
    ok(cli("generate", str(run), "--n", "8", "--out", "walk", "--json"), "generate")
    assert len(list((tmp_path / "walk").glob("*.png"))) == 8


@pytest.mark.slow
def test_digits_denoise_pipeline(cli, tmp_path):
    ok(cli("prepare-data", "-r", "digits-denoise", "--json"), "prepare-data")
    ok(cli("train", "-r", "digits-denoise", "--set", "model.args={width: 16}", "--set", "train.epochs=3",
           "--json"), "train")
    run = tmp_path / "runs/digits-denoise"
    evaluated = ok(cli("eval", str(run), "--fail-under", "psnr_gain=0.5", "--json"), "eval")
    assert evaluated["metrics"]["psnr"] > evaluated["metrics"]["psnr_corrupted"] + 0.5
    assert evaluated["metrics"]["psnr_corrupted"] == pytest.approx(6.02, abs=0.3)  # unclipped sigma 0.5 on [0, 1]
    exported = ok(cli("export", str(run), "--json"), "export")
    assert exported["inputs"] == {"input": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}  # unclipped noisy pixels
    assert exported["verification"]["identical_pixels"] >= 0.999
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    clean = np.load(tmp_path / "data/digits-denoise/test/x.npy")[:32].astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, 127.5, clean.shape).astype(np.float32)
    restored = session.run(["image"], {"input": noisy})[0]
    assert restored.dtype == np.uint8 and np.mean((restored - clean) ** 2) < np.mean((noisy - clean) ** 2) / 2


@pytest.mark.slow
def test_generators_train_on_two_processes_ddp_and_fsdp(cli, tmp_path):
    ok(cli("prepare-data", "-r", "digits-dcgan", "--json"), "prepare-data")
    args = ["train", "-r", "digits-dcgan", "--devices", "2", *TINY_GAN, "--set", "train.gan.r1_gamma=1"]
    trained = ok(cli(*args, "--run-dir", "runs/ddp", "--json"), "train ddp")
    assert trained["processes"] == 2 and trained["effective_batch_size"] == 128
    state = torch.load(tmp_path / "runs/ddp/checkpoints/last.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and state["averaged"]["generator"]["n_averaged"] > 0
    assert np.isfinite(trained["last_metrics"]["val_fid"])
    # FSDP2 shards G and D (the EMA gathers G's shards) and trains them as DDP does: D's every parameter is
    # trained again after the G step (it once stayed frozen), the sample grid is drawn on every rank
    ok(cli(*args, "--run-dir", "runs/fsdp", "--set", "train.strategy=fsdp", "--json"), "train fsdp")
    fsdp = tmp_path / "runs/fsdp"
    assert (fsdp / "checkpoints/last").is_dir() and (fsdp / "samples/epoch_002.png").is_file()
    for a, b in zip(history(tmp_path / "runs/ddp"), history(tmp_path / "runs/fsdp"), strict=True):
        for key in ("train_d_loss", "train_g_loss", "val_fid"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    # a VAE's encode and decode gather its shards as forward does; restoration's grid is drawn on every rank
    for name, sets in (("digits-vae", ["model.args={latent_dim: 4, width: 8}", "eval.generative.val_samples=96"]),
                       ("digits-denoise", ["model.args={width: 8}"])):
        ok(cli("prepare-data", "-r", name, "--json"), "prepare-data")
        fsdp = ok(cli("train", "-r", name, "--devices", "2", "--set", "train.strategy=fsdp", "--set",
                      "train.epochs=1", *[a for s in sets for a in ("--set", s)], "--json"), f"train {name}")
        assert fsdp["processes"] == 2 and (tmp_path / f"runs/{name}/samples/epoch_001.png").is_file()
        assert all(np.isfinite(v) for k, v in fsdp["last_metrics"].items() if k.startswith("val_"))


@pytest.mark.slow
def test_gan_sigkill_mid_epoch_then_resume_is_bit_exact(cli, tmp_path):
    ok(cli("prepare-data", "-r", "digits-dcgan", "--json"), "prepare-data")
    args = ["train", "-r", "digits-dcgan", *TINY_GAN, "--set", "train.checkpoint_every_steps=1", "--set",
            "train.gan.d_steps=2"]
    ok(cli(*args, "--run-dir", "straight", "--json"), "train")
    assert kill_after_steps([*args, "--run-dir", "cut"], tmp_path, 27)  # 20 steps per epoch: mid-epoch 2
    assert step_of(tmp_path / "cut/checkpoints/last.pt") < 40
    ok(cli(*args, "--run-dir", "cut", "--resume", "--json"), "resume")
    a, b = (torch.load(tmp_path / r / "checkpoints/last.pt", weights_only=True) for r in ("straight", "cut"))
    for part in ("networks", "averaged"):
        for name, weights in a[part].items():
            assert all(torch.equal(weights[k], b[part][name][k]) for k in weights), f"{part}.{name} differs"
    rows = [[row["val_fid"] for row in history(tmp_path / r)] for r in ("straight", "cut")]
    assert rows[0] == rows[1]
