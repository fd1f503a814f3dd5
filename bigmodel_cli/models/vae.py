"""`conv_vae`: a convolutional variational auto-encoder, optionally class-conditional (task: generation).

    vae = create_model("conv_vae", num_classes=10, input_shape=[1, 8, 8], latent_dim=16, width=32)
    logits, mu, logvar = vae(x01)                # x in [0, 1]; logits of the reconstruction (sigmoid -> pixels)
    images = torch.sigmoid(vae.decode(torch.randn(16, 16)))

The encoder is the DCGAN discriminator's trunk (strided convolutions, LeakyReLU) ending in the
mean and log-variance of q(z|x); the decoder is the DCGAN generator without BatchNorm and
without tanh (it gives logits: Bernoulli logits for `reconstruction: bce`, sigmoid means for
`mse`). `conditional: true` feeds a learned label embedding to both.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.models.gan import Encoder, Generator, check_sizes
from bigmodel_cli.models.registry import register_model


class VAE(nn.Module):
    forward_methods = ("encode", "decode")  # called besides forward (validation, sampling): FSDP2 gathers for them

    def __init__(self, latent_dim: int, shape: list[int], width: int, num_classes: int, conditional: bool,
                 blocks: int = 0):
        super().__init__()
        self.latent_dim, self.conditional = latent_dim, conditional
        self.encoder = Encoder(shape, width, blocks)
        self.embed = nn.Embedding(num_classes, latent_dim) if conditional else None
        extra = latent_dim if conditional else 0
        self.posterior = nn.Linear(self.encoder.features + extra, 2 * latent_dim)
        self.decoder = Generator(latent_dim, shape, width, num_classes, conditional, blocks, norm=False,
                                 output="logits")

    def encode(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        if self.embed is not None:
            h = torch.cat([h, self.embed(label).to(h.dtype)], dim=1)
        mu, logvar = self.posterior(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, label)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        """(reconstruction logits, mu, logvar); `noise` is the reparameterisation's N(0, 1) draw (None: z = mu)."""
        mu, logvar = self.encode(x, label)
        z = mu if noise is None else mu + noise * torch.exp(0.5 * logvar)
        return self.decode(z, label), mu, logvar


@register_model("conv_vae", kinds=("image",), tasks=("generation",))
def conv_vae(num_classes: int, input_shape: list[int], latent_dim: int = 16, width: int = 32,
             conditional: bool = False, blocks: int = 0) -> VAE:
    """Convolutional VAE (task: generation; train.vae: beta, reconstruction bce|mse), optionally conditional."""
    check_sizes(blocks, latent_dim=latent_dim, width=width)
    return VAE(latent_dim, input_shape, width, max(num_classes, 1), conditional, blocks)
