"""Image generation: GANs (generator + discriminator, EMA generator) and VAEs on the same loop.

    bigmodel train -r digits-dcgan        # task: generation, model dcgan: d_loss, g_loss, val_fid per epoch
    bigmodel train -r digits-vae          # task: generation, model conv_vae: loss, reconstruction, kl, val_nelbo...

A GAN trains `generator` and `discriminator`, each with its own optimizer (`train.gan.g_lr`,
`d_lr`, betas), D every step and G every `d_steps`-th step, with the loss `bce`
(non-saturating), `hinge` or `wgan-gp`, optional R1 and spectral norm on D, optional differentiable
augmentation of what D sees (`augment`, tasks/diffaugment.py), and an EMA copy of G (`ema_decay`) that
is what validation, eval and export use. A VAE trains one network `vae` on
the negative ELBO (`train.vae.reconstruction` bce|mse, `beta`).

Every epoch, validation computes `val_fid`: the Frechet distance between the features of
`eval.generative.val_samples` validation images and as many samples from fixed latents (the
seed->z rule of `export.generator.latents`). The features are the penultimate layer of
`eval.generative.features` (a classification run of ours) when the recipe names one, else of a
fixed random convolutional network (seeded: comparable between epochs and runs of one data set,
not with eval's classifier FID). On 2 CPU cores it costs well under a second for 256 8x8 images.
Rank 0 also writes `samples/epoch_NNN.png`: 64 images from fixed latents (classes in turn when
conditional), the first thing people look at.

Pixels: GANs see uint8 pixels mapped to [-1, 1] (tanh output), VAEs [0, 1] (sigmoid of logits).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bigmodel_cli.errors import UsageError
from bigmodel_cli.export.generator_spec import class_labels, latents
from bigmodel_cli.models import registry
from bigmodel_cli.tasks.base import Batch, Context, Parts, Split, Step
from bigmodel_cli.tasks.diffaugment import DiffAugment
from bigmodel_cli.training.optim import optimizer_and_schedule

GRID = 64  # images in each epoch's sample grid (8 x 8)
VAL_BATCH = 512


class PixelScale(nn.Module):
    """uint8 pixels -> float in [-1, 1] (GAN) or [0, 1] (VAE, restoration)."""

    def __init__(self, signed: bool):
        super().__init__()
        self.signed = signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        return x / 127.5 - 1.0 if self.signed else x / 255.0


def to_pixels(out: torch.Tensor, family: str) -> torch.Tensor:
    """Network output -> float pixels on 0..255 (not rounded): tanh outputs for GANs, logits for VAEs."""
    out = out.float()
    return ((out + 1.0) * 127.5 if family == "gan" else torch.sigmoid(out) * 255.0).clamp(0.0, 255.0)


def build_model(recipe, data: dict[str, Any]) -> nn.Module:
    """The recipe's generative model (a `GAN` pair or a `VAE`) for this data."""
    section = recipe.model
    n_classes = len(data["classes"]) if data.get("classes") else 1
    if section.component:
        fn, what = registry.import_component(section.component), f"model.component '{section.component}'"
    elif section.name:
        fn, what = registry.builder(section.name), f"model '{section.name}'"
        tasks = registry.tasks_of(section.name)
        if tasks is not None and recipe.task not in tasks:
            raise UsageError(f"model '{section.name}' is for task {'/'.join(tasks)}, not {recipe.task}; "
                             f"task {recipe.task} takes {', '.join(models_for(recipe.task))}")
    else:
        raise UsageError(f"the recipe sets neither model.name nor model.component (task {recipe.task} takes "
                         f"{', '.join(models_for(recipe.task))})")
    return registry.call_builder(fn, what, n_classes, list(data["input_shape"]), dict(section.args))


def models_for(task: str) -> list[str]:
    return [name for name, info in registry.list_models().items() if task in info["tasks"]]


def family(model: nn.Module) -> str:
    """'gan' or 'vae', by what the builder returned."""
    from bigmodel_cli.models.gan import GAN
    from bigmodel_cli.models.vae import VAE

    if isinstance(model, GAN):
        return "gan"
    if isinstance(model, VAE):
        return "vae"
    raise UsageError(f"task generation: the model is a {type(model).__name__}; it must be a GAN pair "
                     "(bigmodel_cli.models.gan.GAN) or a VAE (bigmodel_cli.models.vae.VAE)")


def check_common(recipe, data: dict[str, Any]) -> None:
    """What no generative recipe may set: image data only, no classification-only option."""
    from bigmodel_cli.config import schema

    if data["kind"] != "image":
        raise UsageError(f"task {recipe.task} needs image data; the prepared data is {data['kind']}")
    train, defaults = recipe.train, schema.TrainSection()
    for key in ("class_weights", "label_smoothing"):
        if getattr(train, key) != getattr(defaults, key):
            raise UsageError(f"train.{key} is a classification option; task {recipe.task} cannot use it")
    if train.huber_delta != defaults.huber_delta and train.loss != "huber":
        raise UsageError(f"train.huber_delta is for train.loss huber (regression, restoration); task {recipe.task} "
                         f"with train.loss {train.loss} cannot use it")
    if recipe.eval.threshold_search != "none":
        raise UsageError(f"eval.threshold_search is a classification option; task {recipe.task} cannot use it")
    if train.precision == "bf16-true":
        raise UsageError(f"train.precision bf16-true: task {recipe.task} trains in 32 or bf16-mixed (the EMA and "
                         "the metrics stay in float32)")


class Generation:
    """GAN or VAE on images, decided by what `model` builds."""

    name = "generation"
    inference_network = "generator"  # the EMA generator of a GAN ("vae" for a VAE: its decoder is exported)

    def __init__(self):
        self.kind: str | None = None
        self._fid = None  # val_fid: torchmetrics FID with the validation images' features kept
        self.augment = DiffAugment([])  # what D sees: train.gan.augment

    # ------------------------------------------------------------------ checks and names

    def _family(self, recipe, data) -> str:
        if self.kind is None:
            self.kind = family(build_model(recipe, data))
        return self.kind

    def check(self, recipe, data: dict[str, Any]) -> None:
        from bigmodel_cli.config import schema

        check_common(recipe, data)
        kind = self._family(recipe, data)
        if recipe.train.loss != "auto":
            raise UsageError(f"train.loss {recipe.train.loss} is for classification/regression; a "
                             f"{kind.upper()} sets {'train.gan.loss' if kind == 'gan' else 'train.vae.reconstruction'}")
        if recipe.data.corrupt != schema.CorruptSection():
            raise UsageError("data.corrupt is for task restoration; task generation learns the clean images")
        other = "vae" if kind == "gan" else "gan"
        if getattr(recipe.train, other) != getattr(schema.TrainSection(), other):
            raise UsageError(f"train.{other} is set, but model '{recipe.model.name or recipe.model.component}' is a "
                             f"{kind.upper()}; use train.{kind}")
        if recipe.model.args.get("conditional") and not (data.get("classes") and len(data["classes"]) >= 2):
            raise UsageError("model.args.conditional: the prepared data has no classes to condition on")
        self.inference_network = "generator" if kind == "gan" else "vae"

    def metrics(self, recipe, data: dict[str, Any]) -> list[str]:
        if self._family(recipe, data) == "gan":
            return ["val_fid"]
        return ["val_loss", "val_nelbo", "val_psnr", "val_fid"]

    def terms(self, recipe) -> list[str]:
        return ["d_loss", "g_loss"] if self.kind == "gan" else ["loss", "reconstruction", "kl"]

    # ------------------------------------------------------------------ networks

    def build(self, ctx: Context) -> Parts:
        from bigmodel_cli.models.gan import spectral_norm_all

        recipe = ctx.recipe
        model = build_model(recipe, ctx.data)
        self.kind = family(model)
        self.conditional, self.latent_dim = bool(model.conditional), int(model.latent_dim)
        extractor, source = val_extractor(recipe, ctx.data)
        notes = [f"val_fid features: {source}"]
        if self.kind == "gan":
            cfg = recipe.train.gan
            if cfg.spectral_norm:
                spectral_norm_all(model.discriminator)
            averaged = {}
            if cfg.ema_decay is not None:
                averaged["generator"] = ema(model.generator, cfg.ema_decay)
            self.augment = DiffAugment(cfg.augment)
            notes.insert(0, f"loss {cfg.loss}, d_steps {cfg.d_steps}" + (f", EMA {cfg.ema_decay}" if averaged else "")
                         + (f", D sees {'+'.join(cfg.augment)} (DiffAugment)" if cfg.augment else ""))
            return Parts(networks={"generator": model.generator, "discriminator": model.discriminator},
                         inputs=PixelScale(signed=True), frozen={"features": extractor}, averaged=averaged,
                         notes=notes)
        cfg = recipe.train.vae
        notes.insert(0, f"negative ELBO ({cfg.reconstruction}, beta {cfg.beta})")
        return Parts(networks={"vae": model}, inputs=PixelScale(signed=False), frozen={"features": extractor},
                     notes=notes)

    def optimizers(self, ctx: Context, parts: Parts) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        cfg = ctx.recipe.train
        out = {}
        if self.kind == "gan":
            gan = cfg.gan
            for name, lr, betas, every in (("generator", gan.g_lr, gan.g_betas, gan.d_steps),
                                           ("discriminator", gan.d_lr, gan.d_betas, 1)):
                section = cfg.optimizer.model_copy(update={"lr": lr or cfg.optimizer.lr, "betas": betas})
                out[name] = optimizer_and_schedule(parts.networks[name], ctx, section, every)  # G: every d_steps
            return out
        return {"vae": optimizer_and_schedule(parts.networks["vae"], ctx)}

    # ------------------------------------------------------------------ one step

    def training_step(self, parts: Parts, batch: Batch, step: Step) -> None:
        if self.kind == "gan":
            self._gan_step(parts, batch, step)
        else:
            self._vae_step(parts, batch, step)

    def _gan_step(self, parts: Parts, batch: Batch, step: Step) -> None:
        cfg = step.recipe.train.gan
        real = parts.inputs(batch.x)
        n = len(real)
        y = batch.y if self.conditional else None
        g_turn = step.step % cfg.d_steps == cfg.d_steps - 1  # G after every d_steps discriminator steps
        # BatchNorm in training mode needs 2 rows: a batch of one (the last of an epoch, or a rank's share of it)
        # gives G a second z, whose image only enters the batch statistics
        m = max(n, 2)
        z = torch.randn(m, self.latent_dim, device=real.device)
        generator, discriminator = parts.modules["generator"], parts.modules["discriminator"]
        with step.autocast(), torch.set_grad_enabled(g_turn):
            fake = generator(z, y if y is None or m == n else y.repeat(m))[:n]
        # D: real and fake (and the wgan-gp interpolates) in one forward, so DDP sees one pass per step
        x_real = real.detach().requires_grad_(cfg.r1_gamma > 0)
        parts_in = [x_real, fake.detach().to(real.dtype)]
        if cfg.loss == "wgan-gp":
            eps = torch.rand(n, 1, 1, 1, device=real.device)
            parts_in.append((eps * real + (1 - eps) * fake.detach().to(real.dtype)).requires_grad_(True))
        labels = torch.cat([y] * len(parts_in)) if y is not None else None
        penalised = cfg.loss == "wgan-gp" or cfg.r1_gamma > 0
        with step.penalty("discriminator") if penalised else contextlib.nullcontext():
            with step.autocast():
                scores = discriminator(self.augment(torch.cat(parts_in)), labels).float()
            d_real, d_fake = scores[:n], scores[n:2 * n]
            d_loss = discriminator_loss(cfg.loss, d_real, d_fake)
            total = d_loss
            if cfg.loss == "wgan-gp":
                grad, = torch.autograd.grad(scores[2 * n:].sum(), parts_in[2], create_graph=True)
                total = total + cfg.gp_lambda * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            if cfg.r1_gamma > 0:
                grad, = torch.autograd.grad(d_real.sum(), x_real, create_graph=True)
                total = total + cfg.r1_gamma / 2 * grad.flatten(1).pow(2).sum(dim=1).mean()
        step.backward(total, "discriminator")
        step.step_optimizer("discriminator")
        step.log(d_loss=d_loss)
        if not g_turn:
            return
        raw_d = parts.networks["discriminator"]  # D's weights are fixed here: no DDP gradient hooks needed
        with step.frozen("discriminator"):
            with step.autocast():
                g_loss = generator_loss(cfg.loss, raw_d(self.augment(fake), y).float())
            step.backward(g_loss, "generator")
        step.step_optimizer("generator")
        step.log(g_loss=g_loss)
        if step.boundary and "generator" in parts.averaged:
            step.update_average("generator")

    def _vae_step(self, parts: Parts, batch: Batch, step: Step) -> None:
        cfg = step.recipe.train.vae
        x = parts.inputs(batch.x)
        y = batch.y if self.conditional else None
        noise = torch.randn(len(x), self.latent_dim, device=x.device)
        with step.autocast():
            logits, mu, logvar = parts.modules["vae"](x, y, noise)
        rec, kl = reconstruction_nll(cfg, logits.float(), x), kl_divergence(mu.float(), logvar.float())
        loss = (rec + cfg.beta * kl).mean()
        step.backward(loss, "vae")
        step.step_optimizer("vae")
        step.log(loss=loss, reconstruction=rec.mean(), kl=kl.mean())

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self, parts: Parts, val: Split, ctx: Context) -> dict[str, float | None]:
        recipe = ctx.recipe
        net = sampler_network(parts, self.kind)
        was_training = net.training
        net.eval()
        try:
            row: dict[str, float | None] = {}
            if self.kind == "vae":
                row.update(vae_scores(parts.networks["vae"], recipe.train.vae, val, ctx.device, recipe.seed,
                                      self.conditional))
            row["val_fid"] = self._val_fid(net, parts.frozen["features"], val, ctx)
            if ctx.run_dir is not None:  # every rank samples (an FSDP forward gathers from all), rank 0 writes
                write_sample_grid(net, self.kind, self.latent_dim, self.conditional, ctx, recipe.seed)
        finally:
            net.train(was_training)
            if self.kind == "vae":
                parts.networks["vae"].train()
        return row

    def _val_fid(self, net, extractor, val: Split, ctx: Context) -> float | None:
        from bigmodel_cli.evaluation.features import frechet_metric

        n = min(len(val), ctx.recipe.eval.generative.val_samples)
        if n <= extractor.num_features:
            return None  # too few validation images for a covariance of this many features
        if self._fid is None:
            self._fid = frechet_metric(extractor, keep_real=True).to(ctx.device)
            x, _ = val.take(np.arange(n))
            for start in range(0, n, VAL_BATCH):
                self._fid.update(torch.from_numpy(x[start:start + VAL_BATCH]).to(ctx.device).float(), real=True)
        self._fid.reset()  # the fake side only: the validation images' statistics are kept
        labels = val.labels[:n] if self.conditional else None
        for start in range(0, n, VAL_BATCH):
            count = min(VAL_BATCH, n - start)
            pixels = sample_pixels(net, self.kind, latents(ctx.recipe.seed, n, self.latent_dim)[start:start + count],
                                   None if labels is None else labels[start:start + count], ctx.device)
            self._fid.update(pixels, real=False)
        return float(self._fid.compute())


# ---------------------------------------------------------------- pieces shared with eval and export


def ema(generator: nn.Module, decay: float) -> nn.Module:
    """An EMA copy of G that averages its BatchNorm statistics too (use_buffers), as StyleGAN's G_ema.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates so far (as diffusers' and timm's
    EMAs do): with a fixed 0.999, a run of a few hundred steps would be judged and exported with an EMA still
    close to G's random initial weights.
    """
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        rate = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, rate)
        else:  # integer buffers (BatchNorm's batch count): the current value
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)

    return AveragedModel(generator, multi_avg_fn=update, use_buffers=True)


def discriminator_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if loss == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if loss == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp: the critic's Wasserstein estimate (penalty added by the step)


def generator_loss(loss: str, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake).mean() if loss == "bce" else -fake.mean()


def reconstruction_nll(cfg, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image in nats: Bernoulli on [0, 1] pixels (bce), or Gaussian with std cfg.sigma (mse)."""
    if cfg.reconstruction == "bce":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)
    squares = (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(dim=1) / (2 * cfg.sigma ** 2)
    return squares + x[0].numel() * 0.5 * math.log(2 * math.pi * cfg.sigma ** 2)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches on [0, 1] (an exact copy counts 100 dB)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def sampler_network(parts: Parts, kind: str) -> nn.Module:
    """What samples are drawn from: the EMA generator (else G) of a GAN, the VAE (its decoder)."""
    if kind == "gan":
        return parts.averaged["generator"].module if "generator" in parts.averaged else parts.networks["generator"]
    return parts.networks["vae"]


def sample_pixels(net: nn.Module, kind: str, z: np.ndarray, labels: np.ndarray | None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The 8-bit images the exported model gives for latents `z` (and labels), as floats 0..255 [N, C, H, W]:
    G(z) or the VAE's decoder in eval mode, rounded half to even as its Round is; what eval and val_fid score."""
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(device)
    yt = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    out = net.decode(zt, yt) if kind == "vae" else net(zt, yt)
    return to_pixels(out, kind).round()


@torch.no_grad()
def vae_scores(vae: nn.Module, cfg, split: Split, device, seed: int, conditional: bool,
               prefix: str = "val_") -> dict[str, float]:
    """Loss (beta-weighted), negative ELBO (beta 1), its bits per dimension, reconstruction MSE and PSNR (z = mu)."""
    vae.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = {"loss": 0.0, "nelbo": 0.0, "mse": 0.0, "psnr": 0.0}
    n = len(split)
    dims = 1
    for start in range(0, n, VAL_BATCH):
        xb, yb = split.take(np.arange(start, min(n, start + VAL_BATCH)))
        x = torch.from_numpy(xb).to(device).float() / 255.0
        dims = x[0].numel()
        y = torch.from_numpy(yb).to(device) if conditional else None
        mu, logvar = vae.encode(x, y)
        noise = torch.randn(mu.shape, generator=gen).to(device)
        rec = reconstruction_nll(cfg, vae.decode(mu + noise * torch.exp(0.5 * logvar), y).float(), x)
        kl = kl_divergence(mu.float(), logvar.float())
        mean = torch.sigmoid(vae.decode(mu, y).float())
        sums["loss"] += float((rec + cfg.beta * kl).sum())
        sums["nelbo"] += float((rec + kl).sum())
        sums["mse"] += float((mean - x).pow(2).flatten(1).mean(dim=1).sum())
        sums["psnr"] += float(psnr(mean, x).sum())
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["bits_per_dim"] = out["nelbo"] / (dims * math.log(2))
    keys = ("loss", "nelbo", "psnr") if prefix == "val_" else ("nelbo", "bits_per_dim", "mse", "psnr")
    return {f"{prefix}{k}": out[k] for k in keys}


def val_extractor(recipe, data: dict[str, Any]) -> tuple[nn.Module, str]:
    """The features val_fid uses: eval.generative.features (a classification run, an Inception weights file) or a
    seeded random network."""
    from bigmodel_cli.evaluation.features import RandomFeatures, load_extractor

    spec = recipe.eval.generative.features
    if spec:
        extractor, record = load_extractor(spec, data, recipe.eval.generative.inception_layer)
        return extractor, f"{record.get('run') or record['file']} ({extractor.num_features} features)"
    return RandomFeatures(list(data["input_shape"]), seed=recipe.seed), "a seeded random conv network (64 features)"


def write_sample_grid(net: nn.Module, kind: str, latent_dim: int, conditional: bool, ctx: Context, seed: int) -> None:
    """samples/epoch_NNN.png: 64 images from the fixed latents of `seed` (classes in turn when conditional)."""
    from bigmodel_cli.export.generator_spec import save_grid

    labels = class_labels(GRID, len(ctx.data["classes"])) if conditional else None
    pixels = sample_pixels(net, kind, latents(seed, GRID, latent_dim), labels, ctx.device)
    if ctx.dist.is_main:
        save_grid(pixels.to(torch.uint8).cpu().numpy(),
                  ctx.run_dir / "samples" / f"epoch_{ctx.epoch:03d}.png")


def load_generative(run, which: str = "best") -> tuple[str, nn.Module, Any]:
    """(kind, network in eval mode on the CPU, checkpoint path) of a generative run: the EMA generator of a GAN
    (its raw G when trained without EMA), the VAE, or the restoration network; kind is gan | vae | restoration."""
    from bigmodel_cli import checkpoint
    from bigmodel_cli.models.build import model_meta

    path = checkpoint.resolve(run.path, which)
    state = checkpoint.load(path, expect=model_meta(run.recipe, run.manifest))
    model = build_model(run.recipe, run.manifest)
    if run.recipe.task == "restoration":
        checkpoint.load_weights(model, state, path, "model")
        return "restoration", model.eval(), path
    kind = family(model)
    if kind == "vae":
        checkpoint.load_weights(model, state, path, "vae")
        return kind, model.eval(), path
    averaged = (state.get("averaged") or {}).get("generator")
    if averaged is None:
        checkpoint.load_weights(model.generator, state, path, "generator")
        return kind, model.generator.eval(), path
    copy = ema(model.generator, run.recipe.train.gan.ema_decay or 0.999)
    try:
        copy.load_state_dict(averaged)
    except RuntimeError as e:
        raise UsageError(f"{path}: the EMA generator does not fit the model ({' '.join(str(e).split())[:300]})") from e
    return kind, copy.module.eval(), path
