"""`dncnn` (a residual denoising CNN, Zhang et al., 2017) and `unet_small` for `task: restoration`.

    net = create_model("dncnn", num_classes=10, input_shape=[1, 8, 8], width=64, depth=8)
    clean = net(noisy01)               # [N, C, H, W] on [0, 1] pixels: input minus the predicted corruption

`depth` 3x3 convolutions of `width` channels (ReLU between them) predict the corruption, which
is subtracted from the input; the receptive field is 2 * depth + 1 pixels. No BatchNorm, so
training and eval compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.models.registry import register_model


class DnCNN(nn.Module):
    def __init__(self, channels: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


@register_model("dncnn", kinds=("image",), tasks=("restoration",))
def dncnn(num_classes: int, input_shape: list[int], width: int = 64, depth: int = 8) -> DnCNN:
    """Residual denoising CNN (task: restoration): depth 3x3 convs predict the corruption, subtracted."""
    if depth < 2:
        from bigmodel_cli.errors import UsageError

        raise UsageError(f"model.args.depth {depth}: dncnn needs at least 2 layers")
    return DnCNN(input_shape[0], width, depth)


class UNet(nn.Module):
    """Two resolutions below the input (as the image allows), skip connections, the corruption predicted and
    subtracted: the whole image is in view at the bottom, which a denoiser of small images needs."""

    def __init__(self, channels: int, width: int, levels: int):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())

        self.stem = block(channels, width)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        ch = width
        for _ in range(levels):
            self.down.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.ReLU(), block(ch * 2, ch * 2)))
            ch *= 2
        for _ in range(levels):
            self.up.append(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1))
            self.merge.append(block(ch, ch // 2))
            ch //= 2
        self.head = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        for up, merge in zip(self.up, self.merge, strict=True):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return x - self.head(h)


@register_model("unet_small", kinds=("image",), tasks=("restoration",))
def unet_small(num_classes: int, input_shape: list[int], width: int = 32, levels: int | None = None) -> UNet:
    """Small residual U-Net (task: restoration): halves the image down to 2..3 pixels, skip connections."""
    _, height, width_px = input_shape
    fits = 0  # how often both sides halve evenly while staying at 2 pixels or more
    while height % 2 == 0 and width_px % 2 == 0 and height // 2 >= 2 and width_px // 2 >= 2:
        height, width_px, fits = height // 2, width_px // 2, fits + 1
    if levels is not None and not 0 <= levels <= fits:
        from bigmodel_cli.errors import UsageError

        raise UsageError(f"model.args.levels {levels}: images {input_shape[1]}x{input_shape[2]} take 0 to {fits}")
    return UNet(input_shape[0], width, min(fits, 3) if levels is None else levels)
