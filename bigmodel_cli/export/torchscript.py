"""`bigmodel export RUN --format torchscript`: a traced TorchScript module for libtorch deployments.

    bigmodel export runs/digits-cnn --format torchscript     # -> runs/digits-cnn/model.torchscript.pt

The module is the same as the ONNX graph (raw input -> normalisation -> network -> logits and
probabilities, or prediction), traced with `torch.jit.trace`, saved, loaded back and compared
with the eager model on validation rows exactly like the ONNX export (`verify.verify_module`); in
C++: `torch::jit::load("model.torchscript.pt").forward({input})`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from bigmodel_cli.errors import JobFailed, first_line


def save(module: nn.Module, sample: torch.Tensor, dest: Path) -> None:
    """Trace `module` on `sample` and save it to `dest`."""
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (sample,), check_trace=False)
            torch.jit.save(traced, str(dest))
    except Exception as e:
        raise JobFailed(f"TorchScript export failed: {first_line(e)}") from e


def load(path: Path) -> nn.Module:
    """The saved module back, on the CPU, in eval mode (what verification compares with eager)."""
    return torch.jit.load(str(path), map_location="cpu").eval()
