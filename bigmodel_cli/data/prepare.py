"""`bigmodel prepare-data`: raw source -> cleaned, split arrays + manifest with a data report.

    bigmodel prepare-data -r digits-cnn              # -> data/digits-cnn/{manifest.json,train,val,test}
    bigmodel prepare-data -r my.yaml --source churn.csv --set data.target=churned --json

Steps, in order: read; drop rows with a missing target; drop exact duplicate rows; drop rows
whose missing values are to be dropped; split (seeded, stratified, or predefined); remove
outliers from train (optional); fit imputation, categories, bins or the tokenizer on train
only; apply that one fitted transform (`preprocess.apply_*`) to every split; fit the affine
normalisation on train (applied inside the model, `transform.Normalize`). The output folder
is written beside its destination and swapped in only on success.

A language-modelling corpus (`prepare_corpus`) is tokenised with the model folder's tokenizer and packed
into fixed-length blocks. Everything streams (`prepare_table`, `prepare_images`, `prepare_corpus`): a
table file is converted block by block into a memory-mapped Arrow file, an image folder decoded
into a file-backed array, and each split written a chunk at a time into `.npy` files mapped from the output folder, so
that private memory does not grow with the number of rows or images. The results are those
of the same steps on the whole data in memory. `manifest.json["fingerprint"]` is the SHA-256
of every split's x.npy and y.npy and of the fitted preprocessing, taken as they are written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import __version__, atomic
from bigmodel_cli.data import preprocess
from bigmodel_cli.data.arrays import NpyWriter, Scratch, chunks
from bigmodel_cli.data.manifest import FORMAT_VERSION, SPLITS, preprocessing_json
from bigmodel_cli.data.prepared import Prepared
from bigmodel_cli.data.report import class_warnings, print_report
from bigmodel_cli.data.sources import RawImages, read_source
from bigmodel_cli.errors import UsageError

NORMALIZE_ROWS = 65536  # train rows per chunk of the table normalisation's sums (part of its exact result)


def prepare(recipe, out: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Prepare the recipe's data into `out` (default `recipe.prepared_dir`); returns the manifest.

    An existing folder holding another recipe's data, or data from another source, is only
    replaced with `force` (the source counts as the same when its path or its SHA-256 is).
    """
    from bigmodel_cli.data.prepare_images import prepare_images
    from bigmodel_cli.data.prepare_table import prepare_table

    out = Path(out or recipe.prepared_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    _check_replace(out, recipe, force)
    made = _missing_parents(out)
    try:
        with atomic.atomic_dir(out) as tmp:
            scratch = Scratch(tmp / ".scratch")
            if recipe.task == "language-modeling":  # a corpus packed into blocks (prepare_corpus)
                from bigmodel_cli.data.prepare_corpus import prepare_corpus, read_corpus

                raw, sha256 = read_corpus(recipe, scratch)
            else:
                raw = read_source(recipe.data.source, recipe.data, scratch)
                sha256 = raw.sha256
            _check_replace(out, recipe, force, sha256)
            report: dict[str, Any] = {"warnings": [], "source_sha256": sha256}
            if recipe.task == "language-modeling":
                prepared = prepare_corpus(raw, recipe, report, scratch)
            elif isinstance(raw, RawImages):
                prepared = prepare_images(raw, recipe, report, scratch)
            else:
                prepared = prepare_table(raw, recipe, report, scratch)
            if recipe.data.kind not in ("auto", prepared.kind):
                raise UsageError(f"data.kind is {recipe.data.kind}, but data.source '{recipe.data.source}' is "
                                 f"{prepared.kind} data")
            augment = _augment_spec(recipe.data, prepared)
            manifest = _write(recipe, sha256, prepared, report, augment, tmp, scratch.array)
            del raw, prepared
            scratch.close()
            atomic.write_json(tmp / "manifest.json", manifest)
    except BaseException:
        for folder in made:  # parents this run created, if nothing else was put there
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    print_report(manifest, out)
    return manifest


def _missing_parents(out: Path) -> list[Path]:
    """The ancestors of `out` that do not exist yet, deepest first."""
    missing = []
    for parent in out.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _check_replace(out: Path, recipe, force: bool, sha256: str | None = None) -> None:
    """Refuse (exit 2) to replace a folder that is not this recipe's prepared data from this source, unless --force.

    Without `sha256` (before the source is read) the recipe name is checked, and a folder
    that is not prepared data at all; with it, the source: the same path, or the same data
    (SHA-256) under another path, is the same source.
    """
    if force or not out.is_dir():
        return
    path = out / "manifest.json"
    if not path.is_file():
        if sha256 is None and any(out.iterdir()):
            raise UsageError(f"{out}: exists and is not prepared data (no manifest.json); refusing to replace it: "
                             f"give another --out, or --force to replace it")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return  # a broken manifest: preparing again is the fix
    if not isinstance(old, dict):
        return
    name = old.get("name")
    if name is not None and name != recipe.name:
        raise UsageError(f"{out} holds the data of recipe '{name}', not '{recipe.name}'; give another --out "
                         f"(or data.prepared), or --force to replace it")
    source = old.get("source")
    if sha256 is None or source is None or source == recipe.data.source or old.get("source_sha256") == sha256:
        return
    raise UsageError(f"{out} holds data prepared from '{source}', not '{recipe.data.source}'; give another --out "
                     f"(or data.prepared), or --force to replace it")


# ---------------------------------------------------------------- writing the splits and the manifest


def _write(recipe, source_sha256: str, prepared: Prepared, report: dict[str, Any], augment, tmp: Path,
           new_array: Callable[..., np.ndarray]) -> dict[str, Any]:
    """Write each split's x.npy and y.npy a chunk at a time, hashing them; fit the normalisation; the manifest."""
    digest = hashlib.sha256()
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for name in SPLITS:
        (tmp / name).mkdir()
        size = prepared.sizes[name]
        x_out = NpyWriter(tmp / name / "x.npy", prepared.dtype, (size, *prepared.row_shape), digest)
        for chunk in prepared.x_chunks(name):
            rows = x_out.write(chunk)
            if prepared.observe:
                prepared.observe(name, rows)
        xs[name] = x_out.close()
        y_out = NpyWriter(tmp / name / "y.npy", prepared.y_dtype, (size,), digest)
        for chunk in prepared.y_chunks(name):
            y_out.write(chunk)
        ys[name] = y_out.close()
    report["split_sizes"] = {s: int(len(ys[s])) for s in SPLITS}
    if prepared.classes is not None:
        report["class_counts"] = {s: dict(zip(prepared.classes, _bincount(ys[s], len(prepared.classes)).tolist(),
                                              strict=True)) for s in SPLITS}
        report["warnings"].extend(class_warnings(report["class_counts"]))
    elif recipe.task != "language-modeling":  # a corpus has no target: the next tokens are in x
        report["target_summary"] = {s: _summary(ys[s], new_array) for s in SPLITS if len(ys[s])}
    if prepared.normalize:
        normalize = prepared.normalize()
    else:
        normalize = _fit_normalize(xs["train"], prepared, recipe.data.scaling)
    if prepared.kind == "tabular":
        constant = [prepared.features[j] for j in np.flatnonzero(_constant(xs["train"]))]
        report["constant_features"] = constant
        if constant:
            report["warnings"].append(f"constant feature(s) in the train split, no information for the model: "
                                      f"{', '.join(constant[:10])}{' ...' if len(constant) > 10 else ''}")
    report["features_after_encoding"] = len(prepared.features) if prepared.kind == "tabular" else None
    if prepared.finish:
        prepared.finish(report)
    del xs, ys
    preprocessing = {"normalize": normalize, **prepared.preprocessing, "augment": augment}
    digest.update(preprocessing_json(preprocessing))
    return {
        "format_version": FORMAT_VERSION,
        "bigmodel_version": __version__,
        "name": recipe.name,
        "task": recipe.task,
        "kind": prepared.kind,
        "source": recipe.data.source,
        "source_sha256": source_sha256,
        "fingerprint": digest.hexdigest(),
        "target": prepared.target,
        "classes": prepared.classes,
        "features": prepared.features,
        "input_shape": list(prepared.row_shape),
        "input_dtype": str(np.dtype(prepared.dtype)),
        "splits": report["split_sizes"],
        "seed": recipe.seed,
        "preprocessing": preprocessing,
        "report": report,
    }


def _bincount(y: np.ndarray, n: int) -> np.ndarray:
    counts = np.zeros(n, dtype=np.int64)
    for start, stop in chunks(len(y), 1 << 20):
        counts += np.bincount(y[start:stop], minlength=n)[:n]
    return counts


# ---------------------------------------------------------------- normalisation and augmentation


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature mean, std, min and max in float64, in chunks of NORMALIZE_ROWS rows (bounded memory)."""
    size = x.shape[1]
    total, squares = np.zeros(size), np.zeros(size)
    low, high = np.full(size, np.inf), np.full(size, -np.inf)
    count = 0
    for start in range(0, len(x), NORMALIZE_ROWS):
        chunk = x[start:start + NORMALIZE_ROWS].astype(np.float64)
        count += len(chunk)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
        low, high = np.minimum(low, chunk.min(axis=0)), np.maximum(high, chunk.max(axis=0))
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return mean, std, low, high


def _fit_normalize(x: np.ndarray, prepared: Prepared, scaling: str) -> dict[str, Any]:
    """Affine input normalisation `(x * scale - mean) / std`, fitted on train, applied inside the model.

    Tables: per feature (one-hot indicators stay 0/1), from the written train split in chunks
    of NORMALIZE_ROWS rows. Text: none (token ids go to an embedding). Images: per channel,
    fitted while the train split is written (`prepare_images.PixelMoments`).
    """
    if prepared.kind == "text":
        return {"scale": 1.0, "mean": [0.0], "std": [1.0], "per": "none", "method": "none"}
    mean, std, low, high = _moments(x)
    if scaling == "minmax":
        mean, std = low, high - low
    elif scaling == "none":
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    onehot = preprocess.onehot_mask(prepared.preprocessing["table"])
    mean, std = np.where(onehot, 0.0, mean), np.where(onehot | ~(std > 0), 1.0, std)
    return {"scale": 1.0, "mean": mean.tolist(), "std": std.tolist(), "per": "feature", "method": scaling}


def _constant(x: np.ndarray) -> np.ndarray:
    """Per feature, True when every train row has the first row's value; a chunk of rows at a time."""
    if x.ndim != 2 or len(x) == 0:
        return np.zeros(x.shape[1] if x.ndim == 2 else 0, dtype=bool)
    same = np.ones(x.shape[1], dtype=bool)
    for start in range(0, len(x), NORMALIZE_ROWS):
        same &= np.all(x[start:start + NORMALIZE_ROWS] == x[:1], axis=0)
    return same


def _summary(y: np.ndarray, new_array) -> dict[str, float]:
    return {"mean": float(y.mean()), "std": float(preprocess.std(y, new_array)), "min": float(y.min()),
            "max": float(y.max())}


def _augment_spec(data, prepared: Prepared) -> dict[str, Any] | None:
    """The declared augmentation, checked against the data; None when nothing is declared."""
    spec = data.augment.model_dump(exclude_defaults=True)
    if not spec:
        return None
    if prepared.kind != "image":
        raise UsageError(f"data.augment: augmentation is for images; this source is {prepared.kind}")
    jitter = spec.get("color_jitter") or {}
    grey = prepared.row_shape[0] == 1
    if grey and (spec.get("grayscale") or jitter.get("saturation") or jitter.get("hue")):
        raise UsageError("data.augment: grayscale, saturation and hue need RGB images; these have 1 channel")
    height = prepared.row_shape[1]
    if spec.get("crop_padding") and spec["crop_padding"] >= height:
        raise UsageError(f"data.augment.crop_padding {spec['crop_padding']}: must be below the image size {height}")
    return spec
