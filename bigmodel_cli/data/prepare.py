"""`bigmodel prepare-data`: raw source -> cleaned, split arrays + manifest with a data report.

    bigmodel prepare-data -r digits-cnn              # -> data/digits-cnn/{manifest.json,train,val,test}
    bigmodel prepare-data -r my.yaml --source churn.csv --set data.target=churned --json

Steps, in order: read; drop rows with a missing target; drop exact duplicate rows; drop rows
whose missing values are to be dropped; split (seeded, stratified, or predefined); remove
outliers from train (optional); fit imputation, categories, bins or the tokenizer on train
only; apply that one fitted transform (`preprocess.apply_*`) to every split; fit the affine
normalisation on train (applied inside the model, `transform.Normalize`). The output folder
is written beside its destination and swapped in only on success.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import __version__, atomic
from bigmodel_cli.data import clean, preprocess, split
from bigmodel_cli.data.manifest import FORMAT_VERSION, SPLITS
from bigmodel_cli.data.report import class_warnings, print_report
from bigmodel_cli.data.sources import RawImages, RawTable, read_source
from bigmodel_cli.errors import UsageError

DEFAULT_TARGETS = ("target", "label", "class", "y")
MAX_CLASSES_FROM_NUMBERS = 100


@dataclass
class Prepared:
    """Arrays of every kept row, which rows make each split, and what was fitted on train."""

    kind: str
    x: np.ndarray
    y: np.ndarray
    index: dict[str, np.ndarray]
    features: list[str]
    classes: list[str] | None
    target: str
    preprocessing: dict[str, Any]


def prepare(recipe, out: str | Path | None = None) -> dict[str, Any]:
    """Prepare the recipe's data into `out` (default `recipe.prepared_dir`); returns the manifest."""
    out = Path(out or recipe.prepared_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    raw = read_source(recipe.data.source, recipe.data)
    report: dict[str, Any] = {"warnings": [], "source_sha256": raw.sha256}
    if isinstance(raw, RawImages):
        prepared = _prepare_images(raw, recipe, report)
    else:
        prepared = _prepare_table(raw, recipe, report)
    if recipe.data.kind not in ("auto", prepared.kind):
        raise UsageError(f"data.kind is {recipe.data.kind}, but data.source '{recipe.data.source}' is {prepared.kind} "
                         f"data")
    manifest = _manifest(recipe, raw, prepared, report)
    with atomic.atomic_dir(out) as tmp:
        for name in SPLITS:
            (tmp / name).mkdir()
            rows = prepared.index[name]
            np.save(tmp / name / "x.npy", prepared.x[rows])
            np.save(tmp / name / "y.npy", prepared.y[rows])
        atomic.write_json(tmp / "manifest.json", manifest)
    print_report(manifest, out)
    return manifest


def _manifest(recipe, raw, prepared: Prepared, report: dict[str, Any]) -> dict[str, Any]:
    index, y = prepared.index, prepared.y
    report["split_sizes"] = {s: int(len(index[s])) for s in SPLITS}
    if prepared.classes is not None:
        report["class_counts"] = {s: dict(zip(prepared.classes, np.bincount(y[index[s]], minlength=len(
            prepared.classes)).tolist(), strict=True)) for s in SPLITS}
        report["warnings"].extend(class_warnings(report["class_counts"]))
    else:
        report["target_summary"] = {s: _summary(y[index[s]]) for s in SPLITS if len(index[s])}
    train_x = prepared.x[index["train"]]
    normalize = _fit_normalize(train_x, prepared, recipe.data.scaling)
    if prepared.kind == "tabular":
        constant = [prepared.features[j] for j in np.flatnonzero(_constant(train_x))]
        report["constant_features"] = constant
        if constant:
            report["warnings"].append(f"constant feature(s) in the train split, no information for the model: "
                                      f"{', '.join(constant[:10])}{' ...' if len(constant) > 10 else ''}")
    report["features_after_encoding"] = len(prepared.features) if prepared.kind == "tabular" else None
    preprocessing = {"normalize": normalize, **prepared.preprocessing,
                     "augment": _augment_spec(recipe.data, prepared)}
    return {
        "format_version": FORMAT_VERSION,
        "bigmodel_version": __version__,
        "name": recipe.name,
        "task": recipe.task,
        "kind": prepared.kind,
        "source": recipe.data.source,
        "source_sha256": raw.sha256,
        "target": prepared.target,
        "classes": prepared.classes,
        "features": prepared.features,
        "input_shape": list(prepared.x.shape[1:]),
        "input_dtype": str(prepared.x.dtype),
        "splits": report["split_sizes"],
        "seed": recipe.seed,
        "preprocessing": preprocessing,
        "report": report,
    }


# ---------------------------------------------------------------- tables and texts


def _prepare_table(raw: RawTable, recipe, report: dict[str, Any]) -> Prepared:
    data, table = recipe.data, raw.table
    where = str(raw.path) if raw.path else recipe.data.source
    report["rows_read"] = table.num_rows
    target = _target_name(data, raw, table.column_names, where)
    text = _is_text(data, table, target)
    features = _feature_columns(data, table.column_names, target, text, where)
    if text:
        unused = [c for c in table.column_names if c not in {target, data.text_column, data.split.column, *data.drop}]
        if unused:
            report["warnings"].append(f"text data from column '{data.text_column}': column(s) {', '.join(unused[:10])} "
                                      f"not used (set data.kind: tabular to use them as features)")
    for name in features:  # unsupported types (dates, nested values) named before any work
        preprocess.column_kind(table[name], name)
    rows = np.arange(table.num_rows)

    absent = clean.absent(table[target])
    if absent.all():
        raise UsageError(f"{where}: target column '{target}' has no values (every row is missing it)")
    report["missing_target_dropped"] = int(absent.sum())
    if absent.any():
        table, rows = table.filter(~absent), rows[~absent]
    y, classes = _encode_target(table[target], recipe.task, raw.classes, target, where)

    if data.dedupe:
        keep = clean.first_occurrences([table[c] for c in features], y)
        report["duplicates_dropped"] = int(table.num_rows - len(keep))
        if len(keep) < table.num_rows:
            table, rows, y = table.take(keep), rows[keep], y[keep]
    else:
        report["duplicates_dropped"] = 0

    if text:
        return _finish_text(table, rows, y, classes, target, recipe, report)
    missing = {c: preprocess.missing_count(table[c]) for c in features}
    table, rows, y, dropped = clean.drop_rows_missing(table, rows, y, features, data)
    report["rows_dropped_missing"] = dropped
    index = _split(table, rows, y, classes, recipe, report)
    index = _remove_outliers(table, index, features, data, report)

    warnings = report["warnings"]
    spec = preprocess.fit_table(table.take(index["train"]), features, data, warnings)
    report["missing_values"] = _missing_report(missing, spec, dropped)
    x = preprocess.apply_table(spec, table, rows)
    return Prepared("tabular", x, y, index, spec["features"], classes, target, {"table": spec})


def _finish_text(table, rows, y, classes, target, recipe, report) -> Prepared:
    data = recipe.data
    column = table[data.text_column]
    report["missing_values"] = {data.text_column: {"missing": int(column.null_count), "action": "empty text"}} \
        if column.null_count else {}
    report["rows_dropped_missing"] = {}
    index = _split(table, rows, y, classes, recipe, report)
    texts = ["" if t is None else str(t) for t in column.to_pylist()]
    spec = preprocess.fit_text([texts[i] for i in index["train"]], data.text)
    spec["column"] = data.text_column
    x = preprocess.apply_text(spec, texts)
    report["text"] = _text_report(x, texts, index, spec)
    return Prepared("text", x, y, index, [data.text_column], classes, target, {"text": spec})


def _target_name(data, raw: RawTable, columns: list[str], where: str) -> str:
    if data.target:
        if data.target not in columns:
            near = difflib.get_close_matches(data.target, columns, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f" (columns: {', '.join(columns[:20])})"
            raise UsageError(f"{where}: target column '{data.target}' not found{hint}")
        return data.target
    for name in (raw.default_target, *DEFAULT_TARGETS):
        if name and name in columns:
            return name
    raise UsageError(f"{where}: data.target is not set and no column is named target/label/class "
                     f"(columns: {', '.join(columns[:20])}); set --set data.target=COLUMN")


def _is_text(data, table, target: str) -> bool:
    if data.kind == "text":
        if data.text_column not in table.column_names:
            _no_column(data.text_column, table.column_names, "data.text_column")
        return True
    if data.kind != "auto" or data.features is not None or data.text_column not in table.column_names:
        return False
    return preprocess.column_kind(table[data.text_column], data.text_column) == "categorical"


def _no_column(name: str, columns: list[str], key: str) -> None:
    near = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f" (columns: {', '.join(columns[:20])})"
    raise UsageError(f"{key}: column '{name}' not found{hint}")


def _feature_columns(data, columns: list[str], target: str, text: bool, where: str) -> list[str]:
    """Check every column the recipe names, then the feature columns: data.features, or all but target/drop/split."""
    named = [("data.drop", c) for c in data.drop] + [("data.features", c) for c in data.features or []]
    named += [(f"data.impute.columns.{c}", c) for c in data.impute.columns]
    named += [(f"data.impute.fill_value.{c}", c) for c in data.impute.fill_value]
    named += [(f"data.categorical.columns.{c}", c) for c in data.categorical.columns]
    named += [(f"data.binning.columns.{c}", c) for c in data.binning.columns]
    named += [("data.outliers.columns", c) for c in data.outliers.columns or []]
    named += [("data.split.column", data.split.column)] if data.split.column else []
    for key, name in named:
        if name not in columns:
            _no_column(name, columns, key)
    if text:
        return [data.text_column]
    excluded = {target, data.split.column, *data.drop}
    if data.features is not None:
        if target in data.features:
            raise UsageError(f"data.features: lists the target column '{target}'")
        features = list(data.features)
    else:
        features = [c for c in columns if c not in excluded]
    if not features:
        raise UsageError(f"{where}: no feature columns left (target '{target}', data.drop {data.drop})")
    return features


def _encode_target(column, task: str, names: list[str] | None, target: str, where: str):
    """Class indices (int64) with classes in a stable sorted order, or float32 values for regression."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = preprocess.column_kind(column, target)
    if task == "regression":
        if kind != "numeric":
            raise UsageError(f"{where}: target column '{target}' is not numeric; set task: classification")
        return preprocess.numbers(column, target).astype(np.float32), None
    if kind == "numeric":
        values = preprocess.numbers(column, target)
        if names is not None:
            return values.astype(np.int64), list(names)
        uniq = np.unique(values)
        if np.any(uniq != np.round(uniq)) or (len(uniq) > MAX_CLASSES_FROM_NUMBERS and len(uniq) > len(values) / 10):
            raise UsageError(f"{where}: target column '{target}' has {len(uniq)} distinct numeric values; "
                             f"set task: regression (or make it a column of class labels)")
        return np.searchsorted(uniq, values).astype(np.int64), [number_label(u) for u in uniq]
    text = preprocess.strings(column)
    classes = sorted(v for v in pc.unique(text).to_pylist() if v is not None)
    index = pc.index_in(text, value_set=pa.array(classes, pa.string()))
    return np.asarray(index.to_numpy(), dtype=np.int64), classes


def number_label(value: float) -> str:
    """A numeric class value as its class name: integral numbers without '.0' (eval --data reads labels so too)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _split(table, rows: np.ndarray, y: np.ndarray, classes, recipe, report) -> dict[str, np.ndarray]:
    cfg = recipe.data.split
    if cfg.column:
        report["split_method"] = f"column '{cfg.column}'"
        return split.split_by_column(table[cfg.column].to_pylist(), cfg.column, rows)
    stratify = cfg.stratify and classes is not None
    report["split_method"] = f"{'stratified' if stratify else 'random'}, seed {recipe.seed}"
    return split.split_rows(len(y), y if stratify else None, cfg.val, cfg.test, recipe.seed, stratify, classes)


def _remove_outliers(table, index: dict[str, np.ndarray], features: list[str], data, report) -> dict[str, np.ndarray]:
    """Drop train rows with an outlying numeric value (val/test are kept whole: they must look like real data)."""
    cfg = data.outliers
    if cfg.method == "none":
        report["outliers"] = None
        return index
    names = cfg.columns or [c for c in features if preprocess.column_kind(table[c], c) == "numeric"]
    for name in names:
        if preprocess.column_kind(table[name], name) != "numeric":
            raise UsageError(f"data.outliers.columns: '{name}' is not numeric")
    train = index["train"]
    masks = preprocess.outlier_rows(table.take(train), names, cfg.method, cfg.threshold)
    out = np.zeros(len(train), dtype=bool)
    for mask in masks.values():
        out |= mask
    report["outliers"] = {"method": cfg.method, "threshold": cfg.threshold or (3.0 if cfg.method == "zscore" else 1.5),
                          "removed_from_train": int(out.sum()),
                          "columns": {k: int(m.sum()) for k, m in masks.items() if m.any()}}
    if out.all():
        raise UsageError(f"data.outliers: every training row is an outlier ({cfg.method}); raise the threshold")
    return {**index, "train": train[~out]}


def _missing_report(missing: dict[str, int], spec: dict[str, Any], dropped: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in spec["columns"]:
        count = missing.get(c["name"], 0)
        if not count:
            continue
        if c["impute"] == "drop":
            action = f"{dropped.get(c['name'], 0)} row(s) dropped"
        elif c["impute"] == "constant":
            action = f"filled with constant {c['fill']!r}"
        else:
            value = round(c["fill"], 6) if isinstance(c["fill"], float) else c["fill"]
            action = f"filled with {c['impute']} {value!r} (from train)"
        out[c["name"]] = {"missing": count, "action": action}
    return out


def _text_report(x: np.ndarray, texts: list[str], index, spec) -> dict[str, Any]:
    lengths = (x != spec["pad_id"]).sum(axis=1)
    out: dict[str, Any] = {"vocab_size": spec["vocab_size"], "max_length": spec["max_length"],
                           "truncated": int((lengths >= spec["max_length"]).sum())}
    for s, rows in index.items():
        if len(rows):
            ids = x[rows]
            real = max(1, int((ids != spec["pad_id"]).sum()))
            out[f"unknown_token_rate_{s}"] = round(float((ids == spec["unk_id"]).sum()) / real, 6)
    return out


# ---------------------------------------------------------------- images


def _prepare_images(raw: RawImages, recipe, report: dict[str, Any]) -> Prepared:
    data = recipe.data
    report["rows_read"] = int(len(raw.x) + len(raw.bad_files))
    report["bad_files"] = raw.bad_files
    report["warnings"].extend(raw.notes)
    x, y = _resize_arrays(raw.x, data.image.size, data.image.channels), raw.y
    report["missing_target_dropped"] = 0
    keep = clean.first_image_rows(x, y) if data.dedupe else np.arange(len(y))
    report["duplicates_dropped"] = int(len(y) - len(keep))
    position = np.full(len(y), -1, dtype=np.int64)
    position[keep] = np.arange(len(keep))
    x, y = x[keep], y[keep]
    cfg = data.split
    if raw.predefined is not None and cfg.predefined:
        own = {s: position[rows][position[rows] >= 0] for s, rows in raw.predefined.items()}
        train, val = split.carve_val(own["train"], y, cfg.val, recipe.seed, cfg.stratify, raw.classes)
        index = {"train": train, "val": val, "test": own["test"]}
        report["split_method"] = f"the dataset's own train/test; val cut from train (seed {recipe.seed})"
    else:
        index = split.split_rows(len(y), y, cfg.val, cfg.test, recipe.seed, cfg.stratify, raw.classes)
        report["split_method"] = f"{'stratified' if cfg.stratify else 'random'}, seed {recipe.seed}"
    spec = {"size": [int(x.shape[2]), int(x.shape[3])], "channels": int(x.shape[1])}
    return Prepared("image", x, y, index, ["pixels"], raw.classes, raw.target, {"image": spec})


def _resize_arrays(x: np.ndarray, size: int | None, channels: int | None) -> np.ndarray:
    """Arrays from sklearn/torchvision brought to data.image.size/channels (a no-op when they already match)."""
    from bigmodel_cli.data.images import to_array

    c, h, w = x.shape[1:]
    if (size is None or (h, w) == (size, size)) and (channels is None or channels == c):
        return x
    size_hw = (size, size) if size else (w, h)
    out = np.empty((len(x), channels or c, size_hw[1], size_hw[0]), dtype=np.uint8)
    for i, image in enumerate(x):
        out[i] = to_array(image[0] if c == 1 else image.transpose(1, 2, 0), size_hw, channels or c)
    return out


# ---------------------------------------------------------------- normalisation and augmentation


def _moments(x: np.ndarray, axis_groups: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature (or per-channel) mean, std, min and max in float64, in chunks of rows (bounded memory)."""
    flat = x.reshape(len(x), -1) if axis_groups == "feature" else x.reshape(len(x), x.shape[1], -1)
    size = flat.shape[1]
    total, squares = np.zeros(size), np.zeros(size)
    low, high = np.full(size, np.inf), np.full(size, -np.inf)
    count = 0
    for start in range(0, len(flat), 65536):
        chunk = flat[start:start + 65536].astype(np.float64)
        if axis_groups == "channel":
            count += chunk.shape[0] * chunk.shape[2]
            total += chunk.sum(axis=(0, 2))
            squares += np.square(chunk).sum(axis=(0, 2))
            low, high = np.minimum(low, chunk.min(axis=(0, 2))), np.maximum(high, chunk.max(axis=(0, 2)))
        else:
            count += len(chunk)
            total += chunk.sum(axis=0)
            squares += np.square(chunk).sum(axis=0)
            low, high = np.minimum(low, chunk.min(axis=0)), np.maximum(high, chunk.max(axis=0))
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return mean, std, low, high


def _fit_normalize(x: np.ndarray, prepared: Prepared, scaling: str) -> dict[str, Any]:
    """Affine input normalisation `(x * scale - mean) / std`, fitted on train, applied inside the model.

    Images: per channel, on pixel values scaled to [0, 1]. Tables: per feature (one-hot
    indicators stay 0/1). Text: none (token ids go to an embedding).
    """
    if prepared.kind == "text":
        return {"scale": 1.0, "mean": [0.0], "std": [1.0], "per": "none", "method": "none"}
    if prepared.kind == "image":
        mean, std, _, _ = _moments(x, "channel")
        mean, std = mean / 255.0, std / 255.0
        return {"scale": 1.0 / 255.0, "mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist(),
                "per": "channel", "method": "standard"}
    mean, std, low, high = _moments(x, "feature")
    if scaling == "minmax":
        mean, std = low, high - low
    elif scaling == "none":
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    onehot = preprocess.onehot_mask(prepared.preprocessing["table"])
    mean, std = np.where(onehot, 0.0, mean), np.where(onehot | ~(std > 0), 1.0, std)
    return {"scale": 1.0, "mean": mean.tolist(), "std": std.tolist(), "per": "feature", "method": scaling}


def _constant(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2 or len(x) == 0:
        return np.zeros(x.shape[1] if x.ndim == 2 else 0, dtype=bool)
    return np.all(x == x[:1], axis=0)


def _summary(y: np.ndarray) -> dict[str, float]:
    return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}


def _augment_spec(data, prepared: Prepared) -> dict[str, Any] | None:
    """The declared augmentation, checked against the data; None when nothing is declared."""
    spec = data.augment.model_dump(exclude_defaults=True)
    if not spec:
        return None
    if prepared.kind != "image":
        raise UsageError(f"data.augment: augmentation is for images; this source is {prepared.kind}")
    jitter = spec.get("color_jitter") or {}
    grey = prepared.x.shape[1] == 1
    if grey and (spec.get("grayscale") or jitter.get("saturation") or jitter.get("hue")):
        raise UsageError("data.augment: grayscale, saturation and hue need RGB images; these have 1 channel")
    height = prepared.x.shape[2]
    if spec.get("crop_padding") and spec["crop_padding"] >= height:
        raise UsageError(f"data.augment.crop_padding {spec['crop_padding']}: must be below the image size {height}")
    return spec
