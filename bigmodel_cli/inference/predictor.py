"""One predictor over a run's checkpoint (PyTorch) or an exported ONNX file: raw outputs for model inputs.

    model = load_predictor(run)                                   # checkpoints/best.pt
    model = load_predictor(run, checkpoint="last", device="cpu")
    model = load_predictor(run, onnx=Path("runs/digits-cnn/model.onnx"))
    model = open_model(Path("runs/digits-cnn"))                   # a run directory: its checkpoint
    model = open_model(Path("dist/model.onnx"), threads=4)        # an ONNX file alone: its metadata says the rest
    outputs = model.predict(x, batch_size=1024)                   # logits or predictions, float32 [N, K]
    model.inputs.one(png_bytes)                                   # raw input -> model input (data.raw_inputs)
    model.source                                                  # {"checkpoint": path} or {"model": path}

Both take the rows as the prepared data stores them (the checkpoint predictor normalises with the run's
fitted normaliser, the ONNX graph carries it); `inputs` makes such rows from raw ones with the preprocessing
the model was trained with: the run's `preprocessing.json`, or the ONNX file's metadata. `bigmodel eval` and
`bigmodel predict` use them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bigmodel_cli.data.raw_inputs import InputSpec
from bigmodel_cli.errors import UsageError


class Predictor(Protocol):
    task: str
    source: dict[str, str]
    inputs: InputSpec

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray: ...


class CheckpointPredictor:
    """A run's trained network (eval mode) on `device` (auto: the GPU when there is one)."""

    def __init__(self, run, checkpoint: str = "best", device: str = "auto", threads: int = 0):
        import torch

        from bigmodel_cli import devices
        from bigmodel_cli.run import load_network

        if threads > 0:
            torch.set_num_threads(threads)
        net, norm, self.path = load_network(run, checkpoint)
        self.device = devices.resolve(device)
        self.net, self.norm = net.to(self.device), norm.to(self.device)
        self.task, self.run = run.recipe.task, run
        self.source = {"checkpoint": str(self.path)}

    @functools.cached_property
    def inputs(self) -> InputSpec:
        return InputSpec.from_manifest(self.run.manifest, str(self.run.path))

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        from bigmodel_cli.inference.batch import predict

        return predict(self.net, self.norm, x, self.device, batch_size)


class OnnxPredictor:
    """An exported model in onnxruntime; with `run`, checked against it (class names, input shape)."""

    def __init__(self, run, path: Path, device: str = "auto", label: str | None = None, threads: int = 0,
                 spinning: bool | None = None):
        from bigmodel_cli.data import manifest as manifests
        from bigmodel_cli.inference.onnx_model import OnnxModel

        expect: dict[str, Any] = {}
        if run is not None:
            expect["input_shape"] = manifests.input_shape(run.manifest)
            if run.recipe.task == "classification":
                expect["class_names"] = run.manifest["classes"]
        task = run.recipe.task if run is not None else None
        self.model = OnnxModel(path, task, expect, device=device, label=label, threads=threads, spinning=spinning)
        self.path, self.task, self.metadata = Path(path), self.model.task, self.model.metadata
        self.source = {"model": str(path)}
        self.run, self.label = run, label or str(path)

    @functools.cached_property
    def inputs(self) -> InputSpec:
        return _onnx_inputs(self.metadata, self.run, self.label)

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return self.model.predict(x, batch_size)


def load_predictor(run, checkpoint: str = "best", onnx: Path | None = None, device: str = "auto") -> Predictor:
    """The ONNX file when `onnx` is given, else the run's `checkpoint` (best | last | PATH)."""
    if onnx is not None:
        return OnnxPredictor(run, onnx, device)
    return CheckpointPredictor(run, checkpoint, device)


def open_model(path: Path, checkpoint: str = "best", device: str = "auto", threads: int = 0,
               spinning: bool | None = None) -> Predictor:
    """A run directory (its `checkpoint`) or an ONNX file (its run, when it lies in one, is only a fallback for
    metadata an older export did not write). `spinning`: whether onnxruntime's idle threads busy-wait (None: its
    default, on)."""
    from bigmodel_cli.run import load_run

    path = Path(path)
    if path.is_dir():
        return CheckpointPredictor(load_run(path), checkpoint, device, threads)
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{path}: give a run directory (bigmodel train) or an exported .onnx file (bigmodel export)"
                         if path.exists() else f"{path}: no such run directory or model file")
    if device == "auto":  # decided without importing torch (seconds) just to ask it whether there is a GPU
        device = "cuda" if gpu_count() else "cpu"
    return OnnxPredictor(None, path, device, label=str(path), threads=threads, spinning=spinning)


def gpu_count() -> int:
    return len(gpu_ids())


def gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (else as nvidia-smi lists them); no
    torch import."""
    import os
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode:
        return []
    return [str(i) for i, line in enumerate(line for line in listed.stdout.splitlines() if line.startswith("GPU "))]


def input_spec(path: Path) -> tuple[InputSpec, str]:
    """What the model at `path` (run directory or ONNX file) takes, and its task, without loading its weights."""
    from bigmodel_cli.run import load_run

    path = Path(path)
    if path.is_dir():
        run = load_run(path)
        return InputSpec.from_manifest(run.manifest, str(path)), run.recipe.task
    if path.suffix.lower() != ".onnx" or not path.is_file():
        open_model(path)  # raises the right one-line error
    from bigmodel_cli.export import metadata

    meta = metadata.read(path)
    if meta.task not in ("classification", "regression"):
        raise UsageError(f"{path}: metadata task {meta.task!r} is not classification or regression; was it "
                         f"exported by `bigmodel export`?")
    return _onnx_inputs(meta, None, str(path)), meta.task


def _onnx_inputs(meta, run, where: str) -> InputSpec:
    """The model's own metadata; for an older table export without `table_preprocessing`, the run it lies in."""
    if meta.input_kind == "tabular" and getattr(meta, "table_preprocessing", None) is None:
        from bigmodel_cli.run import RUN_DATA, load_run

        if run is None and (Path(where).parent / RUN_DATA).is_file():
            run = load_run(Path(where).parent)
        if run is not None:
            return InputSpec.from_manifest(run.manifest, where)
    return InputSpec.from_metadata(meta, where)
