"""Differentiable augmentation of what the GAN discriminator sees (`train.gan.augment`), after DiffAugment.

    augment = DiffAugment(["translation"])
    scores = discriminator(augment(torch.cat([real, fake])))       # D step: both sides, the same policy
    g_loss = generator_loss(loss, discriminator(augment(fake)))     # G step: gradients flow through it

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training" (NeurIPS 2020), as StudioGAN's
`apply_diffaug`: each policy draws its own parameters per image from torch's generator on the images' device
(so a resumed run draws the same ones), and is differentiable in the images, so G learns through it and the
R1 and WGAN-GP penalties keep their meaning. Real and fake images are augmented alike: D cannot tell them
apart by the augmentation, and G is not taught to produce augmented images. Images are in [-1, 1]; what a
shift uncovers and what cutout removes is -1 (black, the background of digits and most scans).

- `color`: brightness (+-0.5), saturation (x0 to x2, colour images only) and contrast (x0.5 to x1.5);
- `translation`: a shift of up to 1/8 of each side, whole pixels (at least one);
- `cutout`: a square of half of each side set to -1 at a random place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FILL = -1.0


def color(x: torch.Tensor) -> torch.Tensor:
    n = x.size(0)
    x = x + (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)
    if x.size(1) > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                               torch.arange(w, device=x.device), indexing="ij")
    gy = torch.clamp(gy + dy + sh, 0, h + 2 * sh - 1)
    gx = torch.clamp(gx + dx + sw, 0, w + 2 * sw - 1)
    padded = F.pad(x, [sw, sw, sh, sh], value=FILL)
    return padded.permute(0, 2, 3, 1)[b, gy, gx].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                               torch.arange(cw, device=x.device), indexing="ij")
    gy = torch.clamp(gy + cy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + cx - cw // 2, 0, w - 1)
    keep = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    keep[b, gy, gx] = 0
    keep = keep.unsqueeze(1)
    return x * keep + FILL * (1 - keep)


_APPLY = {"color": color, "translation": translation, "cutout": cutout}


class DiffAugment:
    """The recipe's policies in order; with none, the images pass through untouched."""

    def __init__(self, policies: list[str]):
        unknown = [p for p in policies if p not in _APPLY]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r} (known: {', '.join(_APPLY)})")
        self.steps = [_APPLY[p] for p in policies]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x
