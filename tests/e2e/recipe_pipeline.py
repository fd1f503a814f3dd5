"""One shipped recipe through the real commands on tiny data, as its header says to run it:

    result = run_recipe(cli, tmp_path, "wine-mlp", sets=["train.epochs=3"])
    result = run_recipe(cli, tmp_path, "mnist-cnn", source=f"torchvision:mnist:{root}")

prepare-data -> train -> eval -> export (verified) -> one inference through the exported model with
onnxruntime on raw test rows. Every step must exit 0; the reports are returned for the recipe's own asserts,
which include `assert_learned`: the trained model beats chance on the test split by a stated margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RecipeResult:
    run: Path  # runs/<name>
    data: Path  # data/<name>
    manifest: dict[str, Any]
    eval: dict[str, Any]  # `bigmodel eval --json`
    export: dict[str, Any]  # `bigmodel export --json`
    inputs: np.ndarray  # the raw test rows sent to the exported model
    outputs: dict[str, np.ndarray]  # what onnxruntime returned for them


def _ok(result, step: str) -> dict[str, Any]:
    assert result.code == 0, f"{step} exited {result.code}: {result.stderr[-2000:]}"
    return result.json()


def run_recipe(cli, workdir: Path, name: str, *, source: str | None = None, sets: list[str] = (),
               export_args: list[str] = (), rows: int = 4) -> RecipeResult:
    """Run the recipe's commands in `workdir`; `sets` apply to every command (e.g. fewer epochs)."""
    import onnx
    import onnxruntime as ort

    set_args = [a for s in sets for a in ("--set", s)]
    source_args = ["--source", source] if source else []
    prepared = _ok(cli("prepare-data", "-r", name, *source_args, *set_args, "--json", cwd=workdir), "prepare-data")
    data = workdir / "data" / name
    assert (data / "manifest.json").is_file()

    trained = _ok(cli("train", "-r", name, *set_args, "--json", cwd=workdir), "train")
    assert trained["epochs_run"] >= 1
    run = workdir / "runs" / name
    assert (run / "recipe.yaml").is_file() and (run / "metrics.jsonl").is_file()

    evaluated = _ok(cli("eval", str(run), "--json", cwd=workdir), "eval")
    exported = _ok(cli("export", str(run), *export_args, "--json", cwd=workdir), "export")
    assert exported["verification"]["passed"], exported["verification"]

    model_path = run / "model.onnx"
    onnx.checker.check_model(onnx.load(str(model_path)), full_check=True)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = np.load(data / "test" / "x.npy")[:rows]
    x = x.astype(np.int64 if "int" in spec.type else np.float32)
    values = session.run(None, {spec.name: x})
    outputs = {o.name: v for o, v in zip(session.get_outputs(), values, strict=True)}
    for value in outputs.values():
        assert value.shape[0] == len(x) and np.isfinite(value).all()
    if "probabilities" in outputs:
        assert np.allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    manifest = json.loads((data / "manifest.json").read_text())
    assert prepared["manifest"]["splits"] == manifest["splits"]
    return RecipeResult(run, data, manifest, evaluated, exported, x, outputs)


def chance_accuracy(report: dict[str, Any]) -> float:
    """The accuracy of always answering the test split's most frequent class (rows of the confusion matrix)."""
    counts = [sum(row) for row in report["confusion_matrix"]]
    return max(counts) / sum(counts)


def assert_learned(report: dict[str, Any], margin: float) -> None:
    """The test accuracy is at least chance (the majority class's share) plus `margin`: an untrained model,
    or one that answers a single class, fails this."""
    accuracy, chance = report["metrics"]["accuracy"], chance_accuracy(report)
    assert accuracy >= chance + margin, (f"test accuracy {accuracy:.3f} is not {margin} above chance {chance:.3f} "
                                         f"on {report['n']} rows: the model did not learn")
