"""Raw inputs on the server: table rows as the user has them, image files as bytes, through the run's preprocessing.

    POST /v2/models/tabular-csv/infer                               # JSON objects, column name -> value
    {"inputs": [], "parameters": {"rows": [{"tenure_months": 3, "plan": "pro", "region": null, ...}]}}
    {"inputs": [{"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["pro", "basic"]},       # a tensor
                {"name": "tenure_months", "shape": [2], "datatype": "FP32", "data": [3, 40]}, ...]}  # per column

    POST /v2/models/digits-cnn/infer                                # PNG/JPEG bytes
    {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["iVBORw0KGgo..."]}]}   # base64 in JSON

The transform is `data.raw_inputs.InputSpec`, the code prepare-data and `bigmodel predict` use: the imputation
values, categories (one never seen in training encodes as in training), bins and feature order fitted on the
train split; images decoded, converted to the trained channels and resized to the trained size. The affine
normalisation is inside the model. The fitted table preprocessing comes from the model's metadata
(`table_preprocessing`), or for an older export from the `preprocessing.json` of the run directory it lies in.

The model's own tensor (`input`: encoded float features, or pixels) keeps working; a request uses one form.
Table rows are checked when the request is decoded (every column there, no other) and prepared in the
inference worker thread for the whole batch at once (`encode`), off the event loop: a few rows of plain values
value by value (`preprocess.FewRows`), more through Arrow, whose cost per call is paid once per batch; a row
that cannot be encoded fails its own request (400), not the batch.
Table columns may be tensors of any numeric datatype, BOOL, or BYTES (text, as JSON strings or Triton's binary
encoding), shape [N] or [N, 1]; a JSON `null` is a missing value (imputed). Image bytes are a BYTES tensor [N]
(or [N, 1]) on the model's input: base64 text in JSON, raw bytes as binary tensor data. Every fault is a 400
naming the column, row or image.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError
from bigmodel_cli.serving.protocol import (
    V2_NUMPY,
    RequestError,
    TensorSpec,
    binary_strings,
    binary_tensor,
    check_batch,
)

ROWS_PARAMETER = "rows"
MAX_IMAGE_PIXELS = 4096 * 4096  # per decoded image (a PNG of a few KB can declare gigapixels)
_BASE64_PREFIX = ";base64,"


class TableRows:
    """One request's raw table rows, checked and waiting to be prepared with the rest of its batch."""

    __slots__ = ("columns", "rows")

    def __init__(self, columns: dict[str, Any], rows: int) -> None:
        self.columns = columns  # column name -> values (a list of JSON values, or a numpy array from binary data)
        self.rows = rows


class RawInput:
    """How the model's input (`name`, [N, F] features or [N, C, H, W] pixels) is built from raw inputs."""

    def __init__(self, spec: Any, name: str, dtype: np.dtype, max_batch_size: int) -> None:
        self.spec = spec  # data.raw_inputs.InputSpec
        self.kind = spec.kind
        self.name = name
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.columns = spec.columns() if self.kind == "tabular" else []
        self._column_set = frozenset(self.columns)
        self._types = spec.read_types() if self.kind == "tabular" else {}  # how each column is best read
        self.width = len(spec.spec["features"]) if self.kind == "tabular" else 0  # encoded features

    # ------------------------------------------------------------------ what a client reads

    def metadata(self) -> dict[str, Any]:
        """What the input tensor means and the raw forms the server takes (the `raw_input` model parameter)."""
        described = self.spec.describe()
        described.pop("task", None)
        if self.kind == "tabular":
            described["range"] = "raw feature units: the model scales them itself"
            described["forms"] = {
                "encoded": f"input '{self.name}' FP32 [N, {len(described['features'])}]: the features in the order of "
                           f"'features' (imputed and encoded as prepare-data does)",
                "rows": f"request parameter '{ROWS_PARAMETER}': a list of JSON objects, column name -> value (null: "
                        f"missing, imputed as in training); every column of 'columns', no other",
                "columns": "one input tensor per column, named after it, shape [N]: BYTES (text) or a numeric datatype",
            }
        else:
            described["range"] = "raw pixels 0..255 (uint8 values; the model normalises them)"
            described["layout"] = "NCHW"
            described["forms"] = {
                "pixels": f"input '{self.name}' [N, C, H, W], values 0..255",
                "bytes": f"input '{self.name}' BYTES [N]: PNG/JPEG/... files (base64 text in JSON, raw bytes as "
                         f"binary data), converted to {described['image']['channels']} channel(s) and resized to "
                         f"{described['image']['height']}x{described['image']['width']} as in training",
            }
        return described

    def is_column(self, name: str) -> bool:
        return name in self._column_set

    def image_tensor(self, tensor: dict[str, Any], binary_size: Any, binary: memoryview,
                     reserve: Callable[[int], None] | None) -> tuple[np.ndarray, int]:
        return image_bytes_tensor(tensor, self, binary_size, binary, reserve)

    def column(self, tensor: dict[str, Any], binary_size: Any, binary: memoryview) -> tuple[Any, int]:
        return column_values(tensor, self.max_batch_size, binary_size, binary)

    def unknown_input(self, name: str, model_inputs: list[str]) -> RequestError:
        near = difflib.get_close_matches(name, [*self.columns, *model_inputs], n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return RequestError(400, f"unknown input '{name}' (model input: {', '.join(model_inputs)}; or one tensor per "
                                 f"raw column: {_listed(self.columns)}){hint}")

    # ------------------------------------------------------------------ tables

    def from_rows(self, rows: Any) -> TableRows:
        """The `rows` request parameter (JSON objects), checked: every column there and no other."""
        if not isinstance(rows, list) or not rows:
            raise RequestError(400, f"parameter '{ROWS_PARAMETER}' must be a non-empty list of JSON objects (column "
                                    f"name -> value)")
        if len(rows) > self.max_batch_size:
            raise RequestError(400, f"parameter '{ROWS_PARAMETER}': {len(rows)} rows is over max_batch_size "
                                    f"{self.max_batch_size}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RequestError(400, f"parameter '{ROWS_PARAMETER}': row {i + 1} is not a JSON object")
            extra = [k for k in row if k not in self._column_set]
            if extra:
                raise RequestError(400, f"parameter '{ROWS_PARAMETER}': row {i + 1}: unknown column '{extra[0]}'"
                                        f"{_near(extra[0], self.columns)}")
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise RequestError(400, f"parameter '{ROWS_PARAMETER}': row {i + 1}: column '{missing[0]}' is "
                                        f"missing (give null for a missing value, imputed as in training)")
        return TableRows({c: [row[c] for row in rows] for c in self.columns}, len(rows))

    def from_columns(self, columns: dict[str, Any]) -> TableRows:
        """One tensor per column (lists or numpy arrays of equal length), checked: every column there."""
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise RequestError(400, f"missing input '{missing[0]}': a request in raw columns needs one tensor per "
                                    f"column ({_listed(self.columns)})")
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise RequestError(400, f"the column tensors disagree on the number of rows: {sorted(sizes)}")
        return TableRows(columns, sizes.pop())

    def encode(self, parts: list[TableRows]) -> tuple[np.ndarray, list[str | None]]:
        """The rows of several requests as the model's input [sum of rows, F], prepared in one call, and each
        request's fault ('row 2: column ... is 'abc', not a number') or None; a faulty row is left at zeros, the
        other requests are not affected."""
        import pyarrow as pa

        merged: dict[str, Any] = {}
        for name in self.columns:
            values = [part.columns[name] for part in parts]
            if len(values) == 1:
                merged[name] = values[0]
            elif all(isinstance(v, np.ndarray) for v in values):
                merged[name] = np.concatenate(values)
            else:
                merged[name] = [item for v in values for item in (v.tolist() if isinstance(v, np.ndarray) else v)]
        few = self.spec.few(merged)  # a few rows of plain values: without Arrow's fixed cost per call
        if few is not None:
            return np.ascontiguousarray(few, dtype=self.dtype), [None] * len(parts)
        bad: dict[int, str] = {}
        table = pa.table({name: _arrow(values, self._types.get(name)) for name, values in merged.items()})
        try:
            x = np.ascontiguousarray(self.spec.table(table, bad=bad), dtype=self.dtype)
        except UsageError as e:  # not a row's fault (those are recorded in `bad`): every request is told
            return np.zeros((0, self.width), self.dtype), [str(e)] * len(parts)
        errors: list[str | None] = []
        start = 0
        for part in parts:
            first = next((i for i in range(start, start + part.rows) if i in bad), None)
            errors.append(None if first is None else f"row {first - start + 1}: {bad[first]}")
            start += part.rows
        return x, errors

    # ------------------------------------------------------------------ images

    def from_images(self, items: list[bytes], reserve: Callable[[int], None] | None) -> np.ndarray:
        """Image files' bytes -> the model's input [N, C, H, W] (0..255 in the model's dtype)."""
        from PIL import Image

        for i, item in enumerate(items):
            try:
                with Image.open(io.BytesIO(item)) as im:
                    width, height = im.size
            except Exception as e:  # noqa: BLE001  (PIL raises many types for what is not an image)
                raise RequestError(400, f"input '{self.name}': image {i + 1} is not an image file PIL can read "
                                        f"({_one_line(e)})") from None
            if width * height > MAX_IMAGE_PIXELS:
                raise RequestError(400, f"input '{self.name}': image {i + 1} is {width}x{height} pixels, over the "
                                        f"{MAX_IMAGE_PIXELS:,} the server decodes")
            if reserve is not None:
                reserve(width * height * 4)  # decoded as RGBA at worst, before it is converted and resized
        try:
            pixels = self.spec.images(items)
        except UsageError as e:
            raise RequestError(400, f"input '{self.name}': {e}") from None
        return pixels.astype(self.dtype, copy=False)


def image_bytes_tensor(tensor: dict[str, Any], raw: RawInput, binary_size: Any, binary: memoryview,
                       reserve: Callable[[int], None] | None) -> tuple[np.ndarray, int]:
    """A BYTES tensor of image files on the model's input -> pixels [N, C, H, W], and the binary bytes it took."""
    name, shape = raw.name, tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape) \
            or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise RequestError(400, f"input '{name}': BYTES image files need shape [N] or [N, 1], got {shape!r}")
    rows = shape[0]
    check_batch(rows, raw.max_batch_size, name)
    if binary_size is not None:
        items, used = binary_strings(binary_size, binary, rows, name, decode=False)
    else:
        items, used = _base64_items(tensor, rows, name), 0
    return raw.from_images(items, reserve), used


def column_values(tensor: dict[str, Any], max_batch_size: int, binary_size: Any,
                  binary: memoryview) -> tuple[Any, int]:
    """One raw column's tensor -> its values (a list, or a numpy array from binary data), and the bytes it took."""
    name, shape, datatype = tensor["name"], tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape) or len(shape) not in (1, 2) \
            or (len(shape) == 2 and shape[1] != 1):
        raise RequestError(400, f"input '{name}': a raw column takes shape [N] or [N, 1], got {shape!r}")
    rows = shape[0]
    check_batch(rows, max_batch_size, name)
    if datatype not in (*V2_NUMPY, "BYTES", "BOOL"):
        raise RequestError(400, f"input '{name}': datatype {datatype!r} is not one of BYTES, BOOL, "
                                f"{', '.join(V2_NUMPY)}")
    if binary_size is not None:
        if datatype == "BYTES":
            return binary_strings(binary_size, binary, rows, name)
        dtype = "BOOL" if datatype == "BOOL" else datatype
        array, used = binary_tensor(binary_size, binary, "UINT8" if dtype == "BOOL" else dtype, [rows], name)
        return (array.astype(bool) if datatype == "BOOL" else array), used
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(400, f"input '{name}': 'data' must be a list of values (or binary_data_size)")
    values = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]
    if len(values) != rows:
        raise RequestError(400, f"input '{name}': 'data' has {len(values)} values, shape {shape} needs {rows}")
    want = (str,) if datatype == "BYTES" else (bool,) if datatype == "BOOL" else (int, float)
    for i, v in enumerate(values):
        if v is not None and (not isinstance(v, want) or (want == (int, float) and isinstance(v, bool))):
            raise RequestError(400, f"input '{name}': row {i + 1} is {v!r}, not a {datatype} value (null for a "
                                    f"missing one)")
    return values, 0


def _base64_items(tensor: dict[str, Any], rows: int, name: str) -> list[bytes]:
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(400, f"input '{name}': 'data' must be a list of base64 strings (or binary_data_size)")
    texts = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]
    if len(texts) != rows:
        raise RequestError(400, f"input '{name}': 'data' has {len(texts)} images, shape needs {rows}")
    items = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f"input '{name}': image {i + 1} must be a base64 string")
        if text.startswith("data:") and _BASE64_PREFIX in text[:64]:  # a data URL
            text = text.split(_BASE64_PREFIX, 1)[1]
        try:
            items.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"input '{name}': image {i + 1} is not base64 text (image files in JSON are "
                                    f"base64-encoded)") from None
    return items


def _arrow(values: Any, kind: Any = None) -> Any:
    """A column's values as an Arrow array of the type the preprocessing reads it as (`kind`, from
    `InputSpec.read_types`: no type inference), else as Arrow infers it; values that fit neither (a word in a numeric
    column, a number and a string mixed) as text, which the preprocessing then names."""
    import pyarrow as pa

    if isinstance(values, np.ndarray):
        return pa.array(values)
    if kind is not None:
        try:
            return pa.array(values, kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else ("true" if v is True else "false" if v is False else str(v))
                         for v in values], pa.string())


def raw_input(meta: Any, inputs: list[TensorSpec], input_dtypes: dict[str, np.dtype], path: Path | None,
              max_batch_size: int) -> RawInput | None:
    """The raw-input transform of a tabular or image model with one input (None for other models, and for a table
    model whose fitted preprocessing is neither in its metadata nor in the run directory it lies in)."""
    from bigmodel_cli.data.raw_inputs import InputSpec

    if meta.input_kind not in ("tabular", "image") or len(inputs) != 1 or inputs[0].name not in input_dtypes:
        return None
    where = str(path or "model")
    try:
        if meta.input_kind == "tabular" and getattr(meta, "table_preprocessing", None) is None:
            from bigmodel_cli.run import RUN_DATA, read_data

            if path is None or not (Path(path).parent / RUN_DATA).is_file():
                return None
            spec = InputSpec.from_manifest(read_data(Path(path).parent), where)
        else:
            spec = InputSpec.from_metadata(meta, where)
    except UsageError:
        return None
    expected = [-1, *spec.input_shape]
    if list(inputs[0].shape) != expected and not all(a in (-1, b) for a, b in zip(inputs[0].shape, expected,
                                                                                     strict=False)):
        return None
    return RawInput(spec, inputs[0].name, input_dtypes[inputs[0].name], max_batch_size)


def _near(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean '{near[0]}'?" if near else ""


def _listed(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _one_line(e: BaseException) -> str:
    import re

    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e).strip())  # PIL names the buffer
    return text.splitlines()[0] if text else type(e).__name__

