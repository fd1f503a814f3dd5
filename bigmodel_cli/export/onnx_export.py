"""`bigmodel export`: ONNX with the input normalisation and softmax inside, verified before it is kept.

    bigmodel export runs/digits-cnn                      # -> runs/digits-cnn/model.onnx, export.json
    bigmodel export runs/digits-cnn --quantize int8      # static QDQ int8, guarded by the accuracy drop

The graph takes raw inputs (`input`: float32 with a dynamic batch, or int64 token ids with a
dynamic batch and length for text) and returns `logits` and `probabilities` (classification)
or `prediction` (regression). `onnx.checker` (full) and a comparison of onnxruntime against
PyTorch on validation rows must pass, or the command exits 1 and no model file is left
behind. fp16/int8 live in `quantize`, TorchScript in `torchscript`."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli import __version__, atomic, console
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.errors import JobFailed, UsageError
from bigmodel_cli.export.portable import portable
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


def input_dtype(manifest: dict[str, Any]):
    """int64 token ids for text; float32 raw features / pixel values for everything else."""
    return np.int64 if manifest["kind"] == "text" else np.float32


def _dynamic_axes(text: bool, max_length: int):
    batch = {0: torch.export.Dim("batch", min=1)}
    if text:  # token ids: any number of texts, any length up to the trained one (positions are learned)
        batch[1] = torch.export.Dim("sequence", min=1, max=max_length)
    return {"input": batch}, {"input": {0: "batch", **({1: "sequence"} if text else {})}}


def _has_recurrence(module: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) for m in module.modules())


def _export(module: nn.Module, sample: torch.Tensor, dest: Path, opset: int, task: str) -> str:
    """Dynamo exporter first; the TorchScript exporter (with a warning) for models it cannot take.

    Recurrent layers go straight to the TorchScript exporter: it maps them to the ONNX LSTM/GRU
    ops, while the dynamo exporter unrolls them over a fixed number of steps (no dynamic length).
    """
    names = output_names(task)
    text = not sample.is_floating_point()
    dynamic_shapes, dynamic_axes = _dynamic_axes(text, sample.shape[-1])
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _has_recurrence(module):
            console.info("recurrent layers: using the TorchScript exporter (ONNX LSTM op, dynamic length)")
        else:
            try:
                program = torch.onnx.export(
                    module, (sample,), dynamo=True, input_names=["input"], output_names=names, opset_version=opset,
                    dynamic_shapes=dynamic_shapes, verbose=False,
                )
                program.save(str(dest), external_data=False)
                return "dynamo"
            except Exception as e:  # the dynamo exporter cannot take some models; the legacy one often can
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            console.warn(f"dynamo ONNX exporter failed ({reason[:200]}); falling back to the TorchScript exporter")
        try:
            torch.onnx.export(
                module, (sample,), str(dest), dynamo=False, input_names=["input"], output_names=names,
                opset_version=opset, dynamic_axes={**dynamic_axes, **{n: {0: "batch"} for n in names}},
            )
        except Exception as e:
            raise JobFailed(f"ONNX export failed with both exporters: {str(e).strip().splitlines()[0]}") from None
        return "torchscript"


def _add_metadata(path: Path, run, exporter: str, opset: int, quantize: str = "none") -> None:
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
        "quantize": quantize,
        **({"text_preprocessing": json.dumps(manifest["preprocessing"]["text"])}  # what serve tokenises with
           if manifest["kind"] == "text" else {}),
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


def compare(got: np.ndarray, want: np.ndarray, task: str, cfg) -> dict[str, Any]:
    """Max abs/rel error, tolerance and prediction agreement of `got` (exported) against `want` (PyTorch)."""
    diff = np.abs(got - want)
    report = {
        "samples": int(len(want)),
        "compared": output_names(task)[-1],
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float((diff / np.maximum(np.abs(want), 1e-6)).max()) if diff.size else 0.0,
        "within_tolerance": bool(np.allclose(got, want, atol=cfg.atol, rtol=cfg.rtol)),
        "atol": cfg.atol,
        "rtol": cfg.rtol,
    }
    if task == "classification":
        report["agreement"] = float((got.argmax(1) == want.argmax(1)).mean()) if len(want) else 1.0
        report["min_agreement"] = cfg.min_agreement
    report["passed"] = report["within_tolerance"] and report.get("agreement", 1.0) >= cfg.min_agreement
    return report


def reference(module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """PyTorch's last output (probabilities or prediction) for one batch of raw rows."""
    with torch.inference_mode():
        ref = module(torch.from_numpy(np.array(batch)))  # a copy: memory-mapped rows are read-only
    return (ref[-1] if isinstance(ref, tuple) else ref).numpy()


def verify(path: Path, module: nn.Module, x: np.ndarray, task: str, cfg) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on the same raw rows: errors and prediction agreement."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = output_names(task)
    got, want = [], []
    for start in range(0, len(x), 256):
        batch = np.ascontiguousarray(x[start : start + 256])
        got.append(np.asarray(session.run(names, {"input": batch})[-1], dtype=np.float32))
        want.append(reference(module, batch))
    return compare(np.concatenate(got), np.concatenate(want), task, cfg)


@dataclass
class Tolerance:
    atol: float
    rtol: float
    min_agreement: float


def tolerance(cfg, quantize: str) -> Tolerance:
    """export.verify's tolerances; the looser fp16_* ones for fp16 models."""
    if quantize == "fp16":
        return Tolerance(cfg.fp16_atol, cfg.fp16_rtol, cfg.fp16_min_agreement)
    return Tolerance(cfg.atol, cfg.rtol, cfg.min_agreement)


QUANTIZE = ("none", "fp16", "int8")
FORMATS = ("onnx", "torchscript")


def _check_request(run, out, quantize: str, fmt: str, opset: int, verify_samples: int | None) -> Path:
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZE)}")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "torchscript" and quantize != "none":
        raise UsageError(f"--quantize {quantize}: only ONNX models are quantised; drop it for --format torchscript")
    if not 13 <= opset <= 23:
        raise UsageError(f"--opset {opset}: expected an ONNX opset between 13 and 23")
    if verify_samples is not None and verify_samples < 1:
        raise UsageError(f"--verify-samples {verify_samples}: expected 1 or more rows")
    out = Path(out) if out else run.path / ("model.pt" if fmt == "torchscript" else "model.onnx")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    return out


def exportable(run, checkpoint: str) -> tuple[nn.Module, Path]:
    """Raw input -> normalisation -> network (export-friendly layers) -> outputs, in eval mode."""
    net, norm, ckpt_path = load_network(run, checkpoint)
    if run.manifest["kind"] == "text" and not getattr(norm, "identity", False):
        norm = nn.Identity()  # token ids are never scaled
    return Exportable(norm, portable(net), run.recipe.task).eval(), ckpt_path


def validation_rows(run, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The validation split (the train split when there is none) as the model's input dtype."""
    prepared = run.recipe.prepared_dir
    x, y = manifests.load_split(prepared, "val")
    if len(x) == 0:
        x, y = manifests.load_split(prepared, "train")
    limit = len(x) if limit is None else limit
    return np.ascontiguousarray(x[:limit], dtype=input_dtype(run.manifest)), np.asarray(y[:limit])


def _calibration(run, quantize: str) -> np.ndarray | None:
    """Train rows for int8 calibration (checked before anything is exported)."""
    from bigmodel_cli.export import quantize as q

    if quantize != "int8":
        return None
    folder = Path(run.recipe.prepared_dir) / "train"
    try:
        x_train, _ = manifests.load_split(run.recipe.prepared_dir, "train")
    except UsageError as e:
        raise UsageError(f"--quantize int8 calibrates on the prepared train split, which is missing: {e}") from None
    if len(x_train) == 0:
        raise UsageError(f"--quantize int8: {folder} has no rows to calibrate on; rerun prepare-data")
    return q.calibration_rows(x_train, run.recipe.export.calibration_batches, run.recipe.seed,
                              input_dtype(run.manifest))


def export_run(run_dir: str | Path, checkpoint: str = "best", out: Path | None = None, quantize: str | None = None,
               opset: int | None = None, verify_model: bool = True, fmt: str | None = None,
               verify_samples: int | None = None) -> dict[str, Any]:
    """Export, check and verify a run's model; returns (and writes to export.json) the report.

        export_run("runs/digits-cnn", quantize="int8")     # bigmodel export runs/digits-cnn --quantize int8
    """
    run = load_run(run_dir)
    recipe = run.recipe
    quantize, fmt = quantize or recipe.export.quantize, fmt or recipe.export.format
    opset = opset or recipe.export.opset
    out = _check_request(run, out, quantize, fmt, opset, verify_samples)
    module, ckpt_path = exportable(run, checkpoint)
    rows, labels = validation_rows(run)
    calibration = _calibration(run, quantize)
    verify_rows = rows[: verify_samples or recipe.export.verify.samples]
    sample = torch.from_numpy(np.resize(rows, (2, *rows.shape[1:])) if len(rows) else
                              np.zeros([2, *manifests.input_shape(run.manifest)], input_dtype(run.manifest)))
    started = time.perf_counter()
    console.info(f"exporting {ckpt_path} to {fmt}" + (f" (opset {opset})" if fmt == "onnx" else ""))
    with atomic.atomic_path(out) as tmp:
        if fmt == "torchscript":
            from bigmodel_cli.export import torchscript

            exporter, extra = "torch.jit.trace", {}
            check = torchscript.save_and_verify(module, sample, tmp, verify_rows, recipe.task,
                                                tolerance(recipe.export.verify, "none"), verify_model)
        else:
            exporter, check, extra = _onnx(run, module, sample, tmp, opset, quantize, verify_rows,
                                           (rows, labels, calibration), verify_model)
        if check is not None and not check["passed"]:
            raise JobFailed(
                f"export verification failed: the exported model differs from PyTorch (max abs error "
                f"{check['max_abs_error']:.3g}, agreement {check.get('agreement', 1.0):.4f}); no model written"
            )
    report = _report(run, out, ckpt_path, exporter, opset, quantize, fmt, check, extra, started)
    atomic.write_json(run.path / "export.json", report)
    _summarise(report)
    return report


def _onnx(run, module, sample, tmp: Path, opset: int, quantize: str, verify_rows, data, verify_model: bool):
    """ONNX export into `tmp`: fp32 directly, or fp32 in a scratch folder and then fp16/int8 into `tmp`."""
    import tempfile

    from bigmodel_cli.export import quantize as q

    task, cfg = run.recipe.task, run.recipe.export
    with tempfile.TemporaryDirectory(prefix="bigmodel-export-") as work:
        fp32 = tmp if quantize == "none" else Path(work) / "fp32.onnx"
        exporter = _export(module, sample, fp32, opset, task)
        _add_metadata(fp32, run, exporter, opset)
        if quantize == "none":
            return exporter, (verify(tmp, module, verify_rows, task, cfg.verify) if verify_model else None), {}
        if quantize == "fp16":
            q.to_fp16(fp32, tmp)
            _add_metadata(tmp, run, exporter, opset, quantize)
            check = verify(tmp, module, verify_rows, task, tolerance(cfg.verify, "fp16")) if verify_model else None
            return exporter, check, {"fp16": {"io_types": "float32 (weights and activations float16)"}}
        return exporter, *_int8(run, module, fp32, tmp, opset, exporter, verify_rows, data, verify_model)


def _int8(run, module, fp32: Path, tmp: Path, opset: int, exporter: str, verify_rows, data, verify_model: bool):
    """Quantise, compare the main metric with fp32 on the validation split, and warn when int8 is not faster."""
    from bigmodel_cli.export import quantize as q

    task, cfg = run.recipe.task, run.recipe.export
    rows, labels, calibration = data
    method = q.int8_method(run.recipe.model.name, run.manifest["kind"])
    console.info(f"int8: {method} quantisation" + (f", calibrated on {len(calibration)} train rows"
                                                    if method == "static" else ""))
    q.to_int8(fp32, tmp, calibration, method)
    _add_metadata(tmp, run, exporter, opset, "int8")
    metric = q.compare_metric(fp32, tmp, rows, labels, task, rows.dtype)
    metric["max_drop_points"] = cfg.max_metric_drop
    if metric["drop_points"] > cfg.max_metric_drop:
        raise JobFailed(
            f"int8 {metric['metric']} {metric['quantized']:.4f} is {metric['drop_points']:.2f} points below fp32 "
            f"{metric['fp32']:.4f} on {metric['rows']} validation rows (export.max_metric_drop "
            f"{cfg.max_metric_drop}); no model written; try --quantize fp16 or more export.calibration_batches")
    speed = q.speedup(fp32, tmp, rows if len(rows) else calibration, rows.dtype)
    if speed < 1.0:
        console.warn(f"int8 is not faster than fp32 for this model on this machine ({speed:.2f}x at batch 64); "
                     f"consider --quantize none or fp16")
    check = None
    if verify_model:  # informational: int8 is judged by the metric drop, not by element-wise tolerance
        check = verify(tmp, module, verify_rows, task, Tolerance(1e9, 0.0, 0.0))
        check["passed"] = True
    int8 = {"method": method, "calibration_rows": int(len(calibration)) if method == "static" else 0,
            "metric": metric, "speedup_vs_fp32_batch64": speed}
    return check, {"int8": int8}


def _report(run, out: Path, ckpt_path, exporter, opset, quantize, fmt, check, extra, started) -> dict[str, Any]:
    manifest = run.manifest
    dtype = "int64" if manifest["kind"] == "text" else "float32"
    shape = [-1, -1] if manifest["kind"] == "text" else [-1, *manifests.input_shape(manifest)]
    return {
        "model": str(out),
        "format": fmt,
        "checkpoint": str(ckpt_path),
        "exporter": exporter,
        "opset": opset if fmt == "onnx" else None,
        "quantize": quantize,
        "inputs": {"input": {"dtype": dtype, "shape": shape}},
        "outputs": output_names(run.recipe.task),
        "size_bytes": out.stat().st_size,
        "onnx_checker": "passed (full_check)" if fmt == "onnx" else None,
        "verification": check,
        **extra,
        "time_s": time.perf_counter() - started,
    }


def _summarise(report: dict[str, Any]) -> None:
    check = report["verification"]
    if check:
        extra = f", agreement {check['agreement']:.4f}" if "agreement" in check else ""
        console.info(f"verified on {check['samples']} rows: max abs error {check['max_abs_error']:.2e}{extra}")
    if "int8" in report:
        m = report["int8"]["metric"]
        console.info(f"int8 {m['metric']} {m['quantized']:.4f} vs fp32 {m['fp32']:.4f} "
                     f"(drop {m['drop_points']:.2f} points), {report['int8']['speedup_vs_fp32_batch64']:.1f}x "
                     f"fp32 speed at batch 64")
    console.info(f"wrote {report['model']} ({report['size_bytes'] / 1024:.0f} KiB, {report['exporter']} exporter)")
