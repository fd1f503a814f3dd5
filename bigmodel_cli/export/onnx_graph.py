"""PyTorch module -> ONNX graph: the dynamo exporter first, the TorchScript exporter where it cannot.

    exporter = to_onnx(module, sample, Path("model.onnx"), opset=18, task="classification")
    check(Path("model.onnx"))        # onnx.checker with full_check, JobFailed otherwise

The graph takes `input` (float32 with a dynamic batch, or int64 token ids with a dynamic batch and
length for text) and returns `logits` and `probabilities` (classification) or `prediction`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bigmodel_cli import console
from bigmodel_cli.errors import JobFailed, first_line
from bigmodel_cli.export.exporter import export_graph
from bigmodel_cli.export.module import output_names


def _dynamic_axes(text: bool, max_length: int):
    batch = {0: torch.export.Dim("batch", min=1)}
    if text:  # token ids: any number of texts, any length up to the trained one (positions are learned)
        batch[1] = torch.export.Dim("sequence", min=1, max=max_length)
    return {"input": batch}, {"input": {0: "batch", **({1: "sequence"} if text else {})}}


def _has_recurrence(module: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) for m in module.modules())


def to_onnx(module: nn.Module, sample: torch.Tensor, dest: Path, opset: int, task: str) -> str:
    """Write the graph of `module` to `dest`; returns the exporter used ('dynamo' or 'torchscript').

    Recurrent layers go straight to the TorchScript exporter: it maps them to the ONNX LSTM/GRU
    ops, while the dynamo exporter unrolls them over a fixed number of steps (no dynamic length).
    """
    names = output_names(task)
    text = not sample.is_floating_point()
    dynamic_shapes, dynamic_axes = _dynamic_axes(text, sample.shape[-1])
    recurrent = _has_recurrence(module)
    if recurrent:
        console.info("recurrent layers: using the TorchScript exporter (ONNX LSTM op, dynamic length)")
    return export_graph(module, (sample,), dest, opset, ["input"], names, dynamic_shapes,
                        {**dynamic_axes, **{n: {0: "batch"} for n in names}}, dynamo=not recurrent)


def check(path: Path) -> None:
    """onnx.checker with full_check (types and shapes inferred); JobFailed naming the first problem."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise JobFailed(f"exported model fails onnx.checker: {first_line(e)}") from e
