"""prepare-data for a table or a text table, streamed: each step is a pass over the rows, a chunk at a time.

    prepared = prepare_table(raw, recipe, report, scratch)   # raw.table memory-mapped by sources.read_source

The steps and results of `prepare.py` on a table held in memory, with every per-row state
(kept or dropped, the target, the split) in a file-backed array of `scratch`: private
memory stays flat however many rows the table has. Columns are read a record batch at a
time from the memory-mapped Arrow file; fitted values that need all train values at once
(a median, quantiles) are computed on a file-backed copy of that one column.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bigmodel_cli.data import clean, preprocess, split
from bigmodel_cli.data.arrays import Scratch, chunks
from bigmodel_cli.data.prepared import DEFAULT_TARGETS, Prepared, number_label
from bigmodel_cli.data.sources import RawTable
from bigmodel_cli.errors import UsageError

MAX_CLASSES_FROM_NUMBERS = 100
MANY_NUMERIC_CLASSES = 10  # a numeric target with more classes than this may well be a quantity
STEP = 1 << 20  # rows per chunk of the per-row arrays


class Rows:
    """A table and its per-row state: which rows are kept, then each row's split (split.TRAIN/VAL/TEST or NONE)."""

    def __init__(self, table: pa.Table, scratch: Scratch):
        self.table, self.scratch, self.n = table, scratch, table.num_rows
        self.kept = scratch.array("kept", np.bool_, self.n, fill=True)
        self.labels = scratch.array("split", np.uint8, self.n, fill=split.NONE)

    def type(self, name: str) -> pa.DataType:
        return self.table.schema.field(name).type

    def chunks(self, name: str) -> Iterator[tuple[int, pa.Array]]:
        """(first row, values) of the column, one record batch at a time."""
        start = 0
        for batch in self.table.select([name]).to_batches():
            yield start, batch.column(0)
            start += batch.num_rows

    def batches(self, names: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        start = 0
        for batch in self.table.select(names).to_batches():
            yield start, batch
            start += batch.num_rows

    def where(self, name: str, code: int) -> Iterator[tuple[np.ndarray, pa.Array]]:
        """(row numbers, values) of the column's rows in split `code`, a batch at a time."""
        for start, chunk in self.chunks(name):
            mask = self.labels[start:start + len(chunk)] == code
            if mask.any():
                yield np.flatnonzero(mask) + start, chunk.filter(pa.array(mask))

    def count_kept(self) -> int:
        return sum(int(np.count_nonzero(self.kept[a:b])) for a, b in chunks(self.n, STEP))

    def count(self, code: int) -> int:
        return sum(int(np.count_nonzero(self.labels[a:b] == code)) for a, b in chunks(self.n, STEP))


def prepare_table(raw: RawTable, recipe, report: dict[str, Any], scratch: Scratch) -> Prepared:
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
    rows = Rows(table, scratch)
    for name in features:  # unsupported types (dates, nested values) named before any work
        preprocess.column_kind(rows.type(name), name)

    report["missing_target_dropped"] = _drop_absent(rows, target, where)
    y, classes, numeric_classes = _encode_target(rows, target, recipe.task, raw.classes, where)
    if recipe.task == "classification" and classes is not None and len(classes) < 2:
        raise UsageError(f"{where}: target column '{target}' has one class ({classes[0]!r}); a classification "
                         f"task needs at least two classes")
    report["duplicates_dropped"] = _drop_duplicates(rows, features, y, text, data) if data.dedupe else 0

    if text:
        return _finish_text(rows, y, classes, target, recipe, report)
    missing = _missing_counts(rows, features)
    dropped = _drop_missing(rows, features, data)
    report["rows_dropped_missing"] = dropped
    _split(rows, y, classes, numeric_classes, target, where, recipe, report)
    _remove_outliers(rows, features, data, report)

    warnings = report["warnings"]
    types = {name: rows.type(name) for name in features}
    spec = preprocess.fit_table(lambda name: (chunk for _, chunk in rows.where(name, split.TRAIN)), features, types,
                                rows.count(split.TRAIN), data, warnings, scratch.array)
    report["missing_values"] = _missing_report(missing, spec, dropped)

    def x_chunks(name: str) -> Iterator[np.ndarray]:
        code = split.CODES[name]
        for start, batch in rows.batches(features):
            mask = rows.labels[start:start + batch.num_rows] == code
            if mask.any():
                part = pa.Table.from_batches([batch]).filter(pa.array(mask))
                yield preprocess.apply_table(spec, part, np.flatnonzero(mask) + start)

    return Prepared("tabular", spec["features"], classes, target, {"table": spec}, (len(spec["features"]),),
                    np.float32, y.dtype, _sizes(rows), x_chunks, _y_chunks(rows, y))


def _sizes(rows: Rows) -> dict[str, int]:
    return {name: rows.count(code) for name, code in split.CODES.items()}


def _y_chunks(rows: Rows, y: np.ndarray):
    def y_chunks(name: str) -> Iterator[np.ndarray]:
        code = split.CODES[name]
        for a, b in chunks(rows.n, STEP):
            yield y[a:b][rows.labels[a:b] == code]

    return y_chunks


# ---------------------------------------------------------------- target


def _drop_absent(rows: Rows, target: str, where: str) -> int:
    """Rows without a target are dropped; their number."""
    count = 0
    for start, chunk in rows.chunks(target):
        missing = clean.absent(chunk)
        rows.kept[start:start + len(chunk)] &= ~missing
        count += int(missing.sum())
    if count == rows.n:
        raise UsageError(f"{where}: target column '{target}' has no values (every row is missing it)")
    return count


def _encode_target(rows: Rows, target: str, task: str, names: list[str] | None, where: str):
    """(y per row, classes, distinct numbers when the classes came from a numeric column): class indices (int64) with
    classes in a stable sorted order, or float32 values for regression."""
    kind = preprocess.column_kind(rows.type(target), target)
    if task == "regression":
        if kind != "numeric":
            raise UsageError(f"{where}: target column '{target}' is not numeric; set task: classification")
        y = rows.scratch.array("y", np.float32, rows.n)
        for start, chunk in rows.chunks(target):
            y[start:start + len(chunk)] = preprocess.numbers(chunk, target).astype(np.float32)
        return y, None, None
    y = rows.scratch.array("y", np.int64, rows.n)
    if kind == "numeric":
        if names is not None:
            for start, chunk in rows.chunks(target):
                values = preprocess.numbers(chunk, target)
                values[np.isnan(values)] = 0
                y[start:start + len(chunk)] = values.astype(np.int64)
            return y, list(names), None
        uniq = _distinct_numbers(rows, target, where)
        for start, chunk in rows.chunks(target):
            y[start:start + len(chunk)] = np.searchsorted(uniq, preprocess.numbers(chunk, target))
        return y, [number_label(u) for u in uniq], len(uniq)
    seen: set[str] = set()
    for _, chunk in rows.chunks(target):
        seen.update(v for v in pc.unique(preprocess.strings(chunk)).to_pylist() if v is not None)
    classes = sorted(seen)
    value_set = pa.array(classes, pa.string())
    for start, chunk in rows.chunks(target):
        index = pc.fill_null(pc.index_in(preprocess.strings(chunk), value_set=value_set), 0)
        y[start:start + len(chunk)] = index.to_numpy(zero_copy_only=False)
    return y, classes, None


def _distinct_numbers(rows: Rows, target: str, where: str) -> np.ndarray:
    """The sorted distinct values of a numeric target read as classes; refused when they look like a quantity."""
    present = rows.count_kept()
    limit = max(MAX_CLASSES_FROM_NUMBERS, present // 10)
    uniq = np.zeros(0)
    for _, chunk in rows.chunks(target):
        values = preprocess.numbers(chunk, target)
        values = np.unique(values[~np.isnan(values)])
        fraction = values[values != np.round(values)]
        if len(fraction):
            raise UsageError(f"{where}: target column '{target}' holds non-integer numbers (such as "
                             f"{fraction[0]!r}); set task: regression (or make it a column of class labels)")
        uniq = np.union1d(uniq, values)
        if len(uniq) > MAX_CLASSES_FROM_NUMBERS and len(uniq) > present / 10:
            raise UsageError(f"{where}: target column '{target}' has more than {limit} distinct numeric values; "
                             f"set task: regression (or make it a column of class labels)")
    return uniq


def number_classes_problem(counts: np.ndarray, classes: list[str], distinct: int, target: str, where: str,
                           val: float, test: float) -> str | None:
    """For a numeric target read as many classes, some too small to split: the advice to treat it as a quantity."""
    small = split.smallest_class(counts, val, test)
    if not small or distinct <= MANY_NUMERIC_CLASSES:
        return None
    c, size, needed = small
    return (f"{where}: target column '{target}' holds {distinct} distinct numbers and class '{classes[c]}' has only "
            f"{size} row(s); if it is a quantity to predict, set task: regression (as classes, a stratified split "
            f"needs at least {needed} rows per class)")


# ---------------------------------------------------------------- cleaning


def _drop_duplicates(rows: Rows, features: list[str], y: np.ndarray, text: bool, data) -> int:
    """Drop every kept row equal to an earlier kept row (all feature columns and the target); their number."""
    keys = clean.RowKeys(rows.n, rows.scratch.array)
    for name in features:
        numeric = preprocess.column_kind(rows.type(name), name) == "numeric"
        codes = clean.CategoryCodes()
        for start, chunk in rows.chunks(name):
            if numeric:
                keys.add_numbers(start, preprocess.numbers(chunk, name))
            elif text:
                keys.add_texts(start, preprocess.strings(chunk).to_pylist())
            else:
                keys.add(start, codes(chunk))
    for a, b in chunks(rows.n, STEP):
        keys.add(a, y[a:b].astype(np.float64).view(np.uint64))
    duplicates = keys.duplicates(rows.kept, rows.scratch.array)
    rows.kept[duplicates] = False
    return len(duplicates)


def _missing_counts(rows: Rows, features: list[str]) -> dict[str, int]:
    out = {}
    for name in features:
        count = 0
        for start, chunk in rows.chunks(name):
            count += int(np.count_nonzero(clean.absent(chunk) & rows.kept[start:start + len(chunk)]))
        out[name] = count
    return out


def _impute_strategy(rows: Rows, name: str, data) -> str:
    kind = preprocess.column_kind(rows.type(name), name)
    return data.impute.columns.get(name) or (data.impute.numeric if kind == "numeric" else data.impute.categorical)


def _drop_missing(rows: Rows, features: list[str], data) -> dict[str, int]:
    """Rows with a missing value in a column whose imputation is `drop` (before the split: cleaning, not fitting)."""
    dropped: dict[str, int] = {}
    for name in features:
        if _impute_strategy(rows, name, data) != "drop":
            continue
        count = 0
        for start, chunk in rows.chunks(name):
            kept = rows.kept[start:start + len(chunk)]
            missing = clean.absent(chunk) & kept
            count += int(missing.sum())
            kept &= ~missing
        dropped[name] = count
    if dropped and sum(dropped.values()) and not rows.count_kept():
        raise UsageError(f"every row has a missing value in a column whose data.impute is 'drop' "
                         f"({', '.join(k for k, v in dropped.items() if v)})")
    return dropped


# ---------------------------------------------------------------- split and outliers


def _split(rows: Rows, y: np.ndarray, classes, numeric_classes: int | None, target: str, where: str, recipe,
           report) -> None:
    cfg = recipe.data.split
    if cfg.column:
        report["split_method"] = f"column '{cfg.column}'"
        _split_by_column(rows, cfg.column)
        return
    stratify = cfg.stratify and classes is not None
    report["split_method"] = f"{'stratified' if stratify else 'random'}, seed {recipe.seed}"
    if stratify and numeric_classes:
        counts = split.class_counts(y, rows.kept, len(classes))
        problem = number_classes_problem(counts, classes, numeric_classes, target, where, cfg.val, cfg.test)
        if problem:
            raise UsageError(problem)
    split.label_rows(rows.labels, rows.kept, y if stratify else None, cfg.val, cfg.test, recipe.seed, stratify,
                     classes, new_array=rows.scratch.array)


def _split_by_column(rows: Rows, column: str) -> None:
    """Each kept row's split from a column holding train|val|test (validation/valid/dev accepted for val)."""
    for start, chunk in rows.chunks(column):
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        encoded = pc.dictionary_encode(chunk, null_encoding="encode")
        codes = np.asarray([split.split_code(v) or split.NONE for v in encoded.dictionary.to_pylist()], np.uint8)
        labels = codes[encoded.indices.to_numpy(zero_copy_only=False)] if len(codes) else np.zeros(0, np.uint8)
        kept = rows.kept[start:start + len(chunk)]
        bad = np.flatnonzero(kept & (labels == split.NONE))
        if len(bad):
            raise UsageError(f"data.split.column '{column}': row {start + int(bad[0]) + 1} has "
                             f"{chunk[int(bad[0])].as_py()!r}; expected train, val or test")
        rows.labels[start:start + len(chunk)] = np.where(kept, labels, split.NONE)
    if not rows.count(split.TRAIN):
        raise UsageError(f"data.split.column '{column}': no row is marked train")


def _remove_outliers(rows: Rows, features: list[str], data, report) -> None:
    """Drop train rows with an outlying numeric value (val/test are kept whole: they must look like real data)."""
    cfg = data.outliers
    if cfg.method == "none":
        report["outliers"] = None
        return
    names = cfg.columns or [c for c in features if preprocess.column_kind(rows.type(c), c) == "numeric"]
    for name in names:
        if preprocess.column_kind(rows.type(name), name) != "numeric":
            raise UsageError(f"data.outliers.columns: '{name}' is not numeric")
    n_train = rows.count(split.TRAIN)
    bounds = {}
    for name in names:
        values = rows.scratch.array(f"outliers-{name}", np.float64, n_train)
        k = preprocess.gather_numbers((chunk for _, chunk in rows.where(name, split.TRAIN)), name, values)
        found = preprocess.outlier_bounds(values[:k], cfg.method, cfg.threshold, rows.scratch.array)
        if found is not None:
            bounds[name] = found
    counts = dict.fromkeys(bounds, 0)
    out = rows.scratch.array("outliers", np.bool_, rows.n, fill=False)
    for name, (low, high) in bounds.items():
        for start, chunk in rows.chunks(name):
            values = preprocess.numbers(chunk, name)
            train = rows.labels[start:start + len(chunk)] == split.TRAIN
            with np.errstate(invalid="ignore"):
                mask = train & ((values < low) | (values > high))
            counts[name] += int(mask.sum())
            out[start:start + len(chunk)] |= mask
    removed = sum(int(np.count_nonzero(out[a:b])) for a, b in chunks(rows.n, STEP))
    report["outliers"] = {"method": cfg.method, "threshold": cfg.threshold or (3.0 if cfg.method == "zscore" else 1.5),
                          "removed_from_train": removed, "columns": {k: v for k, v in counts.items() if v}}
    if removed == n_train:
        raise UsageError(f"data.outliers: every training row is an outlier ({cfg.method}); raise the threshold")
    for a, b in chunks(rows.n, STEP):
        rows.labels[a:b][out[a:b]] = split.NONE


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


# ---------------------------------------------------------------- texts


def _finish_text(rows: Rows, y: np.ndarray, classes, target: str, recipe, report) -> Prepared:
    data = recipe.data
    column = data.text_column
    missing = 0
    for start, chunk in rows.chunks(column):
        nulls = pc.is_null(chunk).to_numpy(zero_copy_only=False)
        missing += int(np.count_nonzero(nulls & rows.kept[start:start + len(chunk)]))
    report["missing_values"] = {column: {"missing": missing, "action": "empty text"}} if missing else {}
    report["rows_dropped_missing"] = {}
    _split(rows, y, classes, None, target, "", recipe, report)

    def texts(code: int) -> Iterator[list[str]]:
        for _, chunk in rows.where(column, code):
            yield ["" if t is None else str(t) for t in chunk.to_pylist()]

    extra: dict[str, Any] = {}
    if data.text.tokenizer == "model":  # the model folder's own tokenizer (pre-trained transformers)
        spec, extra["hf"] = preprocess.fit_model_tokenizer(recipe.model.path, data.text, recipe.task)
    else:
        spec = preprocess.fit_text((t for part in texts(split.TRAIN) for t in part), data.text)
    spec["column"] = column
    stats = {"truncated": 0, **{s: [0, 0] for s in split.CODES}}  # per split: real tokens, unknown tokens

    def x_chunks(name: str) -> Iterator[np.ndarray]:
        for part in texts(split.CODES[name]):
            yield preprocess.apply_text(spec, part)

    def observe(name: str, ids: np.ndarray) -> None:
        real = ids != spec["pad_id"]
        stats["truncated"] += int((real.sum(axis=1) >= spec["max_length"]).sum())
        stats[name][0] += int(real.sum())
        stats[name][1] += int((ids == spec["unk_id"]).sum()) if spec["unk_id"] is not None else 0

    def finish(out: dict[str, Any]) -> None:
        text = {"vocab_size": spec["vocab_size"], "max_length": spec["max_length"], "truncated": stats["truncated"],
                **({"model_tokenizer": True} if "hf" in extra else {})}
        for name in split.CODES:
            if out["split_sizes"][name]:
                real, unknown = stats[name]
                text[f"unknown_token_rate_{name}"] = round(float(unknown) / max(1, real), 6)
        out["text"] = text

    return Prepared("text", [column], classes, target, {"text": spec, **extra}, (spec["max_length"],), np.int32,
                    y.dtype, _sizes(rows), x_chunks, _y_chunks(rows, y), observe=observe, finish=finish)


# ---------------------------------------------------------------- columns


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
    return preprocess.column_kind(table.schema.field(data.text_column).type, data.text_column) == "categorical"


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
