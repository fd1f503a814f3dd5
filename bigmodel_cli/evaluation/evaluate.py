"""`bigmodel eval`: metrics, per-class report, confusion matrix, predictions CSV and plots.

    bigmodel eval runs/digits-cnn --fail-under accuracy=0.95
    bigmodel eval runs/digits-cnn --onnx runs/digits-cnn/model.onnx --split val --json

Writes `RUN_DIR/eval/<split>.json`, `<split>_predictions.csv` and the plots, each atomically.
"""

from __future__ import annotations

import csv
import difflib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import atomic, console
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation import metrics as M
from bigmodel_cli.evaluation import plots
from bigmodel_cli.run import load_network, load_run


def parse_gates(items: list[str]) -> dict[str, float]:
    gates = {}
    for item in items:
        name, sep, raw = item.partition("=")
        try:
            gates[name.strip()] = float(raw)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UsageError(f"--fail-under '{item}': expected METRIC=VALUE, e.g. --fail-under accuracy=0.9")
    return gates


def resolve_gates(run, cli_gates: dict[str, float]) -> dict[str, float]:
    """Recipe gates (eval.fail_under) overridden by --fail-under; unknown metric names are exit 2."""
    gates = {**run.recipe.eval.fail_under, **cli_gates}
    known = list(M.metric_names(run.recipe.task))
    for name in gates:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; metrics: {', '.join(known)}"
            raise UsageError(f"--fail-under {name}: unknown metric{hint}")
    return gates


def check_gates(metrics: dict[str, Any], gates: dict[str, float]) -> list[dict[str, Any]]:
    results = []
    for name, threshold in gates.items():
        value = metrics.get(name)
        passed = value is not None and value >= threshold
        results.append({"metric": name, "threshold": threshold, "value": value, "passed": passed})
        mark = "[green]pass[/green]" if passed else "[red]FAIL[/red]"
        console.info(f"gate {name} >= {threshold}: {mark} ({_fmt(value)})")
    return results


def _onnx_outputs(path: Path, x: np.ndarray, task: str, batch_size: int) -> np.ndarray:
    import onnxruntime as ort

    from bigmodel_cli.devices import ort_providers

    if not path.is_file():
        raise UsageError(f"--onnx {path}: file not found; create it with bigmodel export")
    try:
        session = ort.InferenceSession(str(path), providers=ort_providers("auto"))
    except Exception as e:
        raise UsageError(f"--onnx {path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    want = "logits" if task == "classification" else "prediction"
    names = [o.name for o in session.get_outputs()]
    if want not in names:
        raise UsageError(f"--onnx {path}: no '{want}' output (outputs: {', '.join(names)})")
    chunks = [session.run([want], {"input": np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
              for i in range(0, len(x), batch_size)]
    return np.concatenate(chunks).reshape(len(x), -1)


def evaluate(run_dir: str | Path, split: str | None = None, checkpoint: str | None = None,
             onnx_path: Path | None = None, fail_under: dict[str, float] | None = None) -> dict[str, Any]:
    """Evaluate a run; the report's `gates` lists each quality gate and whether it passed."""
    run = load_run(run_dir)
    gates = resolve_gates(run, fail_under or {})
    recipe, manifest = run.recipe, run.manifest
    split = split or recipe.eval.split
    if split not in manifests.SPLITS:
        raise UsageError(f"--split {split}: expected one of {', '.join(manifests.SPLITS)}")
    x, y = manifests.load_split(recipe.prepared_dir, split)
    if len(y) == 0:
        raise UsageError(f"split '{split}' of {recipe.prepared_dir} is empty; nothing to evaluate")

    started = time.perf_counter()
    if onnx_path is not None:
        outputs = _onnx_outputs(Path(onnx_path), x, recipe.task, recipe.eval.batch_size)
        source = {"model": str(onnx_path)}
    else:
        import torch

        from bigmodel_cli.evaluation.predict import predict

        net, norm, path = load_network(run, checkpoint or recipe.eval.checkpoint)
        outputs = predict(net, norm, x, torch.device("cpu"), recipe.eval.batch_size)
        source = {"checkpoint": str(path)}

    y = np.asarray(y)
    report: dict[str, Any] = {"split": split, "n": int(len(y)), **source, "task": recipe.task}
    out_dir = run.path / "eval"
    rows = io.StringIO()
    writer = csv.writer(rows)
    if recipe.task == "classification":
        from bigmodel_cli.evaluation.predict import softmax

        classes = manifest["classes"]
        proba = softmax(outputs)
        values, per_class, cm = M.classification(y, proba, classes)
        pred = proba.argmax(axis=1)
        report.update(metrics=values, per_class=per_class, confusion_matrix=cm, classes=classes)
        writer.writerow(["y_true", "y_pred", *[f"p_{c}" for c in classes]])
        for t, p, probs in zip(y, pred, proba, strict=True):
            writer.writerow([classes[t], classes[p], *[f"{v:.6g}" for v in probs]])
        written = plots.classification_plots(y, proba, classes, cm, out_dir, split)
    else:
        pred = outputs[:, 0]
        values = M.regression(y, pred)
        report.update(metrics=values, per_class={}, confusion_matrix=None)
        writer.writerow(["y_true", "y_pred"])
        for t, p in zip(y, pred, strict=True):
            writer.writerow([f"{t:.6g}", f"{p:.6g}"])
        written = plots.regression_plots(y, pred, out_dir, split)
    report["undefined_metrics"] = M.undefined(values)
    for name in report["undefined_metrics"]:
        console.warn(f"{name} is undefined on split '{split}' (e.g. a class is absent); reported as null")
    report["time_s"] = time.perf_counter() - started
    report["files"] = {"report": str(out_dir / f"{split}.json"),
                       "predictions": str(out_dir / f"{split}_predictions.csv"), "plots": written}
    _print(report)
    report["gates"] = check_gates(values, gates)
    atomic.write_text(out_dir / f"{split}_predictions.csv", rows.getvalue())
    atomic.write_json(out_dir / f"{split}.json", report)
    return report


def _fmt(value: Any) -> str:
    return "null" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print(report: dict[str, Any]) -> None:
    if console.is_quiet():
        return
    from rich.table import Table

    what = report.get("checkpoint") or report.get("model")
    console.info(f"eval on split '{report['split']}' ({report['n']} rows) of {what}")
    table = Table("metric", "value", box=None)
    for name, value in report["metrics"].items():
        table.add_row(name, _fmt(value))
    console.console.print(table)
    if report["per_class"]:
        per = Table("class", "precision", "recall", "f1", "support", box=None)
        for name, row in report["per_class"].items():
            per.add_row(name, _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), str(row["support"]))
        console.console.print(per)
    console.info(f"wrote {report['files']['report']}")
