"""The one transform from raw inputs to model inputs, built from the manifest.

    x = apply(manifest, rows_or_images_or_texts)    # fitted preprocessing (numpy), as prepare-data did
    net = nn.Sequential(normalizer(manifest), model) # the affine part, inside the model
    augment = augmentation(manifest)                 # train only: random crops/flips/... per image

Training, eval, export and serve all call `normalizer(manifest)`, so the numbers a model
sees never depend on which command fed it. The exported ONNX graph contains it too, so
clients send raw pixel values (0..255) or raw feature values. `apply` (from `preprocess`,
no torch needed) is what prepare-data used for every split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bigmodel_cli.data.preprocess import apply

__all__ = ["Augment", "Normalize", "apply", "augmentation", "normalizer"]


class Normalize(nn.Module):
    """`(x * scale - mean) / std`, computed as one multiply-add on float32; identity for `per: none` (token ids)."""

    def __init__(self, scale: float, mean: list[float], std: list[float], per: str):
        super().__init__()
        self.identity = per == "none"
        shape = (-1, 1, 1) if per == "channel" else (-1,)
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(shape)
        std_t = torch.tensor(std, dtype=torch.float32).reshape(shape)
        self.register_buffer("mul", (scale / std_t).float())
        self.register_buffer("add", (-mean_t / std_t).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return x.to(torch.float32) * self.mul + self.add


def normalizer(manifest: dict[str, Any]) -> Normalize:
    spec = manifest["preprocessing"]["normalize"]
    return Normalize(spec["scale"], spec["mean"], spec["std"], spec["per"])


class Augment:
    """Random augmentation of a uint8 batch [N, C, H, W], with its own random parameters for every image.

    torchvision.transforms.v2 draws one set of parameters per call, so a whole batch would be
    flipped together; this applies the transform image by image and keeps dtype and shape.
    """

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in batch])


def augmentation(manifest: dict[str, Any]) -> Augment | None:
    """The recipe's `data.augment` as torchvision.transforms.v2, or None when none was declared."""
    spec = manifest["preprocessing"].get("augment")
    if not spec:
        return None
    from torchvision.transforms import v2

    _, height, width = manifest["input_shape"]
    steps: list[Any] = []
    if spec.get("crop_padding"):
        steps.append(v2.RandomCrop((height, width), padding=spec["crop_padding"], padding_mode="reflect"))
    if spec.get("horizontal_flip"):
        steps.append(v2.RandomHorizontalFlip(spec["horizontal_flip"]))
    if spec.get("vertical_flip"):
        steps.append(v2.RandomVerticalFlip(spec["vertical_flip"]))
    if spec.get("rotation"):
        steps.append(v2.RandomRotation(spec["rotation"]))
    jitter = spec.get("color_jitter")
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter.get("brightness", 0.0), contrast=jitter.get("contrast", 0.0),
                                    saturation=jitter.get("saturation", 0.0), hue=jitter.get("hue", 0.0)))
    if spec.get("grayscale"):
        steps.append(v2.RandomGrayscale(spec["grayscale"]))
    return Augment(v2.Compose(steps))
