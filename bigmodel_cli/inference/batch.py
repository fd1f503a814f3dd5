"""Batched PyTorch inference on prepared arrays (train's validation, eval), and softmax on numpy logits.

The split is read batch by batch from its memory-mapped `.npy`, so a split larger than memory is
evaluated with memory bounded by one batch plus the outputs.

    logits = predict(net, norm, x, torch.device("cpu"), batch_size=1024)
    proba = softmax(logits)
"""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def predict(net: torch.nn.Module, norm: torch.nn.Module, x: np.ndarray | torch.Tensor, device: torch.device,
            batch_size: int = 1024) -> np.ndarray:
    """Raw model outputs (logits, or predictions for regression) as float32 [N, outputs]."""
    was_training = net.training
    net.eval()
    outputs = []
    try:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            xb = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
            outputs.append(net(norm(xb.to(device, non_blocking=True))).float().cpu())
    finally:
        net.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
