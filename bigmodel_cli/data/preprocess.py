"""The fitted preprocessing: learnt on the train split only, then applied to every split and to new raw inputs.

    spec = fit_table(train_chunks, names, types, n_train, data, warnings)   # imputation, categories, bins
    x = apply(manifest, [{"age": 41, "city": "Oslo"}])       # raw rows -> float32 [N, F]
    x = apply(manifest, ["photo.jpg"])                       # raw images -> uint8 [N, C, H, W]
    x = apply(manifest, ["a fine film"])                     # raw texts -> int32 token ids [N, L]

`apply` is the one function from raw inputs to the arrays a model is trained on; prepare-data
uses it for train, val and test alike, and eval/serve use it for new data, so no step can
differ between them. The affine normalisation (mean/std) is not here: it lives inside the
model (`transform.Normalize`). No torch import: this runs in prepare-data.

The fits read the train rows a chunk at a time; what needs every value at once (a mean
summed pairwise, a median, quantiles, the most frequent number) works on a file-backed
array of the column's values, with numpy's own functions, so that the results are those of
numpy on the whole column in memory.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bigmodel_cli.errors import UsageError, first_line

NUMERIC_IMPUTE = ("mean", "median", "most_frequent", "constant", "drop")
PAD, UNK = "[PAD]", "[UNK]"


# ---------------------------------------------------------------- one entry point


def apply(manifest: dict[str, Any], raw: Any) -> np.ndarray:
    """Raw rows (pyarrow Table, pandas DataFrame, list of dicts, dict of lists), images or texts -> model inputs."""
    pre, kind = manifest["preprocessing"], manifest["kind"]
    if kind == "tabular":
        return apply_table(pre["table"], as_table(raw))
    if kind == "image":
        return apply_images(pre["image"], raw)
    if kind == "text":
        return apply_text(pre["text"], raw)
    raise UsageError(f"manifest kind '{kind}' is not tabular, image or text; rerun prepare-data")


def as_table(raw: Any) -> pa.Table:
    if isinstance(raw, pa.Table):
        return raw
    if isinstance(raw, dict):
        return pa.table({k: list(v) if not isinstance(v, (pa.Array, pa.ChunkedArray, np.ndarray)) else v
                         for k, v in raw.items()})
    if isinstance(raw, list):
        return pa.Table.from_pylist(raw)
    if type(raw).__name__ == "DataFrame":
        return pa.Table.from_pandas(raw, preserve_index=False)
    raise UsageError(f"cannot read rows from a {type(raw).__name__}; give a table, a list of dicts or a dict")


# ---------------------------------------------------------------- columns


def column_kind(column: pa.ChunkedArray | pa.Array | pa.DataType, name: str) -> str:
    """numeric | categorical; datetimes and nested values are refused with the way out."""
    t = column if isinstance(column, pa.DataType) else column.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
        return "categorical"
    if pa.types.is_temporal(t):
        raise UsageError(f"column '{name}' holds dates/times ({t}); convert it to numbers or list it in data.drop")
    raise UsageError(f"column '{name}' has unsupported type {t}; list it in data.drop")


def numbers(column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """float64 values with NaN for missing (nulls, NaN, +-inf)."""
    try:
        values = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UsageError(f"column '{name}': not numeric ({first_line(e)})") from None
    if isinstance(values, pa.ChunkedArray):
        out = values.to_numpy() if values.num_chunks else np.zeros(0)
    else:
        out = values.to_numpy(zero_copy_only=False)
    out = np.array(out, dtype=np.float64, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def strings(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    t = column.type
    if pa.types.is_string(t):
        return column
    if pa.types.is_boolean(t) or pa.types.is_dictionary(t) or pa.types.is_large_string(t):
        return pc.cast(column, pa.string())
    return pc.cast(column, pa.string())


def missing_count(column: pa.ChunkedArray) -> int:
    if column_kind(column, "") == "numeric":
        return int(np.isnan(numbers(column, "")).sum())
    return int(column.null_count)


def fit_table(train: Callable[[str], Iterator[pa.Array]], names: list[str], types: dict[str, pa.DataType],
              n_train: int, data, warnings: list[str], new_array: Callable[..., np.ndarray] | None = None
              ) -> dict[str, Any]:
    """Per-column imputation value, categories (sorted) and bin edges, from train rows only.

    `train(name)` yields the column's train values a chunk at a time; `new_array(name, dtype,
    n)` makes the work array for a numeric column's values (np.empty by default).
    """
    new_array = new_array or (lambda label, dtype, size: np.empty(size, dtype=dtype))
    columns = [_fit_column(train(name), types[name], n_train, name, data, warnings, new_array) for name in names]
    return {"columns": columns, "features": feature_names(columns)}


def _fit_column(chunks: Iterator[pa.Array], kind_type: pa.DataType, n_train: int, name: str, data,
                warnings: list[str], new_array: Callable[..., np.ndarray]) -> dict[str, Any]:
    kind = column_kind(kind_type, name)
    strategy = data.impute.columns.get(name) or (data.impute.numeric if kind == "numeric" else data.impute.categorical)
    if kind == "numeric":
        values = new_array(f"fit-{name}", np.float64, n_train)
        present = gather_numbers(chunks, name, values)
        return _fit_numeric(values, present, name, strategy, data, warnings)
    if strategy in ("mean", "median"):
        raise UsageError(f"data.impute.columns.{name}: '{strategy}' needs a numeric column; '{name}' holds "
                         f"categories (use most_frequent or constant)")
    if name in data.binning.columns:
        raise UsageError(f"data.binning.columns.{name}: '{name}' is not numeric")
    counted: dict[str, int] = {}
    for chunk in chunks:
        counts = pc.value_counts(pc.drop_null(strings(chunk)))
        for value, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            counted[value] = counted.get(value, 0) + count
    categories = sorted(counted)
    encoding = data.categorical.columns.get(name, data.categorical.encoding)
    if encoding == "onehot" and len(categories) > data.categorical.max_onehot:
        raise UsageError(f"column '{name}' has {len(categories)} categories, too many to one-hot encode "
                         f"(data.categorical.max_onehot={data.categorical.max_onehot}); list it in data.drop if "
                         f"it is an id, or set data.categorical.columns.{name}=ordinal")
    fill = None
    if strategy == "most_frequent":
        top = max(counted.values(), default=0)
        fill = min(v for v, f in counted.items() if f == top) if counted else "missing"
    elif strategy == "constant":
        fill = str(data.impute.fill_value.get(name, "missing"))
    if not categories:
        warnings.append(f"column '{name}' has no values in the train split")
    return {"name": name, "type": "categorical", "impute": strategy, "fill": fill, "encoding": encoding,
            "categories": categories}


def gather_numbers(chunks: Iterable[pa.Array], name: str, out: np.ndarray) -> int:
    """Write the present (finite) values of a numeric column into out[:k], in order; returns k."""
    k = 0
    for chunk in chunks:
        values = numbers(chunk, name)
        values = values[~np.isnan(values)]
        out[k:k + len(values)] = values
        k += len(values)
    return k


def _fit_numeric(values: np.ndarray, k: int, name: str, strategy: str, data, warnings: list[str]) -> dict[str, Any]:
    """`values[:k]` holds the present train values in row order (it is reordered here); len(values) train rows."""
    present = values[:k]
    if strategy == "constant":
        raw_fill = data.impute.fill_value.get(name, 0.0)
        try:
            fill: float | None = float(raw_fill)
        except ValueError:
            raise UsageError(f"data.impute.fill_value.{name}: '{raw_fill}' is not a number") from None
    elif strategy == "drop":
        fill = None
    elif k == 0:
        warnings.append(f"column '{name}' has no values in the train split; filled with 0")
        fill = 0.0
    elif strategy == "mean":
        fill = float(present.mean())
    elif strategy == "median":
        fill = float(np.median(present, overwrite_input=True))
    else:
        present.sort()
        fill = float(most_frequent_sorted(present))
    spec: dict[str, Any] = {"name": name, "type": "numeric", "impute": strategy, "fill": fill, "bins": None}
    if name in data.binning.columns:
        filled = present  # present values, and the fill for every missing one (order does not matter to edges)
        if fill is not None and not np.isnan(fill):
            values[k:] = fill
            filled = values
        spec["bins"] = _bin_edges(filled, data.binning.columns[name], data.binning.strategy, name)
    return spec


def most_frequent_sorted(values: np.ndarray) -> float:
    """The most frequent value of a sorted array, the smallest on ties (what np.unique + argmax give)."""
    best, best_count = values[0], 0
    current, count = values[0], 0
    for start in range(0, len(values), 1 << 20):
        part = values[start:start + (1 << 20)]
        starts = np.flatnonzero(np.concatenate(([part[0] != current], part[1:] != part[:-1])))
        if not len(starts):
            count += len(part)
            continue
        count += int(starts[0])
        if count > best_count:
            best, best_count = current, count
        lengths = np.diff(np.append(starts, len(part)))
        run_values = part[starts]
        # every run but the last is complete inside this chunk; the earliest longest one wins
        if len(starts) > 1:
            i = int(np.argmax(lengths[:-1]))
            if lengths[i] > best_count:
                best, best_count = run_values[i], int(lengths[i])
        current, count = run_values[-1], int(lengths[-1])
    if count > best_count:
        best = current
    return best


def _bin_edges(values: np.ndarray, bins: int, strategy: str, name: str) -> list[float]:
    if bins < 2:
        raise UsageError(f"data.binning.columns.{name}: needs at least 2 bins, got {bins}")
    if len(values) == 0:
        return []
    if strategy == "quantile":
        edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], overwrite_input=True)
    else:
        edges = np.linspace(values.min(), values.max(), bins + 1)[1:-1]
    return [float(e) for e in np.unique(edges)]


def feature_names(columns: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for c in columns:
        if c["type"] == "categorical" and c["encoding"] == "onehot":
            names.extend(f"{c['name']}={v}" for v in c["categories"])
        else:
            names.append(c["name"])
    return names


def onehot_mask(spec: dict[str, Any]) -> np.ndarray:
    """True for the features that are one-hot indicators (left as 0/1 by the normalisation)."""
    mask: list[bool] = []
    for c in spec["columns"]:
        onehot = c["type"] == "categorical" and c["encoding"] == "onehot"
        mask.extend([onehot] * (len(c["categories"]) if onehot else 1))
    return np.asarray(mask, dtype=bool)


def check_columns(spec: dict[str, Any], names: list[str]) -> None:
    """Exit 2 naming the first column the fitted table needs that `names` lacks, and the nearest one there."""
    missing = [c["name"] for c in spec["columns"] if c["name"] not in set(names)]
    if missing:
        near = difflib.get_close_matches(missing[0], names, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UsageError(f"column '{missing[0]}' is missing from the input{hint} "
                         f"(expected: {', '.join(c['name'] for c in spec['columns'])})")


def apply_table(spec: dict[str, Any], table: pa.Table, row_numbers: np.ndarray | None = None,
                bad: dict[int, str] | None = None) -> np.ndarray:
    """Impute, bin and encode raw rows into float32 [N, F]; unseen categories become all-zero (one-hot) or -1.

    A row that cannot be encoded (a value that is not a number in a numeric column, a missing
    value where the imputation is `drop`) is an exit-2 error naming it; with `bad` (a dict) it
    is recorded there instead, {index in `table`: reason}, and its features are left at 0.
    """
    check_columns(spec, table.column_names)
    n = table.num_rows
    features = np.zeros((len(spec["features"]), n), dtype=np.float32)  # feature-major: each one written in place
    j = 0
    for c in spec["columns"]:
        column = table[c["name"]]
        if c["type"] == "numeric":
            features[j] = _numeric_feature(c, column, row_numbers, bad)
            j += 1
            continue
        index = _category_index(c, column, row_numbers, bad)
        if c["encoding"] == "ordinal":
            features[j] = index
            j += 1
        else:
            rows = np.flatnonzero(index >= 0)
            features[j + index[rows], rows] = 1.0
            j += len(c["categories"])
    out = np.ascontiguousarray(features.T)
    if bad:
        out[np.fromiter(bad, dtype=np.int64, count=len(bad))] = 0.0
    return out


class FewRows:
    """`apply_table` for a few rows of JSON values (a request's rows), value by value in Python.

    Arrow costs tens of microseconds a call however few rows it is given, and `apply_table`
    makes several calls a column: about 0.3 ms for one churn row, where this takes a few
    hundredths of that. The features are the same (the test compares them on every kind of
    column). A value this does not read plainly (text in a numeric column, a number in a
    categorical one, a missing value whose imputation is `drop`, more than `MAX_ROWS` rows)
    makes it answer None, and the caller goes through `apply_table`, which reads it as
    Arrow does and names the fault.
    """

    MAX_ROWS = 64

    def __init__(self, spec: dict[str, Any]):
        self.width = len(spec["features"])
        self.plan: list[tuple[str, int, Any, Any, Any]] = []  # (name, first feature, fill, bins or categories, kind)
        j = 0
        for c in spec["columns"]:
            if c["type"] == "numeric":
                self.plan.append((c["name"], j, c["fill"], c["bins"], None))
                j += 1
            else:
                index = {v: i for i, v in enumerate(c["categories"])}
                self.plan.append((c["name"], j, c["fill"], index, c["encoding"]))
                j += 1 if c["encoding"] == "ordinal" else len(c["categories"])

    def __call__(self, columns: dict[str, Any], n: int) -> np.ndarray | None:
        """Column name -> n values (a list, or a numpy array) -> float32 [n, F], or None (see the class)."""
        if n > self.MAX_ROWS:
            return None
        out = np.zeros((n, self.width), dtype=np.float32)
        for name, j, fill, lookup, encoding in self.plan:
            values = columns[name]
            if isinstance(values, np.ndarray):
                values = values.tolist()
            for i, v in enumerate(values):
                if encoding is None:  # numeric
                    if v is None:
                        x = math.nan
                    elif type(v) is float or (type(v) is int and -2**53 <= v <= 2**53):
                        x = float(v)
                    else:
                        return None
                    if not math.isfinite(x):  # missing: the fill
                        if fill is None:
                            return None
                        x = fill
                    out[i, j] = x if lookup is None else bisect.bisect_right(lookup, x)
                    continue
                if v is None:
                    if fill is None:
                        return None
                    v = fill
                elif v is True or v is False:
                    v = "true" if v else "false"
                elif type(v) is not str:
                    return None
                k = lookup.get(v, -1)
                if encoding == "ordinal":
                    out[i, j] = k
                elif k >= 0:
                    out[i, j + k] = 1.0
        return out


def parse_numbers(column: pa.ChunkedArray | pa.Array, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 values (NaN for missing) and the mask of values that are not numbers (None when every one is).

    Columns read as numbers, or text whose every value Arrow parses as one, take `numbers`'
    vectorised path; text with a value that is not a number is parsed value by value.
    """
    try:
        return numbers(column, name), None
    except UsageError:
        pass
    texts = strings(column).to_pylist()
    values = np.full(len(texts), np.nan)
    wrong = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        if text is None or not text.strip():  # empty text is a missing value, as a CSV reader reads it
            continue
        try:
            values[i] = float(text)
        except ValueError:
            wrong[i] = True
    values[~np.isfinite(values)] = np.nan
    return values, wrong


def _numeric_feature(c: dict[str, Any], column, row_numbers: np.ndarray | None,
                     bad: dict[int, str] | None = None) -> np.ndarray:
    values, wrong = parse_numbers(column, c["name"])
    for i in np.flatnonzero(wrong) if wrong is not None else ():
        problem = f"column '{c['name']}' is {strings(column)[int(i)].as_py()!r}, not a number"
        if bad is None:
            raise UsageError(f"row {_row(int(i), row_numbers)}: {problem}")
        bad.setdefault(int(i), problem)
    absent = np.isnan(values)
    if absent.any():
        if c["fill"] is None:
            if bad is None:
                row = int(np.argmax(absent))
                raise UsageError(f"row {_row(row, row_numbers)}: column '{c['name']}' is missing and its imputation "
                                 f"is 'drop'; give a value")
            for i in np.flatnonzero(absent):
                bad.setdefault(int(i), f"column '{c['name']}' is missing and its imputation is 'drop'")
            values[absent] = 0.0
        else:
            values[absent] = c["fill"]
    if c["bins"] is not None:
        values = np.searchsorted(np.asarray(c["bins"]), values, side="right").astype(np.float64)
    return values


def _category_index(c: dict[str, Any], column, row_numbers: np.ndarray | None,
                    bad: dict[int, str] | None = None) -> np.ndarray:
    text = strings(column)
    if text.null_count:
        if c["fill"] is None:
            nulls = np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False) if isinstance(text, pa.Array)
                               else pc.is_null(text).to_numpy())
            if bad is None:
                raise UsageError(f"row {_row(int(np.argmax(nulls)), row_numbers)}: column '{c['name']}' is missing "
                                 f"and its imputation is 'drop'; give a value")
            for i in np.flatnonzero(nulls):
                bad.setdefault(int(i), f"column '{c['name']}' is missing and its imputation is 'drop'")
        else:
            text = pc.fill_null(text, c["fill"])
    index = pc.fill_null(pc.index_in(text, value_set=pa.array(c["categories"], pa.string())), -1)
    values = index.to_numpy() if isinstance(index, pa.ChunkedArray) else index.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.int64)


def _row(i: int, row_numbers: np.ndarray | None) -> int:
    return int(row_numbers[i]) + 1 if row_numbers is not None else i + 1


# ---------------------------------------------------------------- outliers (train rows only)


def outlier_bounds(present: np.ndarray, method: str, threshold: float | None,
                   new_array: Callable[..., np.ndarray]) -> tuple[float, float] | None:
    """(low, high) outside which a train value is an outlier: mean +- t*std (zscore) or Q1 - t*IQR, Q3 + t*IQR.

    `present` holds a column's present train values (reordered by the IQR's quantiles).
    None with fewer than two values. The standard deviation is numpy's, computed through a
    file-backed work array instead of numpy's whole-size temporary.
    """
    t = threshold or (3.0 if method == "zscore" else 1.5)
    if len(present) < 2:
        return None
    if method == "zscore":
        mean, spread = present.mean(), std(present, new_array)
        return (mean - t * spread, mean + t * spread) if spread > 0 else (-np.inf, np.inf)
    q1, q3 = np.quantile(present, [0.25, 0.75], overwrite_input=True)
    return q1 - t * (q3 - q1), q3 + t * (q3 - q1)


def std(values: np.ndarray, new_array: Callable[..., np.ndarray]) -> float:
    """`values.std()` of a float array, step for step as numpy's `_var` computes it, its temporary from `new_array`."""
    n = len(values)
    mean = np.add.reduce(values, keepdims=True)
    mean = np.true_divide(mean, n, out=mean)
    squares = new_array("std", values.dtype, n)
    np.subtract(values, mean, out=squares)
    np.multiply(squares, squares, out=squares)
    total = np.add.reduce(squares)
    return np.sqrt(total.dtype.type(total / np.intp(n)))


# ---------------------------------------------------------------- images


def apply_images(spec: dict[str, Any], raw: Any) -> np.ndarray:
    """Files, PIL images or HxW(xC) arrays -> uint8 [N, C, H, W] at the trained size and channels."""
    from bigmodel_cli.data.images import to_array

    height, width = spec["size"]
    shape = (spec["channels"], height, width)
    if isinstance(raw, np.ndarray) and raw.ndim == 4 and raw.shape[1:] == shape:
        return np.ascontiguousarray(raw, dtype=np.uint8)
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    if not items:
        return np.zeros((0, *shape), dtype=np.uint8)
    out = np.empty((len(items), *shape), dtype=np.uint8)
    for i, item in enumerate(items):
        try:
            out[i] = to_array(item, (width, height), spec["channels"])
        except (OSError, ValueError) as e:
            import re

            reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", (str(e).splitlines() or [""])[0])
            raise UsageError(f"image {i + 1} ({item if isinstance(item, str) else type(item).__name__}): "
                             f"unreadable ({reason or type(e).__name__})") from None
    return out


# ---------------------------------------------------------------- text


def fit_text(texts: list[str], cfg) -> dict[str, Any]:
    """A tokenizer (word-level, BPE or WordPiece, from `tokenizers`) trained on the train texts only."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    special = [PAD, UNK]
    if cfg.tokenizer == "word":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(vocab_size=cfg.vocab_size, special_tokens=special)
    elif cfg.tokenizer == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=special)
    else:
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, special_tokens=special)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainer=trainer)
    return {"tokenizer_kind": cfg.tokenizer, "max_length": cfg.max_length, "lowercase": cfg.lowercase,
            "vocab_size": tok.get_vocab_size(), "pad_id": tok.token_to_id(PAD), "unk_id": tok.token_to_id(UNK),
            "tokenizer": tok.to_str()}


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(spec: dict[str, Any]):
    from tokenizers import Tokenizer

    key = spec["tokenizer"]
    if key not in _TOKENIZERS:
        tok = Tokenizer.from_str(key)
        tok.enable_truncation(spec["max_length"])
        tok.enable_padding(pad_id=spec["pad_id"], pad_token=spec.get("pad_token", PAD), length=spec["max_length"])
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def apply_text(spec: dict[str, Any], raw: Any) -> np.ndarray:
    """Texts (a list of strings, or rows with the text column) -> int32 token ids [N, max_length], 0-padded."""
    texts = _texts(spec, raw)
    if not texts:
        return np.zeros((0, spec["max_length"]), dtype=np.int32)
    encoded = _tokenizer(spec).encode_batch(texts)
    return np.asarray([e.ids for e in encoded], dtype=np.int32)


def _texts(spec: dict[str, Any], raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        raw = raw.to_pylist()
    elif not isinstance(raw, (list, tuple)) or (raw and isinstance(raw[0], dict)):
        table = as_table(raw)
        column = spec.get("column", "text")
        if column not in table.column_names:
            raise UsageError(f"column '{column}' (the text) is missing from the input")
        raw = table[column].to_pylist()
    return ["" if t is None else str(t) for t in raw]


# ---------------------------------------------------------------- text with a model folder's own tokenizer


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HF_EXTRA = "pip install 'bigmodel-cli[hf]'"


def model_folder(ref: str | None, key: str = "model.path") -> Path:
    """A local Hugging Face model folder (config.json and weights), or an exit-2 error saying what is missing.

    Nothing is ever downloaded: a Hub id (`bert-base-uncased`, `org/name`) is refused with the way to get a folder.
    """
    if not ref:
        raise UsageError(f"{key} is not set: give a local Hugging Face model folder (config.json, *.safetensors, "
                         f"tokenizer.json), e.g. --set {key}=models/bert-tiny")
    path = Path(ref).expanduser()
    if not path.exists():
        hub_like = not ref.startswith((".", "/", "~")) and len(Path(ref).parts) <= 2 and not Path(ref).suffix
        if hub_like:
            raise UsageError(f"{key} '{ref}': no such folder, and it is not downloaded from the Hugging Face Hub "
                             f"(bigmodel never downloads); fetch it yourself, e.g. `hf download {ref} --local-dir "
                             f"models/{Path(ref).name}`, and set {key}=models/{Path(ref).name}")
        raise UsageError(f"{key} '{ref}': no such folder")
    if not path.is_dir():
        raise UsageError(f"{key} '{ref}': is a file; give the model's folder (with config.json)")
    if not (path / "config.json").is_file():
        raise UsageError(f"{key} '{ref}': no config.json in the folder; is it a Hugging Face model folder?")
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise UsageError(f"{key} '{ref}': no weights in the folder (model.safetensors, sharded *.safetensors with "
                         f"model.safetensors.index.json, or pytorch_model.bin)")
    return path


def model_config(folder: Path) -> dict[str, Any]:
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{folder / 'config.json'}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UsageError(f"{folder / 'config.json'}: no model_type; not a Hugging Face model config")
    return config


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest sequence the model's position embeddings take (None: rotary or unbounded)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def _special_token(configs: list[dict[str, Any]], name: str) -> str | None:
    for config in configs:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def _folder_tokenizer(folder: Path):
    """The folder's fast tokenizer as a `tokenizers.Tokenizer`: tokenizer.json, else converted by transformers."""
    from tokenizers import Tokenizer

    if (folder / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the Rust side raises plain Exception
            raise UsageError(f"{folder / 'tokenizer.json'}: not a readable tokenizer ({first_line(e)})") \
                from None
    slow = [n for n in ("vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
            if (folder / n).is_file()]
    if not slow:
        raise UsageError(f"{folder}: no tokenizer in the model folder (tokenizer.json, or vocab.txt / vocab.json + "
                         f"merges.txt / tokenizer.model); copy the model's tokenizer files into it")
    try:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
    except ImportError:
        raise UsageError(f"{folder}: its tokenizer ({slow[0]}) needs converting by transformers: {HF_EXTRA} (or "
                         f"save a tokenizer.json with it)") from None
    try:
        fast = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a broken folder
        raise UsageError(f"{folder}: cannot load its tokenizer ({first_line(e, 200)})") from None
    backend = getattr(fast, "backend_tokenizer", None)
    if backend is None:
        raise UsageError(f"{folder}: its tokenizer has no fast (tokenizers) version; save a tokenizer.json with it")
    return Tokenizer.from_str(backend.to_str())


def fit_model_tokenizer(folder_ref: str | None, cfg, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(text spec, model description) for `data.text.tokenizer: model`: the model folder's own tokenizer.

    The spec is what `apply_text` tokenises with (prepare-data, eval --data and serve alike): the tokenizer as
    JSON, `max_length`, and the padding id, which also marks padding for the network's attention mask. A
    tokenizer without a padding token (GPT-2) pads with its end-of-text token. The model description (its
    config.json) lets a run rebuild the network without the folder.
    """
    import json

    folder = model_folder(folder_ref)
    config = model_config(folder)
    longest = max_positions(config)
    if longest is not None and cfg.max_length > longest:
        raise UsageError(f"data.text.max_length {cfg.max_length} is longer than the model's position embeddings "
                         f"({longest} in {folder / 'config.json'}); set data.text.max_length={longest} or less")
    tok = _folder_tokenizer(folder)
    settings = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            with contextlib.suppress(ValueError):
                settings.append(json.loads((folder / name).read_text(encoding="utf-8")))
    names = {k: _special_token(settings, f"{k}_token") for k in ("pad", "eos", "bos", "unk")}
    ids = {k: (tok.token_to_id(v) if v else None) for k, v in names.items()}
    if ids["pad"] is None and isinstance(config.get("pad_token_id"), int):
        ids["pad"] = config["pad_token_id"]
        names["pad"] = tok.id_to_token(ids["pad"])
    if ids["eos"] is None and isinstance(config.get("eos_token_id"), int):
        ids["eos"] = config["eos_token_id"]
    if ids["pad"] is None:
        if ids["eos"] is None:
            raise UsageError(f"{folder}: the tokenizer has neither a padding nor an end-of-text token; add pad_token "
                             f"to its tokenizer_config.json")
        ids["pad"], names["pad"] = ids["eos"], tok.id_to_token(ids["eos"])
    tok.no_truncation()
    tok.no_padding()
    vocab = max(tok.get_vocab_size(with_added_tokens=True), int(config.get("vocab_size") or 0))
    spec = {"tokenizer_kind": "model", "max_length": cfg.max_length, "lowercase": None, "vocab_size": vocab,
            "pad_id": ids["pad"], "pad_token": names["pad"], "unk_id": ids["unk"], "eos_id": ids["eos"],
            "bos_id": ids["bos"], "max_positions": longest, "tokenizer": tok.to_str()}
    model = {"path": str(folder.resolve()), "model_type": config["model_type"], "config": config,
             "max_positions": longest}
    return spec, model
