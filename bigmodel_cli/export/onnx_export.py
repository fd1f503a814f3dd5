"""`bigmodel export`: ONNX with the input normalisation and softmax inside, verified before it is kept.

    bigmodel export runs/digits-cnn                      # -> runs/digits-cnn/model.onnx, export.json

The graph takes raw inputs (`input`, float32, dynamic batch) and returns `logits` and
`probabilities` (classification) or `prediction` (regression). `onnx.checker` (full) and
a comparison of onnxruntime against PyTorch on validation rows must pass, or the command
exits 1 and no model file is left behind.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli import __version__, atomic, console
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.errors import JobFailed, UsageError
from bigmodel_cli.run import load_network, load_run


class Exportable(nn.Module):
    """Raw input -> normalisation -> network -> (logits, probabilities) or prediction."""

    def __init__(self, norm: nn.Module, net: nn.Module, task: str):
        super().__init__()
        self.norm, self.net, self.task = norm, net, task

    def forward(self, input: torch.Tensor):  # noqa: A002  (the ONNX input's name)
        out = self.net(self.norm(input))
        if self.task == "classification":
            return out, torch.softmax(out, dim=1)
        return out


def output_names(task: str) -> list[str]:
    return ["logits", "probabilities"] if task == "classification" else ["prediction"]


def _export(module: nn.Module, sample: torch.Tensor, dest: Path, opset: int, task: str) -> str:
    """Dynamo exporter first; the TorchScript exporter (with a warning) for models it cannot take."""
    names = output_names(task)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (sample,), dynamo=True, input_names=["input"], output_names=names, opset_version=opset,
                dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1)}}, verbose=False,
            )
            program.save(str(dest), external_data=False)
            return "dynamo"
        except Exception as e:  # the dynamo exporter cannot take some models; the legacy one often can
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        console.warn(f"dynamo ONNX exporter failed ({reason[:200]}); falling back to the TorchScript exporter")
        try:
            torch.onnx.export(
                module, (sample,), str(dest), dynamo=False, input_names=["input"], output_names=names,
                opset_version=opset, dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            )
        except Exception as e:
            raise JobFailed(f"ONNX export failed with both exporters: {str(e).strip().splitlines()[0]}") from None
        return "torchscript"


def _add_metadata(path: Path, run, exporter: str, opset: int) -> None:
    import onnx

    model = onnx.load(str(path))
    manifest = run.manifest
    props = {
        "bigmodel_version": __version__,
        "task": run.recipe.task,
        "class_names": json.dumps(manifest["classes"]),
        "input_shape": json.dumps(manifests.input_shape(manifest)),
        "recipe": run.recipe.name,
        "normalization": json.dumps(manifest["preprocessing"]["normalize"]),
        "input_kind": manifest["kind"],
        "exporter": exporter,
    }
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "bigmodel-cli", __version__
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise JobFailed(f"exported model fails onnx.checker: {str(e).splitlines()[0]}") from None


def verify(path: Path, module: nn.Module, x: np.ndarray, task: str, cfg) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on the same raw rows: errors and prediction agreement."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = output_names(task)
    got, want = [], []
    for start in range(0, len(x), 256):
        batch = np.array(x[start : start + 256], dtype=np.float32)
        got.append(session.run(names, {"input": batch})[-1])
        with torch.inference_mode():
            ref = module(torch.from_numpy(batch))
        want.append((ref[-1] if isinstance(ref, tuple) else ref).numpy())
    got_a, want_a = np.concatenate(got), np.concatenate(want)
    diff = np.abs(got_a - want_a)
    report = {
        "samples": int(len(x)),
        "compared": names[-1],
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float((diff / np.maximum(np.abs(want_a), 1e-6)).max()) if diff.size else 0.0,
        "within_tolerance": bool(np.allclose(got_a, want_a, atol=cfg.atol, rtol=cfg.rtol)),
        "atol": cfg.atol,
        "rtol": cfg.rtol,
    }
    if task == "classification":
        report["agreement"] = float((got_a.argmax(1) == want_a.argmax(1)).mean()) if len(x) else 1.0
        report["min_agreement"] = cfg.min_agreement
    report["passed"] = report["within_tolerance"] and report.get("agreement", 1.0) >= cfg.min_agreement
    return report


def export_run(run_dir: str | Path, checkpoint: str = "best", out: Path | None = None, quantize: str | None = None,
               opset: int | None = None, verify_model: bool = True) -> dict[str, Any]:
    run = load_run(run_dir)
    recipe = run.recipe
    quantize = quantize or recipe.export.quantize
    if quantize != "none":
        raise UsageError(f"--quantize {quantize}: only 'none' is available in this version")
    opset = opset or recipe.export.opset
    if not 13 <= opset <= 23:
        raise UsageError(f"--opset {opset}: expected an ONNX opset between 13 and 23")
    out = Path(out) if out else run.path / "model.onnx"
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")

    net, norm, ckpt_path = load_network(run, checkpoint)
    module = Exportable(norm, net, recipe.task).eval()
    x_val, _ = manifests.load_split(recipe.prepared_dir, "val")
    if len(x_val) == 0:
        x_val, _ = manifests.load_split(recipe.prepared_dir, "train")
    rows = np.array(x_val[: recipe.export.verify.samples], dtype=np.float32)
    sample = torch.from_numpy(np.array(rows[:2]) if len(rows) >= 2 else np.zeros([2, *x_val.shape[1:]], np.float32))

    started = time.perf_counter()
    console.info(f"exporting {ckpt_path} to ONNX (opset {opset})")
    with atomic.atomic_path(out) as tmp:
        exporter = _export(module, sample, tmp, opset, recipe.task)
        _add_metadata(tmp, run, exporter, opset)
        check = verify(tmp, module, rows, recipe.task, recipe.export.verify) if verify_model else None
        if check is not None and not check["passed"]:
            raise JobFailed(
                f"export verification failed: onnxruntime differs from PyTorch (max abs error "
                f"{check['max_abs_error']:.3g}, agreement {check.get('agreement', 1.0):.4f}); no model written"
            )
    report = {
        "model": str(out),
        "checkpoint": str(ckpt_path),
        "exporter": exporter,
        "opset": opset,
        "quantize": quantize,
        "inputs": {"input": {"dtype": "float32", "shape": [-1, *manifests.input_shape(run.manifest)]}},
        "outputs": output_names(recipe.task),
        "size_bytes": out.stat().st_size,
        "onnx_checker": "passed (full_check)",
        "verification": check,
        "time_s": time.perf_counter() - started,
    }
    atomic.write_json(run.path / "export.json", report)
    if check:
        extra = f", agreement {check['agreement']:.4f}" if "agreement" in check else ""
        console.info(f"verified on {check['samples']} rows: max abs error {check['max_abs_error']:.2e}{extra}")
    console.info(f"wrote {out} ({report['size_bytes'] / 1024:.0f} KiB, {exporter} exporter)")
    return report
