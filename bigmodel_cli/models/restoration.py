"""`dncnn`: a residual denoising CNN (Zhang et al., 2017) for `task: restoration` (denoising, inpainting).

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
