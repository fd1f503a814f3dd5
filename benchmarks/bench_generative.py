"""Generative figures of issue 15 on this machine, each printed beside its goal as a ratio.

    .venv/bin/python benchmarks/bench_generative.py [--workdir DIR] [--only gan,vae,denoise,throughput,denoise-bound]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generative.py   # on a machine crowded by other jobs

- digits-dcgan as shipped: training time (goal <= 300 s), the smallest class share among 1000 samples
  classified by digits-cnn (goal >= 5 %), classifier-feature FID over its real-train-vs-real-test floor
  (goal <= 3x); `--seeds 0,1,2,3` repeats it per recipe seed (own split, own digits-cnn) and adds the median.
- digits-vae as shipped: training time (goal <= 180 s), test negative ELBO and reconstruction PSNR against the
  same model (conv_vae, same args) trained by a plain PyTorch script below with the same data, batch, optimizer,
  epochs and early stopping on val NELBO (goal: within 2 %).
- digits-denoise as shipped (additive white Gaussian noise, sigma 0.5 on [0, 1] pixels, unclipped): PSNR gain
  of restored over noisy test images (goal >= 8 dB); then the same recipe on 8-bit inputs
  (`data.corrupt.clip=true`: the noisy images clipped and rounded, as photos are).
- denoise-bound: what the denoising goal asks of this data, with unclipped and with clipped noise: the
  posterior mean over the train images (the best estimate if the train images were the whole prior) and an
  oracle handed the train image nearest to each clean test image, in PSNR over the same test split.
- GAN step throughput: the engine (digits-dcgan's networks, data, batch, optimizers and EMA) against a
  hand-written PyTorch loop over the same arrays in memory, interleaved epoch for epoch in this process (each
  engine epoch's training steps, validation and checkpoints excluded, next to one epoch of the loop, the loop
  first in every other pair); 3 fits of 60 epochs, the first epoch of each side a warm-up; the ratio of the
  total times (goal >= 0.95x).

Everything runs in this one process, one after the other; the machine's load average is printed, since
timings on shared cores are inflated by whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROUNDS, EPOCHS = 3, 60  # throughput: fits of digits-dcgan, each epoch paired with one of the loop


def _fit(name: str, root: Path, sets: list[str] = ()) -> tuple[dict, float]:
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.training.loop import fit

    recipe = resolve(name, {"data.prepared": str(root / "data" / name)}, list(sets))
    prepare(recipe)
    started = time.perf_counter()
    summary = fit(recipe, root / "runs" / name)
    return summary, time.perf_counter() - started


def _evaluate(run: Path, **options) -> dict:
    from bigmodel_cli.evaluation.evaluate import Options, evaluate

    return evaluate(run, Options(**options))


def bench_gan(root: Path, cnn: Path | None, out: list, seeds: tuple[int, ...] = (0,)) -> None:
    """digits-dcgan as shipped, once per recipe seed: each seed has its own split, its own digits-cnn (the
    feature extractor, trained here unless `cnn` is given for a single seed) and its own weights."""
    ratios = []
    reuse = cnn if len(seeds) == 1 else None
    for seed in seeds:
        where = root if len(seeds) == 1 else root / f"seed{seed}"
        sets = [f"seed={seed}"]
        if reuse is None:
            _fit("digits-cnn", where, sets)
        extractor = reuse or where / "runs/digits-cnn"
        _, seconds = _fit("digits-dcgan", where, sets)
        report = _evaluate(where / "runs/digits-dcgan", features=extractor)
        m, floor = report["metrics"], report["floor"]
        ratios.append(m["fid"] / floor["fid"])
        tag = "digits-dcgan" if len(seeds) == 1 else f"digits-dcgan seed {seed}"
        out.append((f"{tag} training time (s)", seconds, 300, "<=", seconds / 300))
        out.append((f"{tag} smallest class share", m["min_class_share"], 0.05, ">=", m["min_class_share"] / 0.05))
        out.append((f"{tag} FID / floor", ratios[-1], 3.0, "<=", ratios[-1] / 3.0))
        print(f"  {tag}: FID {m['fid']:.4f} (floor {floor['fid']:.4f}), KID {m['kid']:.4f} (floor "
              f"{floor['kid']:.4f}), precision {m['precision']:.3f}, recall {m['recall']:.3f}, IS "
              f"{m['inception_score']:.3f} (floor {floor['inception_score']:.3f}), class shares "
              f"{json.dumps(report['class_shares'])}", flush=True)
    if len(seeds) > 1:
        median = float(np.median(ratios))
        out.append((f"digits-dcgan FID / floor, median of {len(seeds)}", median, 3.0, "<=", median / 3.0))


def reference_vae(root: Path) -> dict[str, float]:
    """digits-vae's model trained by a plain PyTorch loop: same data, batch, Adam, epochs, early stopping."""
    import math

    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.models import create_model

    recipe = resolve("digits-vae")
    data = root / "data" / "digits-vae"
    x = {s: torch.from_numpy(np.load(data / s / "x.npy")).float() / 255.0 for s in ("train", "val", "test")}
    torch.manual_seed(recipe.seed)
    vae = create_model("conv_vae", num_classes=10, input_shape=[1, 8, 8], **recipe.model.args)
    opt = torch.optim.Adam(vae.parameters(), lr=recipe.train.optimizer.lr)
    batch, epochs, patience = recipe.train.batch_size, recipe.train.epochs, recipe.train.early_stopping.patience

    def elbo_terms(images, noise):
        mu, logvar = vae.encode(images)
        logits = vae.decode(mu + noise * torch.exp(0.5 * logvar))
        rec = F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return rec, kl, mu

    @torch.no_grad()
    def score(images):
        vae.eval()
        noise = torch.randn((len(images), vae.latent_dim), generator=torch.Generator().manual_seed(recipe.seed))
        rec, kl, mu = elbo_terms(images, noise)
        mse = (torch.sigmoid(vae.decode(mu)) - images).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        vae.train()
        return float((rec + kl).mean()), float((10 * torch.log10(1 / mse)).mean())

    best, best_state, bad = math.inf, None, 0
    gen = torch.Generator().manual_seed(recipe.seed)
    for _ in range(epochs):
        order = torch.randperm(len(x["train"]), generator=gen)
        for start in range(0, len(order), batch):
            images = x["train"][order[start:start + batch]]
            rec, kl, _ = elbo_terms(images, torch.randn(len(images), vae.latent_dim))
            loss = (rec + kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_nelbo, _ = score(x["val"])
        if val_nelbo < best:
            best, best_state, bad = val_nelbo, {k: v.clone() for k, v in vae.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    vae.load_state_dict(best_state)
    nelbo, psnr = score(x["test"])
    return {"nelbo": nelbo, "psnr": psnr}


def bench_vae(root: Path, out: list) -> None:
    _, seconds = _fit("digits-vae", root)
    m = _evaluate(root / "runs/digits-vae")["metrics"]
    started = time.perf_counter()
    ref = reference_vae(root)
    ref_seconds = time.perf_counter() - started
    out.append(("digits-vae training time (s)", seconds, 180, "<=", seconds / 180))
    for name in ("nelbo", "psnr"):
        gap = abs(m[name] - ref[name]) / abs(ref[name])
        out.append((f"digits-vae test {name} vs plain PyTorch", gap, 0.02, "<= (relative gap)", gap / 0.02))
    print(f"  digits-vae: nelbo {m['nelbo']:.3f} (reference {ref['nelbo']:.3f}), psnr {m['psnr']:.3f} dB (reference "
          f"{ref['psnr']:.3f}), bits/dim {m['bits_per_dim']:.4f}; reference script trained in {ref_seconds:.0f} s",
          flush=True)


def bench_denoise(root: Path, out: list) -> None:
    for clip in (False, True):
        _, seconds = _fit("digits-denoise", root, [f"data.corrupt.clip={str(clip).lower()}"])
        m = _evaluate(root / "runs/digits-denoise")["metrics"]
        what = "8-bit inputs (clip=true)" if clip else "as shipped (unclipped noise)"
        out.append((f"digits-denoise PSNR gain (dB), {what}", m["psnr_gain"], 8.0, ">=", m["psnr_gain"] / 8.0))
        print(f"  digits-denoise, {what}: PSNR {m['psnr']:.2f} dB vs noisy {m['psnr_corrupted']:.2f} dB, SSIM "
              f"{m['ssim']:.3f} vs {m['ssim_corrupted']:.3f}; trained in {seconds:.0f} s", flush=True)


def bench_denoise_bound(root: Path, out: list) -> None:
    """What the 8 dB goal asks of digits-denoise's split, with unclipped and with clipped (8-bit) noise: the PSNR
    of the posterior mean when the prior is the train images themselves (each weighted by the likelihood of the
    noisy image, sigma 0.3-0.6), and of an oracle that is handed the train image nearest to the clean test
    image (means over images, as eval reports them)."""
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    data = root / "data" / "digits-denoise-bound"
    recipe = resolve("digits-denoise", {"data.prepared": str(data)})
    prepare(recipe)
    train = np.load(data / "train/x.npy").reshape(-1, 64).astype(np.float64) / 255
    clean = np.load(data / "test/x.npy").reshape(-1, 64).astype(np.float64) / 255
    sigma = recipe.data.corrupt.gaussian_noise
    drawn = clean + np.random.default_rng(0).normal(0, sigma, clean.shape)

    def psnr(a: np.ndarray) -> float:
        return float(np.mean(10 * np.log10(1 / np.maximum(np.mean((a - clean) ** 2, axis=1), 1e-10))))

    oracle = psnr(train[np.argmin(((clean[:, None, :] - train[None]) ** 2).sum(-1), 1)])
    for clip in (False, True):
        noisy = np.round(np.clip(drawn, 0, 1) * 255) / 255 if clip else drawn
        distance = ((noisy[:, None, :] - train[None]) ** 2).sum(-1)
        best = 0.0
        for width in (0.3, 0.4, 0.5, 0.6):
            weights = np.exp(-(distance - distance.min(1, keepdims=True)) / (2 * width * width))
            best = max(best, psnr((weights / weights.sum(1, keepdims=True)) @ train))
        what, floor = ("clipped 8-bit noise" if clip else "unclipped noise"), psnr(noisy)
        print(f"  digits-denoise bound, {what}: noisy {floor:.2f} dB; posterior mean over the train images "
              f"{best:.2f} dB (gain {best - floor:.2f}); the train image nearest the clean one {oracle:.2f} dB "
              f"(gain {oracle - floor:.2f}); the goal needs {floor + 8:.2f} dB", flush=True)
        out.append((f"denoise: empirical-Bayes gain (dB), {what}", best - floor, 8.0, ">=", (best - floor) / 8.0))


class HandWrittenGAN:
    """A plain GAN loop with digits-dcgan's networks, data, batch, loss (bce or hinge), optimizers, augmentation
    and EMA, walking the epochs as the engine does (a new order each epoch, the last batch partial)."""

    def __init__(self, data: Path):
        from bigmodel_cli.config.recipe import resolve
        from bigmodel_cli.models import create_model
        from bigmodel_cli.tasks.diffaugment import DiffAugment
        from bigmodel_cli.tasks.generation import ema

        recipe = resolve("digits-dcgan")
        self.cfg, self.batch = recipe.train.gan, recipe.train.batch_size
        self.x = torch.from_numpy(np.load(data / "train/x.npy"))  # in memory: index_select is the gather
        torch.manual_seed(0)
        gan = create_model("dcgan", num_classes=10, input_shape=list(self.x.shape[1:]), **recipe.model.args)
        self.g, self.d = gan.generator, gan.discriminator
        self.g_ema = ema(self.g, self.cfg.ema_decay)
        self.augment = DiffAugment(self.cfg.augment)
        fused = recipe.train.optimizer.fused  # the recipe's optimizer kernel, as the engine builds it
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.cfg.g_lr, betas=self.cfg.g_betas, fused=fused)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=self.cfg.d_lr, betas=self.cfg.d_betas, fused=fused)

    def epoch(self) -> float:
        """Train one epoch; its seconds."""
        g, d, cfg, augment = self.g, self.d, self.cfg, self.augment
        started = time.perf_counter()
        order = torch.randperm(len(self.x))
        for first in range(0, len(order), self.batch):
            real = self.x.index_select(0, order[first:first + self.batch]).float() / 127.5 - 1
            fake = g(torch.randn(len(real), g.latent_dim))
            scores = d(augment(torch.cat([real, fake.detach()])))
            if cfg.loss == "hinge":
                d_loss = F.relu(1 - scores[:len(real)]).mean() + F.relu(1 + scores[len(real):]).mean()
            else:
                d_loss = F.softplus(-scores[:len(real)]).mean() + F.softplus(scores[len(real):]).mean()
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            d.requires_grad_(False)
            g_loss = -d(augment(fake)).mean() if cfg.loss == "hinge" else F.softplus(-d(augment(fake))).mean()
            d.requires_grad_(True)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            self.g_ema.update_parameters(g)
            float(d_loss.detach()), float(g_loss.detach())  # the engine reads its logged terms once a step too
        return time.perf_counter() - started


def bench_throughput(root: Path, out: list) -> None:
    """The engine's epochs and the hand-written loop's, interleaved one for one in this process: each engine
    epoch's training (timed here around `Trainer._train_epoch`: validation and checkpoints excluded, as the loop
    has none) next to one epoch of the loop, the loop first in every other pair. A machine that speeds up or
    slows down over seconds (this VM does, by 10-20 %) then weighs on both alike."""
    from unittest import mock

    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.training.loop import Trainer, fit

    data = root / "data" / "digits-dcgan-speed"
    sets = [f"train.epochs={EPOCHS}", "train.early_stopping.patience=null"]
    prepare(resolve("digits-dcgan", {"data.prepared": str(data)}, sets))
    rows = len(np.load(data / "train/x.npy", mmap_mode="r"))
    train_epoch, ratios, spans = Trainer._train_epoch, [], np.zeros(2)
    for i in range(ROUNDS):
        hand, ours, theirs = HandWrittenGAN(data), [], []

        def paired(trainer, *args, hand=hand, ours=ours, theirs=theirs):
            hand_first = len(ours) % 2 == 1
            if hand_first:
                theirs.append(hand.epoch())
            started = time.perf_counter()
            train_epoch(trainer, *args)
            ours.append(time.perf_counter() - started)
            if not hand_first:
                theirs.append(hand.epoch())

        with mock.patch.object(Trainer, "_train_epoch", paired):
            fit(resolve("digits-dcgan", {"data.prepared": str(data)}, sets), root / "runs" / f"speed-{i}")
        span = np.array([sum(ours[1:]), sum(theirs[1:])])  # epoch 1 of each warms up
        spans += span
        ratios.append(span[1] / span[0])
        per_epoch, epochs = np.array(theirs[1:]) / np.array(ours[1:]), len(ours) - 1
        print(f"  round {i + 1}: {epochs} epochs of {rows} rows each: engine {rows * epochs / span[0]:.0f} "
              f"samples/s, hand-written {rows * epochs / span[1]:.0f} samples/s: {ratios[-1]:.3f}x "
              f"(epoch pairs: median {np.median(per_epoch):.3f}x, quartiles {np.quantile(per_epoch, 0.25):.3f}x-"
              f"{np.quantile(per_epoch, 0.75):.3f}x)", flush=True)
    ratio = float(spans[1] / spans[0])
    print(f"  all rounds as one span: {ratio:.3f}x (rounds {min(ratios):.3f}x-{max(ratios):.3f}x)", flush=True)
    out.append(("GAN step throughput vs hand-written loop", ratio, 0.95, ">=", ratio / 0.95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", default="gan,vae,denoise,throughput")
    parser.add_argument("--features", type=Path, default=None, help="a trained digits-cnn run to reuse (else trained)")
    parser.add_argument("--seeds", default="0", help="gan: recipe seeds to train and score, e.g. 0,1,2,3 (each "
                        "with its own split and digits-cnn; --features then ignored)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("CI", "1")
    from bigmodel_cli import console

    console.quiet(True)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-generative-"))
    parts = set(args.only.split(","))
    print(f"workdir {root}; torch threads {torch.get_num_threads()}; load average before "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    out: list = []
    if "gan" in parts:
        bench_gan(root, args.features, out, tuple(int(v) for v in args.seeds.split(",")))
    if "vae" in parts:
        bench_vae(root, out)
    if "denoise" in parts:
        bench_denoise(root, out)
    if "throughput" in parts:
        bench_throughput(root, out)
    if "denoise-bound" in parts:
        bench_denoise_bound(root, out)
    print(f"\nload average after {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'figure':<44} {'measured':>10} {'goal':>18} {'ratio to goal':>14}")
    for name, value, goal, side, ratio in out:
        met = ratio <= 1 if side.startswith("<=") else ratio >= 1
        print(f"{name:<44} {value:>10.4g} {side + ' ' + format(goal, 'g'):>18} {ratio:>13.2f}x "
              f"{'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
