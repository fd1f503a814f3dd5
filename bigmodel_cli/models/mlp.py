"""`mlp`: a multilayer perceptron for tabular features [N, F]."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bigmodel_cli.models.registry import register_model


@register_model("mlp", kinds=("tabular",))
def mlp(num_classes: int, input_shape: list[int], hidden: Sequence[int] = (128, 64), dropout: float = 0.0,
        norm: bool = False) -> nn.Module:
    """Multilayer perceptron for tables: Linear -> (LayerNorm) -> ReLU -> Dropout per hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 1
    for d in input_shape:
        width *= d
    for h in hidden:
        layers += [nn.Linear(width, h)]
        if norm:
            layers += [nn.LayerNorm(h)]
        layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
