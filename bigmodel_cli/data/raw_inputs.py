"""Raw inputs as people have them -> the arrays a trained model takes, with the run's fitted preprocessing.

    spec = InputSpec.from_manifest(run.manifest)              # a run directory's preprocessing.json
    spec = InputSpec.from_metadata(metadata.read(onnx_path))  # an exported model's metadata
    x = spec.one({"age": 41, "city": "Oslo"})                 # one JSON row  -> float32 [1, F]
    x = spec.one(png_bytes)                                   # one PNG/JPEG  -> uint8 [1, C, H, W]
    x = spec.one("a gripping story")                          # one text      -> int32 [1, max_length]
    x = spec.rows([{"age": 41, "city": "Oslo"}, ...])         # many JSON rows
    bad = {}; x = spec.table(chunk, first_row=0, bad=bad)     # rows of a file; bad rows reported, not raised
    spec.describe()                                           # raw columns and types, encoded features, pixels

Every path goes through `preprocess.apply_table / apply_images / apply_text`, the functions
prepare-data applied to the train, val and test splits, so a row predicted or served is
encoded exactly as the rows the model was trained on: the same imputation values, the same
categories (one never seen in training is all-zero one-hot, or -1 ordinal), the same bins,
the same tokenizer (texts longer than max_length truncated, shorter ones padded), the same
image conversion (any mode and size to the trained channels and size). The affine
normalisation is not applied here: it is inside the model (checkpoint and ONNX alike).

No torch, no onnxruntime: the server imports this.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bigmodel_cli.data import preprocess
from bigmodel_cli.errors import UsageError

KINDS = ("tabular", "image", "text")


class InputSpec:
    """What a model takes and how raw inputs become it: kind, task, classes, input shape, fitted preprocessing."""

    def __init__(self, kind: str, task: str, classes: list[str] | None, input_shape: list[int],
                 preprocessing: dict[str, Any], where: str = "model"):
        if kind not in KINDS:
            raise UsageError(f"{where}: input kind {kind!r} is not one of {', '.join(KINDS)}")
        self.kind, self.task, self.classes = kind, task, classes
        self.input_shape = [int(d) for d in input_shape]
        self.preprocessing, self.where = preprocessing, where
        self._few: preprocess.FewRows | None = None

    # ------------------------------------------------------------ where the preprocessing comes from

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str = "run") -> InputSpec:
        """From prepare-data's manifest, or the run's copy of it (`RUN_DIR/preprocessing.json`)."""
        kind = manifest["kind"]
        return cls(kind, manifest["task"], manifest.get("classes"), manifest["input_shape"],
                   {kind: manifest["preprocessing"][_KEY[kind]]}, where)

    @classmethod
    def from_metadata(cls, meta: Any, where: str = "model") -> InputSpec:
        """From an exported model's metadata (`export.metadata.ExportMetadata`: read, or from_session)."""
        kind, shape = meta.input_kind, meta.input_shape
        if kind is None or shape is None or meta.task is None:
            raise UsageError(f"{where}: no bigmodel metadata (input_kind, input_shape, task); was it exported by "
                             f"`bigmodel export`?")
        if kind == "tabular":
            spec = getattr(meta, "table_preprocessing", None)
            if spec is None:
                raise UsageError(f"{where}: its metadata has no table_preprocessing (an export of an older bigmodel); "
                                 f"export it again, or predict from its run directory")
            if len(spec["features"]) != shape[0]:
                raise UsageError(f"{where}: table_preprocessing encodes {len(spec['features'])} features but the "
                                 f"input takes {shape[0]}; export it again")
        elif kind == "image":
            spec = {"channels": int(shape[0]), "size": [int(shape[1]), int(shape[2])]}
        elif kind == "text":
            spec = meta.text_preprocessing
            if spec is None:
                raise UsageError(f"{where}: a text model without text_preprocessing metadata; export it again")
        else:
            raise UsageError(f"{where}: input kind {kind!r} is not one of {', '.join(KINDS)}")
        return cls(kind, meta.task, meta.class_names, shape, {kind: spec}, where)

    @property
    def spec(self) -> dict[str, Any]:
        """The fitted preprocessing of this kind: table columns, image size/channels, or the tokenizer."""
        return self.preprocessing[self.kind]

    # ------------------------------------------------------------ tables (tabular runs, and text runs' tables)

    def columns(self) -> list[str]:
        """The raw columns a row must have: the table's feature columns, or a text run's text column."""
        if self.kind == "tabular":
            return [c["name"] for c in self.spec["columns"]]
        if self.kind == "text":
            return [self.spec.get("column", "text")]
        raise UsageError(f"{self.where}: an image model takes images, not table rows")

    def read_types(self) -> dict[str, pa.DataType]:
        """How a table file's columns are best read: numbers as float64, categories as text (booleans as booleans,
        the way a CSV reader typed them in training), texts as text."""
        if self.kind == "text":
            return {self.columns()[0]: pa.string()}
        types: dict[str, pa.DataType] = {}
        for c in self.spec["columns"]:
            if c["type"] == "numeric":
                types[c["name"]] = pa.float64()
            elif c["categories"] and set(c["categories"]) <= {"true", "false"}:
                types[c["name"]] = pa.bool_()
            else:
                types[c["name"]] = pa.string()
        return types

    def check_columns(self, names: Sequence[str]) -> None:
        """Exit 2 naming the first missing column and the nearest one present."""
        if self.kind == "tabular":
            preprocess.check_columns(self.spec, list(names))
        else:
            column = self.columns()[0]
            if column not in names:
                import difflib

                near = difflib.get_close_matches(column, list(names), n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise UsageError(f"column '{column}' (the text) is missing from the input{hint}")

    def table(self, rows: Any, first_row: int = 0, bad: dict[int, str] | None = None) -> np.ndarray:
        """Rows (pyarrow Table, pandas DataFrame, list of dicts, dict of lists) -> model inputs.

        With `bad` (a dict), rows that cannot be encoded are recorded there ({index: reason})
        and left as zeros; without, the first one is an exit-2 error naming its row number
        (`first_row` + its index + 1).
        """
        if isinstance(rows, Mapping):  # columns of JSON values (one tensor per column): mixed types read as text
            self.check_columns(list(rows))
            x = self.few(rows)
            if x is not None:
                return x
            rows = pa.Table.from_pydict({name: values if isinstance(values, (pa.Array, pa.ChunkedArray, np.ndarray))
                                         else _column(list(values)) for name, values in rows.items()})
        table = preprocess.as_table(rows)
        self.check_columns(table.column_names)
        if self.kind == "text":
            return preprocess.apply_text(self.spec, table[self.columns()[0]])
        numbers = np.arange(first_row, first_row + table.num_rows)
        return preprocess.apply_table(self.spec, table, numbers, bad)

    def rows(self, rows: Sequence[Mapping[str, Any]], extra: str = "ignore") -> np.ndarray:
        """JSON objects (column name -> value) -> model inputs; every column must be present (null for a missing
        value, imputed as in training). `extra="error"` refuses keys the model does not know."""
        if not rows:
            return np.zeros((0, *self.input_shape), dtype=self.dtype)
        names = self.columns()
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise UsageError(f"row {i + 1}: expected a JSON object of column name to value, got "
                                 f"{type(row).__name__}")
            self.check_columns(list(row))
            if extra == "error":
                unknown = [k for k in row if k not in names]
                if unknown:
                    import difflib

                    near = difflib.get_close_matches(unknown[0], names, n=1)
                    hint = f"; did you mean '{near[0]}'?" if near else ""
                    raise UsageError(f"row {i + 1}: unknown column '{unknown[0]}'{hint}")
        return self.table({name: [row.get(name) for row in rows] for name in names})

    def few(self, columns: Mapping[str, Any]) -> np.ndarray | None:
        """A few table rows' columns of JSON values -> model inputs without Arrow (`preprocess.FewRows`), or None
        when `table` must read them through Arrow (many rows, a value to convert, a fault to name)."""
        if self.kind != "tabular":
            return None
        if self._few is None:
            self._few = preprocess.FewRows(self.spec)
        lengths = {len(v) for v in columns.values()}
        return self._few(columns, lengths.pop()) if len(lengths) == 1 else None

    # ------------------------------------------------------------ images and texts

    def images(self, items: Sequence[Any]) -> np.ndarray:
        """Files, bytes (PNG, JPEG...), PIL images or HxW(xC) arrays -> uint8 [N, C, H, W], converted as in
        training."""
        if self.kind != "image":
            raise UsageError(f"{self.where}: a {self.kind} model does not take images")
        items = [io.BytesIO(bytes(item)) if isinstance(item, (bytes, bytearray, memoryview)) else item
                 for item in items]
        return preprocess.apply_images(self.spec, items)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int32 token ids [N, max_length], truncated and padded as in training."""
        if self.kind != "text":
            raise UsageError(f"{self.where}: a {self.kind} model does not take texts")
        return preprocess.apply_text(self.spec, list(texts))

    def one(self, value: Any) -> np.ndarray:
        """One raw input -> a batch of one: a JSON object (tabular, or text with its text column), image bytes or
        a file (image), a string (text)."""
        if isinstance(value, Mapping):
            return self.rows([value])
        if self.kind == "image":
            return self.images([value])
        if self.kind == "text" and isinstance(value, str):
            return self.texts([value])
        raise UsageError(f"{self.where}: a {self.kind} model takes "
                         f"{'a JSON object of column name to value' if self.kind == 'tabular' else 'a string'}, "
                         f"not {type(value).__name__}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({"tabular": np.float32, "image": np.uint8, "text": np.int32}[self.kind])

    # ------------------------------------------------------------ what a client needs to know

    def describe(self) -> dict[str, Any]:
        """What the model's input means, for a client: the raw columns (tables), size and pixel range (images),
        the text column and length (texts), and the encoded input the model itself takes."""
        out: dict[str, Any] = {"kind": self.kind, "task": self.task, "classes": self.classes,
                               "input_shape": self.input_shape}
        if self.kind == "tabular":
            out["columns"] = [{"name": c["name"], "type": c["type"], "impute": c["impute"],
                               **({"categories": c["categories"]} if c["type"] == "categorical" else {})}
                              for c in self.spec["columns"]]
            out["features"] = list(self.spec["features"])
            out["input"] = "float32 [N, F]: the encoded features, in the order of `features` (raw feature units)"
        elif self.kind == "image":
            out["image"] = {"channels": self.spec["channels"], "height": self.spec["size"][0],
                            "width": self.spec["size"][1]}
            out["input"] = "pixels [N, C, H, W], raw values 0..255 (the model normalises them)"
        else:
            out["text"] = {"column": self.spec.get("column", "text"), "max_length": self.spec["max_length"],
                           "lowercase": self.spec.get("lowercase")}
            out["input"] = f"int64 token ids [N, <= {self.spec['max_length']}], padded with {self.spec['pad_id']}"
        return out


_KEY = {"tabular": "table", "image": "image", "text": "text"}


def _column(values: list[Any]) -> pa.Array:
    """One column of JSON values as Arrow reads it; values of mixed types (a number and a string) as text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else ("true" if v is True else "false" if v is False else str(v))
                         for v in values], pa.string())
