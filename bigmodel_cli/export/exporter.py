"""torch.onnx.export with a fallback: the dynamo exporter first, the TorchScript exporter where dynamo cannot.

    exporter = export_graph(module, (z, label), dest, 18, ["z", "label"], ["image"], dynamic_shapes, dynamic_axes)

`onnx_graph.to_onnx` (every supervised model), the generator export and the decoder export all write their graphs
here; it imports nothing of the package's export modules, so any of them can use it.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from bigmodel_cli import console
from bigmodel_cli.errors import JobFailed, first_line


def export_graph(module: nn.Module, args: tuple, dest: Path, opset: int, inputs: list[str], outputs: list[str],
                 dynamic_shapes, dynamic_axes: dict | None, dynamo: bool = True, what: str = "ONNX export") -> str:
    """torch.onnx.export with the dynamo exporter, then the TorchScript exporter where dynamo fails (or alone with
    `dynamo=False`; never with `dynamic_axes=None`); exporters' prints go to stderr. Returns the exporter used;
    JobFailed naming `what` when none can."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            try:
                program = torch.onnx.export(module, args, dynamo=True, input_names=inputs, output_names=outputs,
                                            opset_version=opset, dynamic_shapes=dynamic_shapes, verbose=False)
                program.save(str(dest), external_data=False)
                return "dynamo"
            except Exception as e:  # the dynamo exporter cannot take some models; the legacy one often can
                if dynamic_axes is None:
                    raise JobFailed(f"{what} failed: {first_line(e)}") from e
                console.warn(f"dynamo ONNX exporter failed ({first_line(e, 200)}); falling back to the TorchScript "
                             "exporter")
        try:
            torch.onnx.export(module, args, str(dest), dynamo=False, input_names=inputs, output_names=outputs,
                              opset_version=opset, dynamic_axes=dynamic_axes)
        except Exception as e:
            raise JobFailed(f"{what} failed with both exporters: {first_line(e)}") from e
        return "torchscript"
