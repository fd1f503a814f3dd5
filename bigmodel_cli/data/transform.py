"""The one transform from raw inputs to model inputs, built from the manifest.

Training, eval, export and serve all call `normalizer(manifest)`, so the numbers a model
sees never depend on which command fed it. The exported ONNX graph contains it too, so
clients send raw pixel values (0..255) or raw feature values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Normalize(nn.Module):
    """`(x * scale - mean) / std`, computed as one multiply-add on float32."""

    def __init__(self, scale: float, mean: list[float], std: list[float], per: str):
        super().__init__()
        shape = (-1, 1, 1) if per == "channel" else (-1,)
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(shape)
        std_t = torch.tensor(std, dtype=torch.float32).reshape(shape)
        self.register_buffer("mul", (scale / std_t).float())
        self.register_buffer("add", (-mean_t / std_t).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) * self.mul + self.add


def normalizer(manifest: dict[str, Any]) -> Normalize:
    spec = manifest["preprocessing"]["normalize"]
    return Normalize(spec["scale"], spec["mean"], spec["std"], spec["per"])
