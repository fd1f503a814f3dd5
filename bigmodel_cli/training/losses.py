"""The loss of a supervised task, for the loss name `models.build.resolve_loss` picked from `train.loss` (auto:
BCE when binary, cross-entropy otherwise, MSE for regression), with class weights for imbalance, label
smoothing and an optional L1 penalty.

Binary BCE trains a one-logit head (`models.build.BinaryLogits`) that everything else sees as two
logits `[0, z]`; the loss reads `z` back from them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bigmodel_cli.errors import UsageError


def class_weights(cfg, y_train: np.ndarray, n_classes: int) -> torch.Tensor | None:
    """`auto`: n / (k * count_c) from the train labels; a list: as given (one per class)."""
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "auto":
        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_classes).astype(np.float64)
        weights = len(y_train) / (n_classes * np.maximum(counts, 1.0))
        return torch.tensor(weights, dtype=torch.float32)
    if len(cfg.class_weights) != n_classes:
        raise UsageError(f"train.class_weights has {len(cfg.class_weights)} values; the data has {n_classes} classes")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


class TaskLoss(nn.Module):
    """`loss(outputs, targets)` for the model's outputs as the rest of the tool sees them."""

    def __init__(self, name: str, cfg, weights: torch.Tensor | None):
        super().__init__()
        self.name = name
        if name == "cross_entropy":
            self.fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        elif name == "bce":
            pos_weight = (weights[1] / weights[0]).reshape(1) if weights is not None else None
            self.fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        elif name == "mse":
            self.fn = nn.MSELoss()
        elif name == "mae":
            self.fn = nn.L1Loss()
        else:
            self.fn = nn.HuberLoss(delta=cfg.huber_delta)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if self.name == "cross_entropy":
            return self.fn(outputs, targets)
        if self.name == "bce":
            return self.fn(outputs[:, 1] - outputs[:, 0], targets.float())
        return self.fn(outputs[:, 0], targets.float())


def l1_penalty(net: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (biases and norms excluded)."""
    return sum(p.abs().sum() for p in net.parameters() if p.requires_grad and p.ndim > 1)
