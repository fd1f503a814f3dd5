"""`dcgan`: a DCGAN-style generator and discriminator sized from the data, optionally class-conditional.

    gan = create_model("dcgan", num_classes=10, input_shape=[1, 8, 8], latent_dim=64, width=64)
    images = gan.generator(torch.randn(16, 64))            # [16, 1, 8, 8] in [-1, 1] (tanh)
    scores = gan.discriminator(images)                     # [16, 1] logits / critic values

The image side is halved k times down to a base of 4..7 pixels (8x8 -> 4x4, 28x28 -> 7x7,
32x32 -> 4x4); G projects z to the base with a linear layer and doubles it k times with
transposed convolutions (BatchNorm, ReLU), D mirrors it with strided convolutions (LeakyReLU,
no BatchNorm, so that the gradient penalties and spectral norm behave). `blocks: N` adds N
residual blocks after every resolution change. `conditional: true`: G concatenates a learned
label embedding to z, D is a projection discriminator (Miyato & Koyama, 2018).
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.models.registry import register_model


def resolution_plan(height: int, width: int) -> tuple[int, int, int]:
    """(k, base height, base width): how often both sides halve evenly while staying at 4 pixels or more."""
    k = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, k = height // 2, width // 2, k + 1
    return k, height, width


class ResBlock(nn.Module):
    def __init__(self, channels: int, norm: bool, act: type[nn.Module]):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.BatchNorm2d(channels)] if norm else []
            layers += [act(), nn.Conv2d(channels, channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def check_sizes(blocks: int = 0, **sizes: int | None) -> None:
    """Exit 2 naming the first `model.args` size below 1 (or `blocks` below 0), before torch fails on it."""
    from bigmodel_cli.errors import UsageError

    for name, value in sizes.items():
        if value is not None and value < 1:
            raise UsageError(f"model.args.{name} {value}: must be 1 or more")
    if blocks < 0:
        raise UsageError(f"model.args.blocks {blocks}: must be 0 or more")


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


class Generator(nn.Module):
    """z [N, latent_dim] (+ label [N]) -> image [N, C, H, W]: tanh in [-1, 1], or logits (a VAE decoder)."""

    def __init__(self, latent_dim: int, shape: list[int], width: int, num_classes: int, conditional: bool,
                 blocks: int = 0, norm: bool = True, output: str = "tanh"):
        super().__init__()
        channels, height, width_px = shape
        k, self.base_h, self.base_w = resolution_plan(height, width_px)
        self.latent_dim, self.conditional = latent_dim, conditional
        self.channels = width * 2 ** min(k, 3)
        self.embed = nn.Embedding(num_classes, latent_dim) if conditional else None
        cells = self.channels * self.base_h * self.base_w
        in_dim = latent_dim * (2 if conditional else 1)
        self.project = nn.Sequential(nn.Linear(in_dim, cells, bias=not norm),
                                     *([nn.BatchNorm1d(cells)] if norm else []), nn.ReLU())
        layers: list[nn.Module] = []
        ch = self.channels
        for _ in range(k):
            out = max(width, ch // 2)
            layers += [nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=not norm), *([nn.BatchNorm2d(out)] if norm else []),
                       nn.ReLU()]
            layers += [ResBlock(out, norm, nn.ReLU) for _ in range(blocks)]
            ch = out
        layers.append(nn.Conv2d(ch, channels, 3, padding=1))
        if output == "tanh":
            layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(label).to(z.dtype)], dim=1)
        h = self.project(z).view(-1, self.channels, self.base_h, self.base_w)
        return self.body(h)


class Encoder(nn.Module):
    """image [N, C, H, W] -> features [N, F]: strided convolutions with LeakyReLU, flattened."""

    def __init__(self, shape: list[int], width: int, blocks: int = 0):
        super().__init__()
        channels, height, width_px = shape
        k, base_h, base_w = resolution_plan(height, width_px)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), _leaky()]
        ch = width
        for _ in range(k):
            out = min(ch * 2, width * 8)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), _leaky()]
            layers += [ResBlock(out, False, _leaky) for _ in range(blocks)]
            ch = out
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.features = ch * base_h * base_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Discriminator(nn.Module):
    """image [N, C, H, W] (+ label [N]) -> one logit (bce, hinge) or critic value (wgan-gp) per image."""

    def __init__(self, shape: list[int], width: int, num_classes: int, conditional: bool, blocks: int = 0):
        super().__init__()
        self.features = Encoder(shape, width, blocks)
        self.head = nn.Linear(self.features.features, 1)
        self.embed = nn.Embedding(num_classes, self.features.features) if conditional else None

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.head(h)
        if self.embed is not None:  # projection: <embed(y), h>
            out = out + (self.embed(label).to(h.dtype) * h).sum(dim=1, keepdim=True)
        return out


class GAN(nn.Module):
    """The pair a GAN task trains: `generator` and `discriminator` (saved and optimised separately)."""

    def __init__(self, generator: Generator, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.conditional = generator.latent_dim, generator.conditional

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, label)


def spectral_norm_all(net: nn.Module) -> nn.Module:
    """Spectral normalisation on every conv and linear layer (D); `remove_spectral_norm` undoes it for export."""
    from torch.nn.utils.parametrizations import spectral_norm

    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(module)
    return net


def remove_parametrizations(net: nn.Module) -> nn.Module:
    """Bake every parametrization (spectral norm) into plain weights: eval-mode graphs export without it."""
    from torch.nn.utils import parametrize

    for module in list(net.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return net


@register_model("dcgan", kinds=("image",), tasks=("generation",))
def dcgan(num_classes: int, input_shape: list[int], latent_dim: int = 64, width: int = 64, conditional: bool = False,
          blocks: int = 0, d_width: int | None = None) -> GAN:
    """DCGAN generator + discriminator sized from the image (task: generation); conditional, ResNet blocks;
    `d_width` gives D its own width (default: `width`)."""
    check_sizes(blocks, latent_dim=latent_dim, width=width, d_width=d_width)
    n = max(num_classes, 1)
    return GAN(Generator(latent_dim, input_shape, width, n, conditional, blocks),
               Discriminator(input_shape, width if d_width is None else d_width, n, conditional, blocks))
