"""torchvision's image classifiers, built untrained (weights come from `model.weights`, a local file),
with the first layers adapted to the data: the input channels, and for small images (<= 64 px,
e.g. 32x32 CIFAR or 8x8 digits) a stride-1 stem without the early max-pool, as in the CIFAR ResNets.
"""

from __future__ import annotations

from torch import nn

from bigmodel_cli.errors import UsageError
from bigmodel_cli.models.registry import register_model

SMALL = 64  # images up to this size keep their resolution in the stem


def _tvm():
    """torchvision.models, imported on first use: it costs seconds (torch._dynamo) that tabular runs never pay."""
    from torchvision import models

    return models


def _conv_like(conv: nn.Conv2d, in_channels: int, stride: int | None = None, kernel: int | None = None) -> nn.Conv2d:
    k = kernel or conv.kernel_size[0]
    return nn.Conv2d(in_channels, conv.out_channels, k, stride=stride or conv.stride[0], padding=k // 2,
                     bias=conv.bias is not None)


def _resnet(factory, num_classes: int, input_shape: list[int], zero_init_residual: bool = False) -> nn.Module:
    channels, height, width = input_shape
    net = factory(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    if min(height, width) <= SMALL:
        net.conv1 = _conv_like(net.conv1, channels, stride=1, kernel=3)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = _conv_like(net.conv1, channels)
    return net


@register_model("resnet18", kinds=("image",))
def resnet18(num_classes: int, input_shape: list[int], zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-18 (11M parameters); 3x3 stride-1 stem for small images."""
    return _resnet(_tvm().resnet18, num_classes, input_shape, zero_init_residual)


@register_model("resnet34", kinds=("image",))
def resnet34(num_classes: int, input_shape: list[int], zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-34 (21M parameters); 3x3 stride-1 stem for small images."""
    return _resnet(_tvm().resnet34, num_classes, input_shape, zero_init_residual)


@register_model("resnet50", kinds=("image",))
def resnet50(num_classes: int, input_shape: list[int], zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-50 (24M parameters); 3x3 stride-1 stem for small images."""
    return _resnet(_tvm().resnet50, num_classes, input_shape, zero_init_residual)


def _adapt_first_conv(block: nn.Sequential, input_shape: list[int]) -> None:
    """The first Conv2dNormActivation of MobileNet/EfficientNet: input channels, stride 1 when small."""
    channels, height, width = input_shape
    conv = block[0]
    small = min(height, width) <= SMALL
    if channels != conv.in_channels or small:
        block[0] = _conv_like(conv, channels, stride=1 if small else None)


@register_model("mobilenet_v3_small", kinds=("image",))
def mobilenet_v3_small(num_classes: int, input_shape: list[int], dropout: float = 0.2) -> nn.Module:
    """torchvision MobileNetV3-Small (1.5M parameters); stride-1 stem for small images."""
    net = _tvm().mobilenet_v3_small(weights=None, num_classes=num_classes, dropout=dropout)
    _adapt_first_conv(net.features[0], input_shape)
    return net


@register_model("efficientnet_b0", kinds=("image",))
def efficientnet_b0(num_classes: int, input_shape: list[int], dropout: float = 0.2) -> nn.Module:
    """torchvision EfficientNet-B0 (4M parameters); stride-1 stem for small images."""
    net = _tvm().efficientnet_b0(weights=None, num_classes=num_classes, dropout=dropout)
    _adapt_first_conv(net.features[0], input_shape)
    return net


def _patch_for(size: int) -> int:
    """ViT-B/16 uses 16-pixel patches; smaller images get the largest patch giving at least 8x8 tokens."""
    for patch in (16, 8, 4, 2, 1):
        if size % patch == 0 and size // patch >= 8:
            return patch
    return 1


@register_model("vit_b_16", kinds=("image",))
def vit_b_16(num_classes: int, input_shape: list[int], patch_size: int | None = None, num_layers: int = 12,
             num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0,
             attention_dropout: float = 0.0) -> nn.Module:
    """torchvision ViT-B/16 (86M parameters); square images, smaller patches for small images."""
    channels, height, width = input_shape
    if height != width:
        raise UsageError(f"vit_b_16 takes square images; the data is {height}x{width} (set data.image.size)")
    patch = patch_size or _patch_for(height)
    if height % patch:
        raise UsageError(f"vit_b_16: model.args.patch_size {patch} does not divide the image size {height}")
    net = _tvm().VisionTransformer(image_size=height, patch_size=patch, num_layers=num_layers, num_heads=num_heads,
                                hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout,
                                attention_dropout=attention_dropout, num_classes=num_classes)
    if channels != 3:
        net.conv_proj = nn.Conv2d(channels, hidden_dim, patch, stride=patch)
    return net
