"""Image restoration: a network trained to map corrupted images back to clean ones (denoising, inpainting).

    bigmodel train -r digits-denoise      # task: restoration, model unet_small, data.corrupt.gaussian_noise: 0.5

The corruption is declared in the recipe (`data.corrupt`: `gaussian_noise` std on [0, 1]
pixels, `mask` area fraction of a random square hole set to 0) and applied on the fly to each
training batch with the loop's random streams (so resume replays it exactly); it is never
stored. Corrupted images are clipped to [0, 1] and rounded to 8-bit levels, as the uint8 images
the exported model takes would be; with `data.corrupt.clip: false` the noise is additive white
Gaussian noise as denoising benchmarks add it (unclipped floats; the exported model takes FP32).
The loss is `train.loss` (auto: mse; mae; huber, linear beyond `train.huber_delta`) between the
restored and the clean image on [0, 1]. Validation corrupts the validation images once with a
generator seeded by the recipe's seed, and reports val_loss, val_psnr and val_ssim of the restored
images (rounded to 8-bit, as served); rank 0 writes `samples/epoch_NNN.png` (rows: corrupted, restored, clean).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bigmodel_cli.errors import UsageError, first_line
from bigmodel_cli.tasks.base import Batch, Context, Parts, Split, Step
from bigmodel_cli.tasks.generation import PixelScale, build_model, check_common, psnr
from bigmodel_cli.training.optim import optimizer_and_schedule

VAL_BATCH = 512
GRID_IMAGES = 16  # validation images shown in each epoch's grid


def corrupt(x: torch.Tensor, cfg, generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupted copies of clean images `x` on [0, 1]: noise and/or a square hole; clipped to [0, 1] at 8-bit levels
    unless `cfg.clip` is false (then the noise is left as drawn: additive white Gaussian noise)."""
    out = x
    if cfg.gaussian_noise:
        noise = torch.randn(x.shape, generator=generator) if generator is not None else torch.randn_like(x)
        out = out + cfg.gaussian_noise * noise.to(x.device)
    if cfg.mask:
        n, _, height, width = x.shape
        side_h = max(1, round(height * cfg.mask ** 0.5))
        side_w = max(1, round(width * cfg.mask ** 0.5))
        top = _randint(height - side_h + 1, n, generator).to(x.device)
        left = _randint(width - side_w + 1, n, generator).to(x.device)
        rows = torch.arange(height, device=x.device)[None, :, None]
        cols = torch.arange(width, device=x.device)[None, None, :]
        hole = ((rows >= top[:, None, None]) & (rows < (top + side_h)[:, None, None])
                & (cols >= left[:, None, None]) & (cols < (left + side_w)[:, None, None]))
        out = out.masked_fill(hole[:, None], 0.0)
    return torch.round(out.clamp(0.0, 1.0) * 255.0) / 255.0 if cfg.clip else out


def _randint(high: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator) if generator is not None else torch.randint(0, high, (n,))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al., 2004) of two batches on [0, 1]: Gaussian window (sigma 1.5) of 11 pixels, or
    the largest odd size the image allows (7 for 8x8 digits), valid positions only, averaged over channels."""
    a, b = a.float(), b.float()
    channels, height, width = a.shape[1:]
    size = min(11, height, width)
    size -= 1 - size % 2
    coords = torch.arange(size, dtype=torch.float32, device=a.device) - size // 2
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(dim=1)


LOSSES = {"auto": F.mse_loss, "mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}


def loss_function(train):
    """`train.loss` between restored and clean [0, 1] pixels; huber turns linear at `train.huber_delta`."""
    if train.loss == "huber":
        return functools.partial(F.huber_loss, delta=train.huber_delta)
    return LOSSES[train.loss]


class Restoration:
    name = "restoration"
    inference_network = "model"

    def check(self, recipe, data: dict[str, Any]) -> None:
        from bigmodel_cli.config import schema

        check_common(recipe, data)
        if recipe.train.loss not in LOSSES:
            raise UsageError(f"train.loss {recipe.train.loss}: task restoration takes mse, mae or huber (auto: mse)")
        corrupt_cfg = recipe.data.corrupt
        if not corrupt_cfg.gaussian_noise and not corrupt_cfg.mask:
            raise UsageError("task restoration: data.corrupt declares no corruption; set data.corrupt.gaussian_noise "
                             "(e.g. 0.5) and/or data.corrupt.mask (e.g. 0.25)")
        for key in ("gan", "vae"):
            if getattr(recipe.train, key) != getattr(schema.TrainSection(), key):
                raise UsageError(f"train.{key} is for task generation; task restoration cannot use it")
        net = build_model(recipe, data)
        try:
            with torch.no_grad():
                out = net.eval()(torch.zeros([2, *data["input_shape"]]))
        except RuntimeError as e:  # shapes the network cannot take (a convolution larger than its input...)
            raise UsageError(f"model '{recipe.model.name or recipe.model.component}' fails on images "
                             f"[N, {', '.join(map(str, data['input_shape']))}]: {first_line(e)}") from None
        if not isinstance(out, torch.Tensor) or list(out.shape[1:]) != list(data["input_shape"]):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(f"model '{recipe.model.name or recipe.model.component}' does not restore images: input "
                             f"[N, {', '.join(map(str, data['input_shape']))}] gives {got}")

    def metrics(self, recipe, data: dict[str, Any]) -> list[str]:
        return ["val_loss", "val_psnr", "val_ssim"]

    def terms(self, recipe) -> list[str]:
        return ["loss"]

    def build(self, ctx: Context) -> Parts:
        cfg = ctx.recipe.data.corrupt
        what = ", ".join(part for part in (f"gaussian noise {cfg.gaussian_noise}" if cfg.gaussian_noise else "",
                                            f"mask {cfg.mask}" if cfg.mask else "") if part)
        return Parts(networks={"model": build_model(ctx.recipe, ctx.data)}, inputs=PixelScale(signed=False),
                     notes=[f"corruption: {what}", f"loss {ctx.recipe.train.loss.replace('auto', 'mse')}"])

    def optimizers(self, ctx: Context, parts: Parts) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        return {"model": optimizer_and_schedule(parts.networks["model"], ctx)}

    def training_step(self, parts: Parts, batch: Batch, step: Step) -> None:
        clean = parts.inputs(batch.x)
        noisy = corrupt(clean, step.recipe.data.corrupt)
        with step.autocast():
            restored = parts.modules["model"](noisy)
        loss = loss_function(step.recipe.train)(restored.float(), clean)
        step.backward(loss, "model")
        step.step_optimizer("model")
        step.log(loss=loss)

    @torch.no_grad()
    def validate(self, parts: Parts, val: Split, ctx: Context) -> dict[str, float | None]:
        net = parts.networks["model"]
        net.eval()
        try:
            scores = restoration_scores(net, val, ctx.recipe, ctx.device)
            if ctx.run_dir is not None and len(val):  # every rank restores (an FSDP forward gathers from all)
                clean, noisy, restored = restore_split(net, val, ctx.recipe, ctx.device, limit=GRID_IMAGES)
                from bigmodel_cli.export.generator_spec import save_grid

                if ctx.dist.is_main:
                    save_grid(np.concatenate([noisy, restored, clean]),
                              ctx.run_dir / "samples" / f"epoch_{ctx.epoch:03d}.png", columns=len(clean))
        finally:
            net.train()
        return {f"val_{k}": v for k, v in scores.items() if k in ("loss", "psnr", "ssim")}


def restore_split(net, split: Split, recipe, device, limit: int | None = None):
    """(clean, corrupted, restored) uint8 arrays for the split's first `limit` rows, corrupted with the recipe's
    seed; one batch (the sample grid) or the whole split in batches (eval)."""
    gen = torch.Generator().manual_seed(recipe.seed)
    n = len(split) if limit is None else min(limit, len(split))
    out: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, n, VAL_BATCH):
        x, _ = split.take(np.arange(start, min(n, start + VAL_BATCH)))
        clean = torch.from_numpy(x).float() / 255.0
        noisy = corrupt(clean, recipe.data.corrupt, gen)
        restored = net(noisy.to(device)).float().clamp(0.0, 1.0).cpu()
        for i, t in enumerate((clean, noisy.clamp(0.0, 1.0), restored)):  # unclipped noise is shown clipped
            out[i].append(torch.round(t * 255.0).to(torch.uint8).numpy())
    return tuple(np.concatenate(parts) for parts in out)


@torch.no_grad()
def restoration_scores(net, split: Split, recipe, device) -> dict[str, float]:
    """loss (on the unclamped output), PSNR and SSIM of restored vs clean and of corrupted vs clean (means over
    images, on 8-bit levels), over the whole split corrupted once with the recipe's seed."""
    gen = torch.Generator().manual_seed(recipe.seed)
    sums = dict.fromkeys(("loss", "psnr", "ssim", "psnr_corrupted", "ssim_corrupted"), 0.0)
    loss_fn = loss_function(recipe.train)
    n = len(split)
    for start in range(0, n, VAL_BATCH):
        x, _ = split.take(np.arange(start, min(n, start + VAL_BATCH)))
        clean = torch.from_numpy(x).float() / 255.0
        noisy = corrupt(clean, recipe.data.corrupt, gen)
        out = net(noisy.to(device)).float().cpu()
        restored = torch.round(out.clamp(0.0, 1.0) * 255.0) / 255.0
        sums["loss"] += float(loss_fn(out, clean)) * len(x)
        sums["psnr"] += float(psnr(restored, clean).sum())
        sums["ssim"] += float(ssim(restored, clean).sum())
        sums["psnr_corrupted"] += float(psnr(noisy, clean).sum())
        sums["ssim_corrupted"] += float(ssim(noisy, clean).sum())
    out_scores = {k: v / max(n, 1) for k, v in sums.items()}
    out_scores["psnr_gain"] = out_scores["psnr"] - out_scores["psnr_corrupted"]
    return out_scores
