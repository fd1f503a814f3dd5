"""`bigmodel export`: the run's model as ONNX (fp32, fp16 or int8) or TorchScript, verified before it is kept.

    bigmodel export runs/digits-cnn                        # -> model.onnx             + export.json
    bigmodel export runs/digits-cnn --quantize int8        # -> model.int8.onnx        + export.int8.json
    bigmodel export runs/digits-cnn --quantize fp16        # -> model.fp16.onnx        + export.fp16.json
    bigmodel export runs/digits-cnn --format torchscript   # -> model.torchscript.pt   + export.torchscript.json
    bigmodel export runs/digits-cnn --checkpoint last --out /tmp/digits.onnx   # + /tmp/digits.export.json

Each variant has its own file and report, so quantising never replaces the fp32 `model.onnx` that
`bigmodel serve RUN_DIR` and `bigmodel eval --onnx` use by default. `--out PATH` names the model
file; its report is written beside it (`report_path`: model.X.ext -> export.X.json, other names
NAME.ext -> NAME.export.json). The report and the model's metadata record the checkpoint it came
from (which: best|last|path, its path and SHA-256): `eval --onnx` compares with that checkpoint.

The graph takes raw inputs and returns `logits` and `probabilities` (classification) or
`prediction` (regression) (`module.Exportable`, `onnx_graph.to_onnx`). `onnx.checker` (full)
and a comparison with PyTorch on validation rows (`verify`) must pass, or the command exits 1
and neither the model nor its report is written. The formats (`onnx_graph`, `quantize`,
`torchscript`) do not import each other; this module runs them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bigmodel_cli import atomic, console
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.errors import JobFailed, UsageError
from bigmodel_cli.export import metadata
from bigmodel_cli.export import profile as reference_profile
from bigmodel_cli.export import verify as V
from bigmodel_cli.export.module import Exportable, exportable, input_dtype, output_names, sample_input
from bigmodel_cli.run import load_run

__all__ = ["Exportable", "FORMATS", "QUANTIZE", "default_model_path", "export_run", "exportable", "report_path"]

QUANTIZE = ("none", "fp16", "int8")
FORMATS = ("onnx", "torchscript")
VARIANT_FILES = {("onnx", "none"): "model.onnx", ("onnx", "fp16"): "model.fp16.onnx",
                 ("onnx", "int8"): "model.int8.onnx", ("torchscript", "none"): "model.torchscript.pt"}


def default_model_path(run_path: Path, fmt: str, quantize: str) -> Path:
    """RUN_DIR/model.onnx, model.fp16.onnx, model.int8.onnx or model.torchscript.pt."""
    return Path(run_path) / VARIANT_FILES[(fmt, quantize)]


def report_path(model: Path) -> Path:
    """The report beside a model: model.onnx -> export.json, model.int8.onnx -> export.int8.json,
    digits.onnx -> digits.export.json."""
    return reference_profile.companion(model, "export")


def _check_request(run, out, quantize: str, fmt: str, opset: int, verify_samples: int | None) -> Path:
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZE)}")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "torchscript" and quantize != "none":
        raise UsageError(f"--quantize {quantize}: only ONNX models are quantised; drop it for --format torchscript")
    if run.recipe.export.optimize and run.recipe.model.name != "hf":
        raise UsageError("--optimize / export.optimize (onnxruntime's transformer optimiser) is for pre-trained "
                         "transformers (model.name hf); drop it")
    if run.recipe.task == "language-modeling" and (quantize == "int8" or fmt == "torchscript"):
        raise UsageError("a language model exports as ONNX fp32 or fp16 (--quantize int8 and --format torchscript "
                         "are for classifiers and regressors)")
    if not 13 <= opset <= 23:
        raise UsageError(f"--opset {opset}: expected an ONNX opset between 13 and 23")
    if verify_samples is not None and verify_samples < 1:
        raise UsageError(f"--verify-samples {verify_samples}: expected 1 or more rows")
    out = Path(out) if out else default_model_path(run.path, fmt, quantize)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    return out


def calibration(run, quantize: str) -> np.ndarray | None:
    """Train rows for int8 calibration (checked before anything is exported)."""
    from bigmodel_cli.export import quantize as q

    if quantize != "int8":
        return None
    from bigmodel_cli.run import rows

    x_train, _ = rows(run, "train")  # the prepared train split, or the run's reference train rows
    if len(x_train) == 0:
        raise UsageError(f"--quantize int8: {run.path} has no train rows to calibrate on; train the run again")
    return q.calibration_rows(x_train, run.recipe.export.calibration_batches, run.recipe.seed,
                              input_dtype(run.manifest))


def export_run(run_dir: str | Path, checkpoint: str = "best", out: Path | None = None, quantize: str | None = None,
               opset: int | None = None, verify_model: bool = True, fmt: str | None = None,
               verify_samples: int | None = None, optimize: bool | None = None) -> dict[str, Any]:
    """Export, check and verify a run's model; returns the report (also written beside the model).

        export_run("runs/digits-cnn", quantize="int8")     # bigmodel export runs/digits-cnn --quantize int8
        export_run("runs/text-bert-finetune", optimize=True)   # ... --optimize (default: export.optimize)
    """
    run = load_run(run_dir)
    if optimize is not None:
        run.recipe.export.optimize = optimize
    recipe = run.recipe
    quantize, fmt = quantize or recipe.export.quantize, fmt or recipe.export.format
    opset = opset or recipe.export.opset
    out = _check_request(run, out, quantize, fmt, opset, verify_samples)
    if recipe.task in ("generation", "restoration"):  # z (+ label) or uint8 images -> uint8 images
        from bigmodel_cli.export.generator import export_generator

        if fmt != "onnx" or quantize != "none":
            raise UsageError(f"--format {fmt} --quantize {quantize}: {recipe.task} models are exported as fp32 ONNX "
                             "(drop --format/--quantize)")
        return export_generator(run, checkpoint, out, report_path(out), opset, verify_model, verify_samples)
    module, ckpt_path = exportable(run, checkpoint)
    if recipe.export.optimize:  # hf (checked above): the padding mask in the form the attention fusion knows
        from bigmodel_cli.export.hf import fusable

        fusable(module)
    job = _Job(run, module, opset, quantize, verify_model,
               metadata.checkpoint_record(run.path, checkpoint, ckpt_path), metadata.model_info(recipe, module.net))
    rows, labels = V.validation_rows(run)
    calibration_rows = calibration(run, quantize)
    verify_rows = rows[: verify_samples or recipe.export.verify.samples]
    sample = sample_input(run, rows)
    started = time.perf_counter()
    console.info(f"exporting {ckpt_path} to {fmt}" + (f" (opset {opset})" if fmt == "onnx" else ""))
    with atomic.atomic_path(report_path(out)) as report_tmp, atomic.atomic_path(out) as tmp:
        if fmt == "torchscript":
            exporter, check, extra = "torch.jit.trace", _torchscript(job, sample, tmp, verify_rows), {}
        else:
            exporter, check, extra = _onnx(job, sample, tmp, verify_rows, (rows, labels, calibration_rows))
        if check is not None and not check["passed"]:
            raise JobFailed(
                f"export verification failed: the exported model differs from PyTorch (max abs error "
                f"{check['max_abs_error']:.3g}, agreement {check.get('agreement', 1.0):.4f}); no model written"
            )
        if fmt == "onnx":  # what serve compares live traffic with (drift): the model's answers on these rows
            reference_profile.write_for_run(run, tmp, rows, reference_profile.profile_path(out))
        report = _report(job, out, tmp.stat().st_size, exporter, fmt, check, extra, started)
        atomic.write_json(report_tmp, report)
    _summarise(report, report_path(out))
    return report


class _Job:
    """What every format step of one export needs."""

    def __init__(self, run, module: nn.Module, opset: int, quantize: str, verify_model: bool,
                 checkpoint: dict[str, Any], model: dict[str, Any]):
        self.run, self.module, self.opset, self.quantize, self.verify_model = run, module, opset, quantize, verify_model
        self.checkpoint, self.model = checkpoint, model
        self.task, self.cfg = run.recipe.task, run.recipe.export

    def write_metadata(self, path: Path, exporter: str, quantize: str) -> None:
        from bigmodel_cli.export import onnx_graph

        metadata.write(path, metadata.for_run(self.run, exporter=exporter, quantize=quantize, model=self.model,
                                              checkpoint=self.checkpoint))
        onnx_graph.check(path)


def _torchscript(job: _Job, sample, tmp: Path, verify_rows) -> dict[str, Any] | None:
    from bigmodel_cli.export import torchscript

    torchscript.save(job.module, sample, tmp)
    if not job.verify_model:
        return None
    tol = V.tolerance(job.cfg.verify, "none")
    return V.verify_module(torchscript.load(tmp), job.module, verify_rows, job.task, tol)


def _onnx(job: _Job, sample, tmp: Path, verify_rows, data):
    """ONNX export into `tmp`: fp32 directly, or fp32 in a scratch folder and then fp16/int8 into `tmp`."""
    from bigmodel_cli.export import onnx_graph
    from bigmodel_cli.export import quantize as q

    with tempfile.TemporaryDirectory(prefix="bigmodel-export-") as work:
        fp32 = tmp if job.quantize == "none" else Path(work) / "fp32.onnx"
        if job.task == "language-modeling":  # a decoder: with its key/value cache (optional inputs)
            from bigmodel_cli.export.hf import export_decoder

            exporter = export_decoder(job.module, sample, fp32, job.opset)
        else:
            exporter = onnx_graph.to_onnx(job.module, sample, fp32, job.opset, job.task)
        optimized = _optimize(job, fp32, Path(work)) if job.cfg.optimize else {}
        job.write_metadata(fp32, exporter, "none")
        tol = V.tolerance(job.cfg.verify, job.quantize)
        if job.quantize == "none":
            return exporter, (V.verify_onnx(tmp, job.module, verify_rows, job.task, tol) if job.verify_model
                              else None), optimized
        if job.quantize == "fp16":
            q.to_fp16(fp32, tmp)
            job.write_metadata(tmp, exporter, "fp16")
            check = V.verify_onnx(tmp, job.module, verify_rows, job.task, tol) if job.verify_model else None
            return exporter, check, {"fp16": {"io_types": "float32 (weights and activations float16)"}, **optimized}
        if job.run.recipe.model.name == "hf":  # the exporter's shape annotations trip ORT's quantiser
            from bigmodel_cli.export.hf import drop_shape_annotations

            drop_shape_annotations(fp32)
        check, extra = _int8(job, fp32, tmp, exporter, verify_rows, data)
        return exporter, check, {**extra, **optimized}


def _optimize(job: _Job, fp32: Path, work: Path) -> dict[str, Any]:
    """export.optimize (hf models): onnxruntime's transformer optimiser rewrites the fp32 graph in place."""
    import shutil

    from bigmodel_cli.export import hf

    config = job.run.manifest["preprocessing"]["hf"]["config"]
    fused = hf.optimize(fp32, work / "optimized.onnx", config)
    shutil.move(work / "optimized.onnx", fp32)
    console.info(f"transformer optimiser ({fused['model_type']}): fused {fused['fused'] or 'nothing'}")
    return {"optimize": fused}


def _int8(job: _Job, fp32: Path, tmp: Path, exporter: str, verify_rows, data):
    """Quantise, compare the main metric with fp32 on the validation split, and warn when int8 is not faster."""
    from bigmodel_cli.export import quantize as q

    rows, labels, calibration_rows = data
    cfg = job.cfg
    method = q.int8_method(job.run.recipe.model.name, job.run.manifest["kind"])
    console.info(f"int8: {method} quantisation" + (f", calibrated on {len(calibration_rows)} train rows"
                                                    if method == "static" else ""))
    q.to_int8(fp32, tmp, calibration_rows, method)
    job.write_metadata(tmp, exporter, "int8")
    metric = V.metric_drop(fp32, tmp, rows, labels, job.task)
    metric["max_drop_points"] = cfg.max_metric_drop
    if metric["drop_points"] > cfg.max_metric_drop:
        raise JobFailed(
            f"int8 {metric['metric']} {metric['quantized']:.4f} is {metric['drop_points']:.2f} points below fp32 "
            f"{metric['fp32']:.4f} on {metric['rows']} validation rows (export.max_metric_drop "
            f"{cfg.max_metric_drop}); no model written; try --quantize fp16 or more export.calibration_batches")
    speed = q.speedup(fp32, tmp, rows if len(rows) else calibration_rows, rows.dtype)
    if speed < 1.0:
        console.warn(f"int8 is not faster than fp32 for this model on this machine ({speed:.2f}x at batch 64); "
                     f"consider --quantize none or fp16")
    check = None
    if job.verify_model:  # informational: int8 is judged by the metric drop, not by element-wise tolerance
        check = V.verify_onnx(tmp, job.module, verify_rows, job.task, V.INFORMATIONAL)
        check["passed"] = True
    int8 = {"method": method, "calibration_rows": int(len(calibration_rows)) if method == "static" else 0,
            "metric": metric, "speedup_vs_fp32_batch64": speed}
    return check, {"int8": int8}


def _report(job: _Job, out: Path, size: int, exporter, fmt, check, extra, started) -> dict[str, Any]:
    manifest = job.run.manifest
    dtype = "int64" if manifest["kind"] == "text" else "float32"
    shape = [-1, -1] if manifest["kind"] == "text" else [-1, *manifests.input_shape(manifest)]
    return {
        "model": str(out),
        "run": str(job.run.path),
        "format": fmt,
        "checkpoint": job.checkpoint,
        "network": job.model,
        "exporter": exporter,
        "opset": job.opset if fmt == "onnx" else None,
        "quantize": job.quantize,
        "inputs": {"input": {"dtype": dtype, "shape": shape}},
        "outputs": output_names(job.task),
        "size_bytes": size,
        "onnx_checker": "passed (full_check)" if fmt == "onnx" else None,
        "verification": check,
        **extra,
        "time_s": time.perf_counter() - started,
    }


def _summarise(report: dict[str, Any], report_file: Path) -> None:
    check = report["verification"]
    if check:
        extra = f", agreement {check['agreement']:.4f}" if "agreement" in check else ""
        console.info(f"verified on {check['samples']} rows: max abs error {check['max_abs_error']:.2e}{extra}")
    if "int8" in report:
        m = report["int8"]["metric"]
        console.info(f"int8 {m['metric']} {m['quantized']:.4f} vs fp32 {m['fp32']:.4f} "
                     f"(drop {m['drop_points']:.2f} points), {report['int8']['speedup_vs_fp32_batch64']:.1f}x "
                     f"fp32 speed at batch 64")
    console.info(f"wrote {report['model']} ({report['size_bytes'] / 1024:.0f} KiB, {report['exporter']} exporter, "
                 f"{report['checkpoint']['which']} checkpoint {report['checkpoint']['path']}) and {report_file}")
