"""The V2 inference protocol's tensors: request body -> numpy, numpy -> response body.

    POST /v2/models/digits-cnn/infer
    {"id": "r1", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [...]}],
     "outputs": [{"name": "probabilities"}, {"name": "label"}]}

Both encodings of the KServe / Triton protocol are read and written:

- JSON tensors: `data` flat or nested, row-major.
- Triton's binary tensor data extension: the JSON header is the first `Inference-Header-Content-Length`
  bytes of the body and each input with `parameters.binary_data_size` takes that many raw little-endian
  bytes, in order, from what follows. Outputs are binary when the request's `binary_data_output` or the
  output's `binary_data` parameter says so; the response then carries the same header.

Text models (a `TextInput` in the signature) take their token-id input in two forms, both ending as
ids [N, max_length] padded with pad_id, so that every text request stacks with every other in a batch:

    {"name": "input", "shape": [2, 5], "datatype": "INT64", "data": [[5, 9, 2, 0, 0], [7, 3, 3, 8, 1]]}
    {"name": "input", "shape": [2], "datatype": "BYTES", "data": ["a fine film", "dull"]}   # or [2, 1]

BYTES in binary form is Triton's: per string a 4-byte little-endian length and its UTF-8 bytes (what
tritonclient sends for `InferInput("input", [2], "BYTES")`). Strings are tokenised on the server with the
tokenizer fitted by prepare-data (exported into the model's metadata).

Every check a client can fail becomes a `RequestError` (400) here, before onnxruntime sees the data.

Memory: a JSON body over 64 KiB is parsed only when its raw bytes hold no more values (counted as `,`, `[`
and `{`, a bound on the number of objects `json.loads` can build) than the model's inputs can take at
`max_batch_size` rows (`ModelSignature.max_values`), so that what decoding allocates is bounded by the model,
not by the body: a 63 MB body of `1,1,1,...` is refused before it becomes 31 million Python objects.
`decode_memory` is the bound the server reserves against `--max-inflight-mb` before parsing it.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from bigmodel_cli.errors import first_line
from bigmodel_cli.inference.text_generation import Sampling

LABEL_OUTPUT = "label"  # extra BYTES output of classifiers: the class name of each row's top probability
PNG_OUTPUT = "image_png"  # extra BYTES output of image-making models: one PNG per image (serving/generator.py)

# V2 datatype <-> numpy; a request may send any numeric one, it is converted to the model's input dtype
V2_NUMPY: dict[str, np.dtype] = {
    name: np.dtype(t)
    for name, t in {
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    }.items()
}
NUMPY_V2 = {dtype: name for name, dtype in V2_NUMPY.items()} | {np.dtype(np.bool_): "BOOL"}
ORT_V2 = {
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}
_UNSUPPORTED_INPUT_TYPES = {"BYTES", "BOOL"}  # BYTES: only for a text model's input (raw strings)
OTHER_JSON_VALUES = 1024  # values a request may hold besides its tensors' data: names, shapes, id, parameters
COUNTED_JSON_BYTES = 64 * 1024  # JSON larger than this has its values counted before it is parsed
BYTES_PER_JSON_VALUE = 48  # json.loads: a float (24) and its list slot (8); np.asarray's float64 (8); the cast
_COUNT_SLICE = 1 << 20  # bytes counted per call, so that a worker thread counting a large body lets go of the GIL


class RequestError(Exception):
    """A request the server refuses: becomes `{"error": message}` with `status_code`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; `shape` has -1 for dynamic dims, the first one is the batch."""

    name: str
    datatype: str  # V2 name: FP32, INT64, BYTES...
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self) -> dict[str, Any]:
        data_type = "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"
        return {"name": self.name, "data_type": data_type, "dims": list(self.shape[1:])}


@dataclass(frozen=True)
class TextInput:
    """A text model's token-id input, which also takes raw strings (BYTES) tokenised on the server."""

    name: str  # the model input holding the ids [N, L]
    max_length: int  # L at most; every request is padded to it
    vocab_size: int  # ids must be in [0, vocab_size)
    pad_id: int
    tokenize: Callable[[list[str]], np.ndarray]  # texts -> integer ids [N, max_length], padded and truncated
    info: dict[str, Any] = field(default_factory=dict)  # tokenizer kind, lowercase: shown in the model metadata

    def metadata(self, ids_datatype: str) -> dict[str, Any]:
        """How a client may send this input (the `text_input` parameter of the model metadata)."""
        return {"name": self.name,
                "strings": {"datatype": "BYTES", "shape": [-1], "also_shape": [-1, 1], "encoding": "UTF-8"},
                "token_ids": {"datatype": ids_datatype, "shape": [-1, -1], "max_length": self.max_length,
                              "vocab_size": self.vocab_size, "pad_id": self.pad_id},
                **self.info}


@dataclass
class InferRequest:
    """A decoded, validated inference request: numpy inputs in the model's dtypes, the outputs it wants."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]  # names in the order of the response; may include LABEL_OUTPUT
    binary_outputs: set[str] = field(default_factory=set)  # names to send as binary tensor data
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    table: Any = None  # `raw.TableRows`: raw table rows, prepared in their batch (then `inputs` is empty)
    sampling: Sampling | None = None  # a language model's, from the request's parameters

    @property
    def batch_size(self) -> int:
        return self.table.rows if self.table is not None else next(iter(self.inputs.values())).shape[0]


@dataclass(frozen=True)
class ModelSignature:
    """What the codec needs to know of a model: its tensors, dtypes, row limit and class names."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]  # the model's own outputs (without LABEL_OUTPUT)
    input_dtypes: dict[str, np.dtype]  # the numpy dtype session.run wants for each input
    max_batch_size: int
    class_names: list[str] | None = None
    has_label: bool = False  # a classifier: LABEL_OUTPUT may be asked for
    text: TextInput | None = None  # a text model: its id input also takes strings
    generator: Any = None  # a generator's `generator.GeneratorInput`: z may come from a seed, label from a parameter
    raw: Any = None  # `raw.RawInput` of a table or image model: rows, column tensors or image files accepted too
    has_png: bool = False  # PNG_OUTPUT may be asked for
    prompt: Any = None  # a language model's `prompts.PromptInput`: prompts (BYTES) in, generated text out

    @property
    def output_names(self) -> list[str]:
        return ([s.name for s in self.outputs] + ([LABEL_OUTPUT] if self.has_label else [])
                + ([PNG_OUTPUT] if self.has_png else []))

    @cached_property
    def max_values(self) -> int | None:
        """The most JSON values (numbers, and the nested lists around them) a request's tensors can hold at
        `max_batch_size` rows; None when an input has a dimension without a bound (then only the body limit and
        `--max-inflight-mb` bound decoding)."""
        total = 0
        for spec in self.inputs:
            dims = list(spec.shape[1:])
            if self.text is not None and spec.name == self.text.name:
                dims = [max(self.text.max_length, 1)]  # ids [N, L <= max_length]; strings [N] or [N, 1]
            if any(d < 0 for d in dims):
                return None
            nested, width = 1, 1  # the row's list and its sub-lists, when `data` is sent nested
            for d in dims[:-1]:
                width *= d
                nested += width
            total += self.max_batch_size * (math.prod(dims) + nested + 1)
        return total


# ---------------------------------------------------------------------------------------------- decode


def header_size(header_length: str | None) -> int | None:
    """The byte count of an `Inference-Header-Content-Length` value (None without one); RequestError(400) unless
    it is ASCII digits (`str.isdigit` alone takes '²', which `int` refuses)."""
    if header_length is None:
        return None
    value = header_length.strip()
    if not (value.isascii() and value.isdigit()):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} is not a byte count")
    return int(value)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data that follows it (empty without the header)."""
    length = header_size(header_length)
    if length is None:
        return body, memoryview(b"")
    if not 0 < length <= len(body):
        raise RequestError(400, f"Inference-Header-Content-Length {length} does not fit the body of "
                                f"{len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def json_marks(text: bytes | bytearray, end: int | None = None) -> int:
    """The commas and opening brackets in `text[:end]`: each value (or key) `json.loads` builds is the first item
    of an array or object or follows a comma, so 1 + this bounds their number (marks inside strings make it a
    bound, not a count). Counted slice by slice, so a worker thread counting a large body lets go of the GIL."""
    if end is None and len(text) <= _COUNT_SLICE:  # most requests: one slice
        return text.count(b",") + text.count(b"[") + text.count(b"{")
    end = len(text) if end is None else min(end, len(text))
    count = 0
    for start in range(0, end, _COUNT_SLICE):
        stop = min(start + _COUNT_SLICE, end)
        count += text.count(b",", start, stop) + text.count(b"[", start, stop) + text.count(b"{", start, stop)
    return count


def check_json_values(values: int, signature: ModelSignature) -> None:
    """RequestError(400) when a request's JSON holds more values than the model's inputs can take."""
    limit = signature.max_values
    if limit is not None and values > limit + OTHER_JSON_VALUES:
        raise RequestError(400, f"request JSON holds {values:,} values or more; this model's inputs take at most "
                                f"{limit:,} ({signature.max_batch_size} rows) plus {OTHER_JSON_VALUES} for the "
                                f"rest of the document")


def decode_memory(values: int, json_bytes: int) -> int:
    """A bound of the bytes parsing a request's JSON allocates: `values` of them (keys as many again at worst),
    strings no longer than the text, and the header's copy."""
    return 2 * BYTES_PER_JSON_VALUE * values + 2 * json_bytes


def decode_infer_request(body: bytes, signature: ModelSignature, header_length: str | None = None,
                         reserve: Callable[[int], None] | None = None) -> InferRequest:
    """Parse and validate a V2 infer request (JSON, or JSON header + binary tensors); RequestError(400).

    JSON over `COUNTED_JSON_BYTES` has its values counted on the raw bytes first: more than the model can take
    is a 400 before parsing, and `reserve(n)` is told what parsing may allocate (`decode_memory`). Smaller JSON
    is parsed as it is (the server does that on its event loop, one request at a time: a few MB at most).
    `reserve` is also told the size of each binary tensor's copy in the model's dtype, when it needs one (one
    sent in the model's dtype shares the body). It may refuse by raising.
    """
    header, binary = split_body(body, header_length)
    if len(header) > COUNTED_JSON_BYTES:
        values = 1 + json_marks(header)
        check_json_values(values, signature)
        if reserve is not None:
            reserve(decode_memory(values, len(header)))
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too deeply nested
        raise RequestError(400, f"request body is not valid JSON: {first_line(e)}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "request body must be a JSON object with 'inputs'")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, "'id' must be a string")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, "'parameters' must be an object")

    raw, sampling = signature.raw, None
    if signature.prompt is not None:  # a language model: one BYTES input of prompts, sampling options as parameters
        sampling = signature.prompt.sampling(parameters)  # a 400 now for an option out of range
        inputs, table = {signature.inputs[0].name: _prompts(doc.get("inputs"), signature, binary)}, None
    elif raw is not None and raw.kind == "tabular" and "rows" in parameters:  # JSON objects, column name -> value
        if doc.get("inputs") not in (None, []):
            raise RequestError(400, "send table rows either as the parameter 'rows' or as input tensors, not both")
        inputs, table = {}, raw.from_rows(parameters["rows"])
    else:
        inputs, table = _decode_inputs(doc.get("inputs"), signature, binary, reserve)
    if signature.generator is not None:
        inputs = signature.generator.complete(inputs, parameters)
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"), parameters, signature)
    return InferRequest(inputs=inputs, outputs=outputs, binary_outputs=binary_outputs, id=request_id,
                        parameters=parameters, table=table, sampling=sampling)


def _decode_inputs(tensors: Any, signature: ModelSignature, binary: memoryview,
                   reserve: Callable[[int], None] | None) -> tuple[dict[str, np.ndarray], Any]:
    """The inputs in the model's dtypes, or (a table model's raw column tensors) its checked `raw.TableRows`."""
    generator = signature.generator is not None  # its inputs may all come from request parameters (a seed)
    if generator and tensors is None:
        tensors = []
    if not isinstance(tensors, list) or not (tensors or generator):
        raise RequestError(400, "request needs 'inputs': a non-empty list of tensors")
    expected = {s.name: s for s in signature.inputs}
    table = signature.raw if signature.raw is not None and signature.raw.kind == "tabular" else None
    inputs: dict[str, np.ndarray] = {}
    columns: dict[str, Any] = {}  # a table model's raw columns, one tensor each
    offset = 0
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(400, "each input must be an object with a string 'name'")
        name = tensor["name"]
        if name in inputs or name in columns:
            raise RequestError(400, f"input '{name}' given twice")
        if name not in expected:
            if table is None:
                raise RequestError(400, f"unknown input '{name}' (model inputs: {', '.join(expected)})")
            if not table.is_column(name):
                raise table.unknown_input(name, list(expected))
            columns[name], used = table.column(tensor, _binary_size(tensor, name), binary[offset:])
        else:
            inputs[name], used = _decode_tensor(tensor, expected[name], signature, binary[offset:], reserve)
        offset += used
    _check_binary_used(offset, binary)
    if columns:
        if inputs:
            raise RequestError(400, f"send either the model's input '{next(iter(inputs))}' or raw column tensors, "
                                    f"not both")
        assert table is not None
        return {}, table.from_columns(columns)
    missing = [n for n in expected if n not in inputs]
    if missing and not generator:  # a generator's are checked once its parameters are read
        raise RequestError(400, f"missing input(s): {', '.join(missing)}")
    batches = {a.shape[0] for a in inputs.values()}
    if len(batches) > 1:
        raise RequestError(400, f"inputs disagree on the batch size: {sorted(batches)}")
    return inputs, None


def _decode_tensor(tensor: dict[str, Any], spec: TensorSpec, signature: ModelSignature, binary: memoryview,
                   reserve: Callable[[int], None] | None) -> tuple[np.ndarray, int]:
    """One input as the model's dtype, and how many bytes of binary data it took."""
    name = spec.name
    model_dtype = signature.input_dtypes[name]
    text = signature.text if signature.text is not None and signature.text.name == name else None
    images = signature.raw if signature.raw is not None and signature.raw.kind == "image" else None
    datatype = _datatype(tensor, spec, model_dtype, text, images is not None)
    binary_size = _binary_size(tensor, name)
    if datatype == "BYTES":
        if images is not None:  # image files (PNG, JPEG...)
            return images.image_tensor(tensor, binary_size, binary, reserve)
        assert text is not None  # _datatype refuses BYTES elsewhere
        return _string_tensor(tensor, text, signature, binary_size, binary, model_dtype)
    shape = _shape(tensor, spec, signature.max_batch_size)
    if text is not None and not 1 <= shape[1] <= text.max_length:
        raise RequestError(400, f"input '{name}': {shape[1]} token ids per row, the model takes 1 to "
                                f"{text.max_length} (send strings to have longer texts truncated)")
    if binary_size is not None:
        array, used = binary_tensor(binary_size, binary, datatype, shape, name)
        if reserve is not None and array.dtype != model_dtype:  # its copy in the model's dtype, and the checks'
            reserve(array.size * (model_dtype.itemsize + 1))
    else:
        array, used = _json_tensor(tensor, datatype, shape, name), 0
    if model_dtype.kind in "iu":
        _check_int_range(array, model_dtype, name, datatype, text)
    with np.errstate(over="ignore", invalid="ignore"):
        array = array.astype(model_dtype, copy=False).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestError(400, f"input '{name}': values must be finite (no NaN or infinity, within the "
                                f"range of {datatype} and of the model's {spec.datatype})")
    if text is not None:
        array = _pad_ids(array, text)
    return array, used


def _binary_size(tensor: dict[str, Any], name: str) -> Any:
    """The tensor's `binary_data_size` parameter (None without one); RequestError when it also has 'data'."""
    params = tensor.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise RequestError(400, f"input '{name}': 'parameters' must be an object")
    binary_size = params.get("binary_data_size") if params and "binary_data_size" in params else None
    if binary_size is not None and "data" in tensor:
        raise RequestError(400, f"input '{name}': has both 'data' and binary_data_size")
    return binary_size


def _datatype(tensor: dict[str, Any], spec: TensorSpec, model_dtype: np.dtype, text: TextInput | None,
              images: bool = False) -> str:
    name = spec.name
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise RequestError(400, f"input '{name}': 'datatype' must be a string such as \"{spec.datatype}\"")
    if datatype == "BYTES" and (text is not None or images):
        return datatype
    if datatype in _UNSUPPORTED_INPUT_TYPES:
        what = "numbers, e.g. FP32" if model_dtype.kind == "f" else f"integer ids, e.g. {spec.datatype}"
        raise RequestError(400, f"input '{name}': datatype {datatype} is not supported (send {what})")
    if datatype not in V2_NUMPY:
        raise RequestError(400, f"input '{name}': unknown datatype {datatype!r} (expected one of "
                                f"{', '.join(V2_NUMPY)}{', BYTES' if text or images else ''})")
    if model_dtype.kind in "iu" and V2_NUMPY[datatype].kind == "f":
        strings = " or BYTES strings" if text else ""
        raise RequestError(400, f"input '{name}': the model takes {spec.datatype} ids; datatype {datatype} is not "
                                f"accepted (send INT32 or INT64{strings})")
    return datatype


def _shape(tensor: dict[str, Any], spec: TensorSpec, max_batch_size: int) -> list[int]:
    name, shape = spec.name, tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(400, f"input '{name}': 'shape' must be a list of non-negative integers")
    if not shape or len(shape) != len(spec.shape) or any(want not in (-1, got)
                                                         for want, got in zip(spec.shape, shape, strict=True)):
        raise RequestError(400, f"input '{name}': shape {shape} does not match the model's {list(spec.shape)}")
    check_batch(shape[0], max_batch_size, name)
    if math.prod(shape) > 1 << 31:
        raise RequestError(400, f"input '{name}': shape {shape} is too large")
    return shape


def check_batch(rows: int, max_batch_size: int, name: str) -> None:
    if rows < 1:
        raise RequestError(400, f"input '{name}': the batch dimension must be at least 1")
    if rows > max_batch_size:
        raise RequestError(400, f"input '{name}': batch of {rows} is over max_batch_size {max_batch_size}")


def _check_binary_size(size: Any, binary: memoryview, name: str) -> None:
    """`binary_data_size` is a byte count that the binary data left in the body can hold."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(400, f"input '{name}': binary_data_size must be a non-negative integer")
    if size > len(binary):
        raise RequestError(400, f"input '{name}': binary_data_size {size} but only {len(binary)} bytes of "
                                f"binary data are left in the body (is Inference-Header-Content-Length set?)")


def binary_tensor(size: Any, binary: memoryview, datatype: str, shape: list[int],
                   name: str) -> tuple[np.ndarray, int]:
    _check_binary_size(size, binary, name)
    dtype = V2_NUMPY[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise RequestError(400, f"input '{name}': binary_data_size {size} but shape {shape} of {datatype} "
                                f"needs {expected} bytes")
    array = np.frombuffer(binary[:size], dtype=dtype.newbyteorder("<"))  # the extension is little-endian
    return array, size


def _json_tensor(tensor: dict[str, Any], datatype: str, shape: list[int], name: str) -> np.ndarray:
    if "data" not in tensor:
        raise RequestError(400, f"input '{name}': no 'data' (nor binary_data_size)")
    data = tensor["data"]
    if not isinstance(data, list):
        raise RequestError(400, f"input '{name}': 'data' must be a list of numbers (flat or nested)")
    expected_count = math.prod(shape)
    if len(data) not in (expected_count, shape[0]):  # flat, or nested by rows: checked before numpy copies it
        raise RequestError(400, f"input '{name}': 'data' has {len(data)} elements, shape {shape} needs "
                                f"{expected_count}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise RequestError(400, f"input '{name}': 'data' must be a list of numbers, nested lists must be "
                                f"rectangular") from None
    if array.size and array.dtype.kind not in "iuf":  # bool, str, None, objects; [] is float64
        raise RequestError(400, f"input '{name}': 'data' must hold only numbers")
    if array.size != expected_count:
        raise RequestError(400, f"input '{name}': 'data' has {array.size} elements, shape {shape} needs "
                                f"{expected_count}")
    declared = V2_NUMPY[datatype]
    if declared.kind in "iu":
        if array.size and array.dtype.kind == "f":  # [] is float64, and fine
            raise RequestError(400, f"input '{name}': datatype {datatype} needs integers in 'data'")
        limits = np.iinfo(declared)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise RequestError(400, f"input '{name}': values out of range for {datatype}")
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(declared)


def _check_int_range(array: np.ndarray, model_dtype: np.dtype, name: str, datatype: str,
                     text: TextInput | None) -> None:
    """Integers for an integer input: within the model's dtype and, for token ids, the vocabulary."""
    if not array.size:
        return
    low, high = int(array.min()), int(array.max())
    if text is not None and (low < 0 or high >= text.vocab_size):
        bad = low if low < 0 else high
        raise RequestError(400, f"input '{name}': token id {bad} is outside the vocabulary (0 to "
                                f"{text.vocab_size - 1})")
    limits = np.iinfo(model_dtype)
    if low < limits.min or high > limits.max:
        raise RequestError(400, f"input '{name}': {datatype} values out of range for the model's "
                                f"{NUMPY_V2[model_dtype]}")


def _pad_ids(ids: np.ndarray, text: TextInput) -> np.ndarray:
    """Token ids [N, L] (1 <= L <= max_length) -> [N, max_length], padded with pad_id at the end."""
    length = ids.shape[1]
    if length == text.max_length:
        return ids
    out = np.full((ids.shape[0], text.max_length), text.pad_id, dtype=ids.dtype)
    out[:, :length] = ids
    return out


def _string_tensor(tensor: dict[str, Any], text: TextInput, signature: ModelSignature, binary_size: Any,
                   binary: memoryview, model_dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Raw strings [N] or [N, 1] (JSON or Triton's binary BYTES) -> token ids [N, max_length]."""
    texts, used = _strings(tensor, text.name, signature.max_batch_size, binary_size, binary)
    ids = np.asarray(text.tokenize(texts))
    return ids.astype(model_dtype, copy=False).reshape(len(texts), text.max_length), used


def _strings(tensor: dict[str, Any], name: str, max_batch_size: int, binary_size: Any,
             binary: memoryview) -> tuple[list[str], int]:
    """The strings of a BYTES tensor of shape [N] or [N, 1] (JSON or binary), and the binary bytes they took."""
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape) \
            or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise RequestError(400, f"input '{name}': BYTES strings need shape [N] or [N, 1], got {shape!r}")
    rows = shape[0]
    check_batch(rows, max_batch_size, name)
    if binary_size is not None:
        return binary_strings(binary_size, binary, rows, name)
    return _json_strings(tensor, rows, name), 0


def _prompts(tensors: Any, signature: ModelSignature, binary: memoryview) -> np.ndarray:
    """A language model's request: exactly one BYTES tensor named as its input (the prompts) -> object array."""
    name = signature.inputs[0].name
    if not isinstance(tensors, list) or len(tensors) != 1 or not isinstance(tensors[0], dict):
        raise RequestError(400, f"request needs 'inputs': one BYTES tensor '{name}' of prompts")
    tensor = tensors[0]
    if tensor.get("name") != name:
        raise RequestError(400, f"unknown input {tensor.get('name')!r} (a language model takes '{name}': BYTES "
                                f"prompts)")
    if tensor.get("datatype") != "BYTES":
        raise RequestError(400, f"input '{name}': datatype must be BYTES (text), got {tensor.get('datatype')!r}")
    binary_size = _binary_size(tensor, name)
    texts, used = _strings(tensor, name, signature.max_batch_size, binary_size, binary)
    _check_binary_used(used, binary)
    prompts = np.empty(len(texts), dtype=object)
    prompts[:] = texts
    return prompts


def _check_binary_used(used: int, binary: memoryview) -> None:
    """RequestError(400) when binary tensor data is left over after the inputs took theirs."""
    if used != len(binary):
        raise RequestError(400, f"{len(binary) - used} bytes of binary tensor data after the inputs' "
                                f"binary_data_size (sum {used})")


def _json_strings(tensor: dict[str, Any], rows: int, name: str) -> list[str]:
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(400, f"input '{name}': 'data' must be a list of strings (or binary_data_size)")
    texts = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]  # [[s], [s]]
    if not all(isinstance(t, str) for t in texts):
        raise RequestError(400, f"input '{name}': BYTES 'data' must hold only strings")
    if len(texts) != rows:
        raise RequestError(400, f"input '{name}': 'data' has {len(texts)} strings, shape needs {rows}")
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
            raise RequestError(400, f"input '{name}': string {i + 1} is not valid Unicode") from None
    return texts


def binary_strings(size: Any, binary: memoryview, rows: int, name: str, decode: bool = True) -> tuple[list, int]:
    """Triton's BYTES encoding: per element a 4-byte little-endian length, then that many bytes (UTF-8 text, decoded
    unless `decode` is false: image files)."""
    _check_binary_size(size, binary, name)
    raw, texts, offset = binary[:size], [], 0
    while offset < size:
        if len(texts) == rows:
            raise RequestError(400, f"input '{name}': more than the {rows} strings of its shape in its "
                                    f"binary_data_size {size}")
        if offset + 4 > size:
            raise RequestError(400, f"input '{name}': string {len(texts) + 1} is cut off in its 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > size:
            raise RequestError(400, f"input '{name}': string {len(texts) + 1} of {length} bytes runs past "
                                    f"binary_data_size {size}")
        try:
            item = raw[offset + 4:offset + 4 + length]
            texts.append(str(item, "utf-8") if decode else bytes(item))
        except UnicodeDecodeError:
            raise RequestError(400, f"input '{name}': string {len(texts) + 1} is not valid UTF-8") from None
        offset += 4 + length
    if len(texts) != rows:
        raise RequestError(400, f"input '{name}': binary data holds {len(texts)} strings, shape needs {rows}")
    return texts, size


def _requested_outputs(requested: Any, parameters: dict[str, Any],
                       signature: ModelSignature) -> tuple[list[str], set[str]]:
    """The output names, in order, and which of them go out as binary tensor data."""
    binary_default = _flag(parameters, "binary_data_output", "request parameter")
    known = signature.output_names
    if requested is None or requested == []:
        names = [s.name for s in signature.outputs]  # the model's own outputs; 'label' only when asked for
        return names, set(names) if binary_default else set()
    if not isinstance(requested, list):
        raise RequestError(400, "'outputs' must be a list of {\"name\": ...} objects")
    names, binary = [], set()
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(400, "each requested output must be an object with a string 'name'")
        name = item["name"]
        if name not in known:
            raise RequestError(400, f"unknown output '{name}' (model outputs: {', '.join(known)})")
        if name in names:
            raise RequestError(400, f"output '{name}' requested twice")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(400, f"output '{name}': 'parameters' must be an object")
        if "classification" in params:
            raise RequestError(400, f"output '{name}': the classification extension is not supported; ask for "
                                    f"the '{LABEL_OUTPUT}' output instead")
        wants_binary = _flag(params, "binary_data", f"output '{name}' parameter")
        if wants_binary or (wants_binary is None and binary_default):
            binary.add(name)
        names.append(name)
    return names, binary


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestError(400, f"{where} '{key}' must be true or false")
    return value


# ---------------------------------------------------------------------------------------------- encode


def labels(scores: np.ndarray, class_names: list[str] | None) -> np.ndarray:
    """The class name of each row's highest score (its index as text when the model has no names)."""
    top = np.asarray(scores).reshape(len(scores), -1).argmax(axis=1)
    names = class_names or []
    return np.array([names[i] if i < len(names) else str(int(i)) for i in top], dtype=object)


def encode_infer_response(model_name: str, model_version: str, request: InferRequest,
                          results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The V2 response body and, when some outputs are binary, the length of its JSON header.

    RequestError(400) when the model produced NaN or infinity for this request's rows.
    """
    outputs, chunks = [], []
    for name in request.outputs:
        value = np.asarray(results[name])
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RequestError(400, f"the model produced NaN or infinite values in '{name}' for this input "
                                    f"(are the inputs scaled as the model expects?)")
        datatype = "BYTES" if value.dtype == object else NUMPY_V2.get(value.dtype)
        if datatype is None:  # float types onnxruntime returns that V2 cannot name: send as FP32
            value, datatype = value.astype(np.float32), "FP32"
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if name in request.binary_outputs:
            raw = _bytes_tensor(value) if datatype == "BYTES" else value.astype(value.dtype.newbyteorder("<"),
                                                                                 copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES" and value.size and isinstance(value.flat[0], bytes):  # PNG: base64 text in JSON
            tensor["parameters"] = {"content_type": "base64"}
            tensor["data"] = [base64.b64encode(v).decode("ascii") for v in value.ravel()]
        else:
            tensor["data"] = [str(v) for v in value.ravel()] if datatype == "BYTES" else value.ravel().tolist()
        outputs.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _bytes_tensor(value: np.ndarray) -> bytes:
    """Triton's BYTES serialisation: each element as a 4-byte little-endian length and its UTF-8 bytes."""
    parts = []
    for item in value.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts += [struct.pack("<I", len(raw)), raw]
    return b"".join(parts)

