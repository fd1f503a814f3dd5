"""Is the exported model the trained one? Outputs compared with PyTorch on the same validation rows.

    rows, labels = validation_rows(run, limit=512)
    report = verify_onnx(Path("model.onnx"), module, rows, "classification", tolerance(cfg.export.verify, "none"))
    report["passed"]        # within atol/rtol on probabilities (or predictions) and enough equal predictions
    drop = metric_drop(Path("fp32.onnx"), Path("int8.onnx"), rows, labels, "classification")

Every export format (ONNX fp32/fp16/int8, TorchScript) is judged here, so the formats never import
each other: fp32 and fp16 by element-wise tolerance and prediction agreement (fp16 with the looser
`export.verify.fp16_*` tolerances), int8 by the drop of the main metric (accuracy or r2) against the
fp32 graph, TorchScript like fp32 against the eager module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli.export.module import input_dtype, output_names

BATCH = 256  # rows per comparison batch


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


INFORMATIONAL = Tolerance(1e9, 0.0, 0.0)  # int8: errors reported, judged by the metric drop instead


def compare(got: np.ndarray, want: np.ndarray, task: str, tol: Tolerance) -> dict[str, Any]:
    """Max abs/rel error, tolerance and prediction agreement of `got` (exported) against `want` (PyTorch)."""
    diff = np.abs(got - want)
    report = {
        "samples": int(len(want)),
        "compared": output_names(task)[-1],
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float((diff / np.maximum(np.abs(want), 1e-6)).max()) if diff.size else 0.0,
        "within_tolerance": bool(np.allclose(got, want, atol=tol.atol, rtol=tol.rtol)),
        "atol": tol.atol,
        "rtol": tol.rtol,
    }
    if task == "classification":
        report["agreement"] = float((got.argmax(1) == want.argmax(1)).mean()) if len(want) else 1.0
        report["min_agreement"] = tol.min_agreement
    report["passed"] = report["within_tolerance"] and report.get("agreement", 1.0) >= tol.min_agreement
    return report


def reference(module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """A module's last output (probabilities or prediction) for one batch of raw rows."""
    with torch.inference_mode():
        ref = module(torch.from_numpy(np.array(batch)))  # a copy: memory-mapped rows are read-only
    return (ref[-1] if isinstance(ref, tuple) else ref).numpy()


def verify_onnx(path: Path, module: nn.Module, rows: np.ndarray, task: str, tol: Tolerance) -> dict[str, Any]:
    """onnxruntime (CPU) against the PyTorch `module` on the same raw rows."""
    from bigmodel_cli.inference.session import create_session

    session = create_session(path, device="cpu")
    names = output_names(task)
    got, want = [], []
    for start in range(0, len(rows), BATCH):
        batch = np.ascontiguousarray(rows[start : start + BATCH])
        got.append(np.asarray(session.run(names, {"input": batch})[-1], dtype=np.float32))
        want.append(reference(module, batch))
    return compare(_stack(got), _stack(want), task, tol)


def verify_module(exported: nn.Module, module: nn.Module, rows: np.ndarray, task: str,
                  tol: Tolerance) -> dict[str, Any] | None:
    """A saved-and-reloaded module (TorchScript) against the eager one; None when there are no rows."""
    if len(rows) == 0:
        return None
    got = [reference(exported, rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]
    want = [reference(module, rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]
    return compare(_stack(got), _stack(want), task, tol)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def validation_rows(run, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The validation rows (train rows when there are none) as the model's input dtype, with labels: the prepared
    split while it is the run's data, else the reference rows the run carries (`run.rows`)."""
    from bigmodel_cli.run import rows

    x, y = rows(run, "val")
    if len(x) == 0:
        x, y = rows(run, "train")
    limit = len(x) if limit is None else limit
    return np.ascontiguousarray(x[:limit], dtype=input_dtype(run.manifest)), np.asarray(y[:limit])


def first_output(session, x: np.ndarray, dtype, batch_size: int = BATCH) -> np.ndarray:
    """The graph's first output (logits or prediction) for every row of `x`."""
    first = session.get_outputs()[0].name
    name = session.get_inputs()[0].name
    out = [session.run([first], {name: np.ascontiguousarray(x[i : i + batch_size], dtype=dtype)})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1), np.float32)


def main_metric(task: str, outputs: np.ndarray, y: np.ndarray) -> tuple[str, float]:
    """accuracy (classification) or r2 (regression), both as fractions."""
    if task == "classification":
        return "accuracy", float((outputs.argmax(1) == np.asarray(y)).mean()) if len(y) else 1.0
    pred, y = outputs.reshape(len(y), -1)[:, 0], np.asarray(y, np.float64).reshape(-1)
    denom = float(((y - y.mean()) ** 2).sum()) or 1.0
    return "r2", 1.0 - float(((pred - y) ** 2).sum()) / denom


def metric_drop(fp32: Path, quantized: Path, x: np.ndarray, y: np.ndarray, task: str) -> dict[str, Any]:
    """The main metric of both models on the same validation rows, and the drop in points."""
    from bigmodel_cli.inference.session import create_session

    name, base = main_metric(task, first_output(create_session(fp32, device="cpu"), x, x.dtype), y)
    _, quant = main_metric(task, first_output(create_session(quantized, device="cpu"), x, x.dtype), y)
    return {"metric": name, "rows": int(len(y)), "fp32": base, "quantized": quant, "drop_points": (base - quant) * 100}
