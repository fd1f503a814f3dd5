"""`bigmodel export RUN --format torchscript`: a traced TorchScript module for libtorch deployments.

    bigmodel export runs/digits-cnn --format torchscript     # -> runs/digits-cnn/model.pt

The module is the same as the ONNX graph (raw input -> normalisation -> network -> logits and
probabilities, or prediction), traced with `torch.jit.trace`, saved, loaded back and compared
with the eager model on validation rows exactly like the ONNX export; in C++:
`torch::jit::load("model.pt").forward({input})`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli.errors import JobFailed


def save_and_verify(module: nn.Module, sample: torch.Tensor, dest: Path, rows: np.ndarray, task: str, cfg,
                    verify_model: bool = True) -> dict[str, Any] | None:
    """Trace `module` on `sample`, save it to `dest`, and (unless told not to) compare the saved copy with eager."""
    from bigmodel_cli.export.onnx_export import compare, reference

    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (sample,), check_trace=False)
            torch.jit.save(traced, str(dest))
    except Exception as e:
        raise JobFailed(f"TorchScript export failed: {str(e).strip().splitlines()[0]}") from None
    if not verify_model:
        return None
    loaded = torch.jit.load(str(dest), map_location="cpu").eval()
    got, want = [], []
    for start in range(0, len(rows), 256):
        batch = np.ascontiguousarray(rows[start : start + 256])
        got.append(reference(loaded, batch))
        want.append(reference(module, batch))
    if not got:
        return None
    return compare(np.concatenate(got), np.concatenate(want), task, cfg)
