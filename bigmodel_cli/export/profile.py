"""The reference profile `export` writes beside a model: what its answers (and a table's features) look like on
the validation rows, so that `serve` can tell when live traffic drifts away from them.

    bigmodel export runs/breast-cancer-mlp      # -> model.onnx, export.json and profile.json
    bigmodel serve runs/breast-cancer-mlp       # reads profile.json: drift gauges on /metrics

    profile = read(profile_path(Path("runs/x/model.onnx")))    # None when the model has none
    psi(profile["predicted_class"]["shares"], shares(counts))    # population stability index

The file (JSON), for a model of `task` classification or regression:

    {"format_version": 1, "model_sha256": "...", "task": "classification", "split": "val", "rows": 360,
     "predicted_class": {"names": ["0", ...], "shares": [0.1, ...]},          # classification
     "confidence": {"cuts": [0.05, ..., 0.95], "shares": [...]},               # classification: top-1 probability
     "prediction": {"cuts": [deciles], "shares": [...]},                        # regression: the first output value
     "features": {"names": [...], "cuts": [[deciles], ...], "shares": [[...], ...]}}   # tables: each model input

A value falls in bin `i` = the number of `cuts` at or below it (`bins`), so `len(cuts) + 1` bins, the outer ones
open-ended. Deciles of the validation rows are the cuts of predictions and features (repeated values merged, so
a 0/1 feature has two or three bins); confidence has fixed cuts every 0.05. `model_sha256` is the model file
the profile was computed with: `serve` ignores a profile that does not describe the model it serves.

Imports numpy only at the top: the server reads profiles with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError

FORMAT_VERSION = 1
CONFIDENCE_CUTS = [round(0.05 * i, 2) for i in range(1, 20)]
DECILES = [0.1 * i for i in range(1, 10)]
MAX_ROWS = 20_000  # validation rows profiled at most
EPSILON = 1e-4  # share floor in the PSI, so that an empty bin on one side is a finite (large) term
BATCH = 256


def companion(model: Path, kind: str) -> Path:
    """A file beside a model named after it: (model.onnx, "export") -> export.json, model.int8.onnx ->
    export.int8.json, digits.onnx -> digits.export.json (the export report and the profile share the rule)."""
    model = Path(model)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    if stem == "model":
        return model.with_name(f"{kind}.json")
    if stem.startswith("model."):
        return model.with_name(f"{kind}.{stem[len('model.'):]}.json")
    return model.with_name(f"{stem}.{kind}.json")


def profile_path(model: Path) -> Path:
    """The profile beside a model: model.onnx -> profile.json, model.int8.onnx -> profile.int8.json."""
    return companion(model, "profile")


def bins(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin index of each value: values [N, F] against cuts [F, K] (padded with +inf), or values [N] against
    cuts [K] -> int [N, F] or [N]."""
    values = np.asarray(values)
    cuts = np.asarray(cuts, dtype=np.float64)
    if values.ndim == 1:
        return np.searchsorted(cuts, values, side="right")
    out = np.empty(values.shape, dtype=np.intp)
    for f in range(values.shape[1]):  # a binary search per feature: faster than comparing with every cut
        out[:, f] = np.searchsorted(cuts[f], values[:, f], side="right")
    return out


def bin_counts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Counts per bin: [K + 1] for values [N], [F, K + 1] for values [N, F] (cuts [F, K])."""
    index = bins(values, cuts)
    if index.ndim == 1:
        return np.bincount(index, minlength=len(cuts) + 1)
    width = np.asarray(cuts).shape[1] + 1
    flat = index + np.arange(index.shape[1])[None, :] * width
    return np.bincount(flat.ravel(), minlength=index.shape[1] * width).reshape(index.shape[1], width)


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts -> shares along the last axis (zeros stay zeros when there is nothing)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index of `actual` shares against `expected` (along the last axis): sum of
    (a - e) ln(a / e), shares floored at 1e-4. Below 0.1 is usually read as stable, above 0.2 as drift."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return ((a - e) * np.log(a / e)).sum(axis=-1)


def padded_cuts(cuts: list[list[float]]) -> np.ndarray:
    """Ragged per-feature cuts -> [F, K] padded with +inf (a bin past the last real cut is never used)."""
    width = max((len(c) for c in cuts), default=0)
    out = np.full((len(cuts), width), np.inf)
    for i, c in enumerate(cuts):
        out[i, : len(c)] = c
    return out


def padded_shares(rows: list[list[float]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _deciles(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    return [float(v) for v in np.unique(np.quantile(finite.astype(np.float64), DECILES))]


def build(model_path: Path, rows: np.ndarray, task: str, class_names: list[str] | None = None,
          feature_names: list[str] | None = None, split: str = "val") -> dict[str, Any]:
    """The profile of the ONNX model at `model_path` on `rows` (its inputs, as the model takes them): its
    predictions by onnxruntime, and for tables (`feature_names` given, rows [N, F]) each feature's deciles."""
    from bigmodel_cli.inference.session import create_session

    rows = rows[:MAX_ROWS]
    session = create_session(model_path, "cpu")
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    profile: dict[str, Any] = {"format_version": FORMAT_VERSION, "model_sha256": file_sha256(model_path),
                               "task": task, "split": split, "rows": int(len(rows))}
    if task == "classification":
        wanted = "probabilities" if "probabilities" in outputs else outputs[0]
        scores = _run(session, input_name, wanted, rows)
        probabilities = scores if wanted == "probabilities" else softmax(scores)
        n_classes = probabilities.shape[1] if probabilities.ndim == 2 else 1
        names = list(class_names or [str(i) for i in range(n_classes)])
        counts = np.bincount(probabilities.argmax(axis=1), minlength=n_classes) if len(rows) else np.zeros(n_classes)
        profile["predicted_class"] = {"names": names, "shares": shares(counts).tolist()}
        confidence = probabilities.max(axis=1) if len(rows) else np.zeros(0)
        profile["confidence"] = {"cuts": CONFIDENCE_CUTS,
                                 "shares": shares(bin_counts(confidence, np.array(CONFIDENCE_CUTS))).tolist()}
    elif task == "regression":
        prediction = _run(session, input_name, "prediction" if "prediction" in outputs else outputs[0], rows)
        first = prediction.reshape(len(prediction), -1)[:, 0] if len(rows) else np.zeros(0)
        cuts = _deciles(first)
        profile["prediction"] = {"cuts": cuts, "shares": shares(bin_counts(first, np.array(cuts))).tolist()}
    else:
        raise UsageError(f"{model_path}: no reference profile for task {task!r} (classification and regression "
                         f"only)")
    if feature_names is not None and rows.ndim == 2 and rows.shape[1] == len(feature_names):
        values = np.asarray(rows, dtype=np.float64)
        cuts = [_deciles(values[:, f]) for f in range(values.shape[1])]
        matrix = padded_cuts(cuts)
        counts = bin_counts(values, matrix)
        profile["features"] = {"names": list(feature_names), "cuts": cuts,
                               "shares": [shares(c[: len(k) + 1]).tolist() for c, k in zip(counts, cuts, strict=True)]}
    return profile


def for_run(run, model_path: Path, rows: np.ndarray) -> dict[str, Any]:
    """The profile of a run's exported model on its validation `rows` (`export.verify.validation_rows`)."""
    manifest = run.manifest
    features = manifest.get("features") if manifest.get("kind") == "tabular" else None
    return build(model_path, rows, run.recipe.task, manifest.get("classes"), features)


def write_for_run(run, model_path: Path, rows: np.ndarray, dest: Path) -> Path | None:
    """Profile the exported model at `model_path` (classification and regression runs) and write it, atomically,
    to `dest`; None (nothing written) for other tasks."""
    from bigmodel_cli import atomic

    if run.recipe.task not in ("classification", "regression"):
        return None
    return atomic.write_json(dest, for_run(run, model_path, rows))


def read(path: Path) -> dict[str, Any] | None:
    """The profile at `path`, or None when there is no such file; UsageError when it is not a profile."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a reference profile (invalid JSON: {e}); export the model again") from e
    if not isinstance(profile, dict) or profile.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path}: not a reference profile of format {FORMAT_VERSION}; export the model again")
    return profile


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _run(session: Any, input_name: str, output: str, rows: np.ndarray) -> np.ndarray:
    dtype = np.int64 if "int64" in session.get_inputs()[0].type else np.float32
    parts = [session.run([output], {input_name: np.ascontiguousarray(rows[i:i + BATCH], dtype=dtype)})[0]
             for i in range(0, len(rows), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
