"""Sampled request/response logging to JSON lines, for offline analysis of what a served model sees and answers.

    bigmodel serve runs/digits-cnn --log-payloads 0.01 --payload-log payloads.jsonl   # 1 % of infer requests
    serve: {log_payloads: 0.01}                                                        # the same in a recipe

One line per sampled request that was answered 200:

    {"ts": "2026-11-30T10:00:00.123Z", "model": "digits-cnn", "version": "1", "id": "r1",
     "parameters": {...the request's parameters...},
     "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [...]}],
     "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": [...]}]}

Inputs are what the model was given (images after decoding, texts as token ids; raw table rows as the columns
the client sent, its JSON values), outputs what the request
asked for (all the model's outputs when it named none); BYTES values are text, or base64 (`"encoding":
"base64"` on the tensor) when they are not UTF-8. Nothing of the HTTP exchange is logged: no headers (so never
the API key), no client address, no binary framing. Lines are written by a thread of their own; at most
`MAX_PENDING` requests wait for it, later ones are not logged (counted in `bigmodel_payloads_dropped_total`).
"""

from __future__ import annotations

import base64
import json
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bigmodel_cli.errors import UsageError

MAX_PENDING = 256
_STOP = object()


class PayloadLog:
    """Samples `fraction` of the requests and writes them to `destination` ('-' for stdout, else a file, appended)."""

    def __init__(self, fraction: float, destination: str | Path = "-", *, model: str, version: str,
                 seed: int | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise UsageError(f"--log-payloads {fraction}: must be a share between 0 and 1 (0.01: one request in 100)")
        self.fraction = fraction
        self.model, self.version = model, version
        self.logged = 0
        self.dropped = 0
        self._random = random.Random(seed)
        self._owned = str(destination) != "-"
        try:
            self._stream: TextIO = (open(destination, "a", encoding="utf-8") if self._owned  # noqa: SIM115
                                    else sys.stdout)
        except OSError as e:
            raise UsageError(f"--payload-log {destination}: cannot open it for writing ({e.strerror or e})") from None
        self._queue: queue.Queue = queue.Queue(MAX_PENDING)
        self._thread = threading.Thread(target=self._write, name="bigmodel-payloads", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return self.fraction >= 1.0 or self._random.random() < self.fraction

    def log(self, request_id: str | None, parameters: dict[str, Any], inputs: dict[str, np.ndarray],
            outputs: dict[str, np.ndarray]) -> None:
        """Queue one request's line (formatted and written by the writer thread)."""
        try:
            self._queue.put_nowait((time.time(), request_id, parameters, inputs, outputs))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Write what is queued, then stop the writer (and close the file)."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        if self._owned:
            self._stream.close()

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._stream.flush()
                return
            lines = [self._line(*item)]
            while True:  # whatever else is waiting, in the same write
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._emit(lines)
                    self._stream.flush()
                    return
                lines.append(self._line(*item))
            self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        self._stream.write("".join(lines))
        self._stream.flush()
        self.logged += len(lines)

    def _line(self, ts: float, request_id: str | None, parameters: dict[str, Any], inputs: dict[str, np.ndarray],
              outputs: dict[str, np.ndarray]) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
        doc: dict[str, Any] = {"ts": stamp, "model": self.model, "version": self.version}
        if request_id is not None:
            doc["id"] = request_id
        doc["parameters"] = parameters
        doc["inputs"] = [tensor(name, value) for name, value in inputs.items()]
        doc["outputs"] = [tensor(name, value) for name, value in outputs.items()]
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"


def tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    """A tensor as the V2 protocol writes it in JSON (BYTES as text, or base64 when not UTF-8)."""
    from bigmodel_cli.serving.protocol import NUMPY_V2

    if isinstance(value, list):  # a raw table column as the client sent it (JSON values)
        return {"name": name, "shape": [len(value)], "data": value}
    value = np.asarray(value)
    out: dict[str, Any] = {"name": name, "shape": list(value.shape)}
    if value.dtype == object or value.dtype.kind in "SU":
        items = [v if isinstance(v, (bytes, str)) else str(v) for v in value.ravel()]
        out["datatype"] = "BYTES"
        try:
            out["data"] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in items]
        except UnicodeDecodeError:
            out["encoding"] = "base64"
            out["data"] = [base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for v in items]
        return out
    out["datatype"] = NUMPY_V2.get(value.dtype, "FP32")
    data = value.ravel()
    if data.dtype.kind == "f":
        data = np.where(np.isfinite(data), data, np.nan)
        out["data"] = [None if v != v else v for v in data.tolist()]  # NaN and infinities as null (valid JSON)
    else:
        out["data"] = data.tolist()
    return out
