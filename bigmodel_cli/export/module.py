"""What every export format traces: raw input -> the run's normalisation -> network -> named outputs.

    module, ckpt = exportable(run, "best")       # eval mode, export-friendly layers (portable)
    module(torch.from_numpy(x))                  # (logits, probabilities) or prediction

Shared by the ONNX and TorchScript formats, verification and `bigmodel benchmark`, so that all of
them run the same module: the graph users deploy takes raw rows as `prepare-data` stores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class Exportable(nn.Module):
    """Raw input -> normalisation -> network -> (logits, probabilities) or prediction."""

    def __init__(self, norm: nn.Module, net: nn.Module, task: str):
        super().__init__()
        self.norm, self.net, self.task = norm, net, task

    def forward(self, input: torch.Tensor):  # noqa: A002  (the ONNX input's name)
        out = self.net(self.norm(input))
        if self.task == "classification":
            return out, torch.softmax(out, dim=1)
        return out  # regression: prediction; language-modeling: next-token logits [N, L, vocab]


def output_names(task: str) -> list[str]:
    if task == "language-modeling":
        return ["logits"]
    return ["logits", "probabilities"] if task == "classification" else ["prediction"]


def input_dtype(manifest: dict[str, Any]):
    """int64 token ids for text; float32 raw features / pixel values for everything else."""
    return np.int64 if manifest["kind"] == "text" else np.float32


def exportable(run, checkpoint: str) -> tuple[Exportable, Path]:
    """The run's `checkpoint` (best | last | PATH) as an Exportable in eval mode, and the checkpoint's path."""
    from bigmodel_cli.export.portable import portable
    from bigmodel_cli.run import load_network

    net, norm, ckpt_path = load_network(run, checkpoint)
    if run.manifest["kind"] == "text" and not getattr(norm, "identity", False):
        norm = nn.Identity()  # token ids are never scaled
    if run.recipe.model.name == "hf":  # a pre-trained transformer: LoRA merged, export-friendly attention
        from bigmodel_cli.export.hf import exportable_network

        net = exportable_network(net)
    return Exportable(norm, portable(net), run.recipe.task).eval(), ckpt_path


def sample_input(run, rows: np.ndarray) -> torch.Tensor:
    """Two rows to trace with: validation rows repeated, or zeros of the input shape when there are none."""
    from bigmodel_cli.data import manifest as manifests

    if len(rows):
        return torch.from_numpy(np.resize(rows, (2, *rows.shape[1:])))
    return torch.from_numpy(np.zeros([2, *manifests.input_shape(run.manifest)], input_dtype(run.manifest)))
