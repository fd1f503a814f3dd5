"""One predictor over a run's checkpoint (PyTorch) or an exported ONNX file: raw outputs for raw rows.

    model = load_predictor(run)                                   # checkpoints/best.pt
    model = load_predictor(run, checkpoint="last", device="cpu")
    model = load_predictor(run, onnx=Path("runs/digits-cnn/model.int8.onnx"))
    outputs = model.predict(x, batch_size=1024)                   # logits or predictions, float32 [N, K]
    model.source                                                  # {"checkpoint": path} or {"model": path}

Both take the rows as the prepared data stores them (the checkpoint predictor normalises with the run's
fitted normaliser, the ONNX graph carries it). `bigmodel eval` uses it; `bigmodel predict` (planned) will.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Predictor(Protocol):
    task: str
    source: dict[str, str]

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray: ...


class CheckpointPredictor:
    """A run's trained network (eval mode) on `device` (auto: the GPU when there is one)."""

    def __init__(self, run, checkpoint: str = "best", device: str = "auto"):
        from bigmodel_cli import devices
        from bigmodel_cli.run import load_network

        net, norm, self.path = load_network(run, checkpoint)
        self.device = devices.resolve(device)
        self.net, self.norm = net.to(self.device), norm.to(self.device)
        self.task = run.recipe.task
        self.source = {"checkpoint": str(self.path)}

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        from bigmodel_cli.inference.batch import predict

        return predict(self.net, self.norm, x, self.device, batch_size)


class OnnxPredictor:
    """An exported model checked against `run` (class names, input shape), in onnxruntime."""

    def __init__(self, run, path: Path, device: str = "auto", label: str | None = None):
        from bigmodel_cli.data import manifest as manifests
        from bigmodel_cli.inference.onnx_model import OnnxModel

        expect: dict[str, Any] = {"input_shape": manifests.input_shape(run.manifest)}
        if run.recipe.task == "classification":
            expect["class_names"] = run.manifest["classes"]
        self.model = OnnxModel(path, run.recipe.task, expect, device=device, label=label)
        self.path, self.task, self.metadata = Path(path), run.recipe.task, self.model.metadata
        self.source = {"model": str(path)}

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return self.model.predict(x, batch_size)


def load_predictor(run, checkpoint: str = "best", onnx: Path | None = None, device: str = "auto") -> Predictor:
    """The ONNX file when `onnx` is given, else the run's `checkpoint` (best | last | PATH)."""
    if onnx is not None:
        return OnnxPredictor(run, onnx, device)
    return CheckpointPredictor(run, checkpoint, device)
