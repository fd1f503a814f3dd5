"""`bigmodel prepare-data`: raw source -> cleaned, split arrays + manifest with a data report.

    bigmodel prepare-data -r digits-cnn              # -> data/digits-cnn/{manifest.json,train,val,test}

Every statistic (normalisation) is fitted on the train split only and recorded in the
manifest; the arrays keep raw pixel values / feature values so that eval, export and
serve apply exactly the same transform (`bigmodel_cli.data.transform`). The output
folder is written beside its destination and swapped in only on success.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import __version__, atomic
from bigmodel_cli.console import info, warn
from bigmodel_cli.data.manifest import FORMAT_VERSION
from bigmodel_cli.data.sources import read_source
from bigmodel_cli.errors import UsageError


def prepare(recipe, out: str | Path | None = None) -> dict[str, Any]:
    """Prepare the recipe's data into `out` (default `recipe.prepared_dir`); returns the manifest."""
    out = Path(out or recipe.prepared_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    raw = read_source(recipe.data.source)
    if recipe.task == "classification" and raw.task != "classification":
        raise UsageError(f"data.source '{recipe.data.source}' has a numeric target; set task: regression")
    if recipe.task == "regression" and raw.classes is not None:
        raw.y = raw.y.astype(np.float32)
        raw.classes = None
    report: dict[str, Any] = {"rows_read": int(len(raw.x)), "warnings": []}

    x, y, dropped = _drop_duplicates(raw.x, raw.y)
    report["duplicates_dropped"] = dropped

    index = _split(y, recipe)
    normalize = _fit_normalize(x[index["train"]], raw.kind, recipe.data.scaling)

    report["split_sizes"] = {s: int(len(i)) for s, i in index.items()}
    if raw.classes is not None:
        report["class_counts"] = {
            s: {raw.classes[c]: int(n) for c, n in enumerate(np.bincount(y[i], minlength=len(raw.classes)))}
            for s, i in index.items()
        }
        for split, counts in report["class_counts"].items():
            missing = [c for c, n in counts.items() if n == 0]
            if missing and report["split_sizes"][split]:
                report["warnings"].append(f"split '{split}' has no rows of class(es) {', '.join(missing)}")
    constant = [raw.features[j] for j in _constant_columns(x[index["train"]])] if raw.kind == "tabular" else []
    if constant:
        report["warnings"].append(f"constant feature(s) in train: {', '.join(constant)}")
    for w in report["warnings"]:
        warn(w)

    manifest = {
        "format_version": FORMAT_VERSION,
        "bigmodel_version": __version__,
        "name": recipe.name,
        "task": recipe.task,
        "kind": raw.kind,
        "source": recipe.data.source,
        "source_sha256": raw.sha256,
        "target": raw.target,
        "classes": raw.classes,
        "features": raw.features,
        "input_shape": list(x.shape[1:]),
        "input_dtype": str(x.dtype),
        "splits": report["split_sizes"],
        "seed": recipe.seed,
        "preprocessing": {"normalize": normalize},
        "report": report,
    }
    with atomic.atomic_dir(out) as tmp:
        for split, idx in index.items():
            (tmp / split).mkdir()
            np.save(tmp / split / "x.npy", np.ascontiguousarray(x[idx]))
            np.save(tmp / split / "y.npy", np.ascontiguousarray(y[idx]))
        atomic.write_json(tmp / "manifest.json", manifest)
    _print_report(manifest, out)
    return manifest


def _drop_duplicates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop exact duplicate (features, target) rows, keeping the first of each."""
    rows = np.concatenate([x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), 1).astype(np.float64)], axis=1)
    _, first = np.unique(rows, axis=0, return_index=True)
    keep = np.sort(first)
    return x[keep], y[keep], int(len(x) - len(keep))


def _split(y: np.ndarray, recipe) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(y)
    all_idx = np.arange(n)
    val_frac, test_frac = recipe.data.split.val, recipe.data.split.test
    stratify = recipe.task == "classification" and recipe.data.split.stratify

    def cut(idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0:
            return idx, idx[:0]
        labels = y[idx] if stratify else None
        try:
            kept, taken = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
        except ValueError as e:
            raise UsageError(f"data.split: cannot split {len(idx)} rows ({e}); lower the fractions or set "
                             "data.split.stratify=false") from None
        return np.sort(kept), np.sort(taken)

    rest, test = cut(all_idx, test_frac, recipe.seed)
    train, val = cut(rest, val_frac / (1.0 - test_frac) if test_frac < 1 else 0.0, recipe.seed + 1)
    if len(train) == 0:
        raise UsageError(f"data.split leaves no training rows out of {n}")
    return {"train": train, "val": val, "test": test}


def _constant_columns(x: np.ndarray) -> list[int]:
    if x.ndim != 2 or len(x) == 0:
        return []
    return [int(j) for j in np.flatnonzero(np.all(x == x[:1], axis=0))]


def _fit_normalize(x: np.ndarray, kind: str, scaling: str) -> dict[str, Any]:
    """Affine input normalisation `(x * scale - mean) / std`, fitted on train.

    Images: per channel, on pixel values scaled to [0, 1]. Tables: per feature.
    """
    if kind == "image":
        pixels = x.astype(np.float64) / 255.0
        mean = pixels.mean(axis=(0, 2, 3))
        std = pixels.std(axis=(0, 2, 3))
        return {"scale": 1.0 / 255.0, "mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist(),
                "per": "channel"}
    values = x.astype(np.float64)
    if scaling == "standard":
        mean, std = values.mean(axis=0), values.std(axis=0)
    elif scaling == "minmax":
        mean, std = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
    else:
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    std = np.where(std > 0, std, 1.0)
    return {"scale": 1.0, "mean": mean.tolist(), "std": std.tolist(), "per": "feature", "method": scaling}


def _print_report(manifest: dict[str, Any], out: Path) -> None:
    report = manifest["report"]
    sizes = ", ".join(f"{s} {n}" for s, n in report["split_sizes"].items())
    shape = "x".join(str(d) for d in manifest["input_shape"])
    info(
        f"prepared {manifest['source']} -> {out}: {report['rows_read']} rows read, "
        f"{report['duplicates_dropped']} duplicates dropped; {sizes}; input {shape} "
        f"({manifest['kind']}, {len(manifest['classes']) if manifest['classes'] else 'regression'}"
        f"{' classes' if manifest['classes'] else ''})"
    )

