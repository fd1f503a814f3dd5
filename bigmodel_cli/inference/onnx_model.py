"""An exported model in onnxruntime, checked against the run it claims to come from, giving raw outputs.

    model = OnnxModel("runs/digits-cnn/model.onnx", "classification", {"class_names": classes})
    logits = model.predict(x, batch_size=1024)
    model.metadata.checkpoint        # {"which": "last", "path": "checkpoints/last.pt", ...} (export.metadata)

The exported graph applies the run's normalisation itself, so inputs are the prepared rows as stored.
`expect` (class_names, input_shape) is compared with the model's metadata: a model exported from
another run is an exit-2 error, not wrong metrics. `task=None` takes the task from the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError

ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}


class OnnxModel:
    """`predict(x)` runs the `logits` (classification) or `prediction` (regression) output batch by batch."""

    def __init__(self, path: str | Path, task: str | None, expect: dict[str, Any] | None = None, device: str = "auto",
                 threads: int = 0, label: str | None = None, spinning: bool | None = None):
        from bigmodel_cli.export import metadata
        from bigmodel_cli.inference.session import create_session

        self.path = Path(path)
        where = label or f"--onnx {self.path}"
        if not self.path.is_file():
            raise UsageError(f"{where}: file not found; create it with: bigmodel export RUN_DIR")
        self.session = create_session(self.path, device, threads, spinning=spinning, label=where)
        self.metadata = metadata.from_session(self.session, where)
        for key, want in (expect or {}).items():
            got = getattr(self.metadata, key)
            if got is not None and got != want:
                raise UsageError(f"{where}: the model's {key} {json.dumps(got)} differs from the run's "
                                 f"{json.dumps(want)}; was it exported from another run?")
        if task is None:  # an ONNX file alone: its metadata says what it does
            task = self.metadata.task
            if task not in ("classification", "regression"):
                raise UsageError(f"{where}: metadata task {task!r} is not classification or regression; was it "
                                 f"exported by `bigmodel export`?")
        self.task = task
        self.output = "logits" if task == "classification" else "prediction"
        names = [o.name for o in self.session.get_outputs()]
        if self.output not in names:
            raise UsageError(f"{where}: no '{self.output}' output (outputs: {', '.join(names)})")
        first = self.session.get_inputs()[0]
        self.input = first.name
        self.dtype = ONNX_TYPES.get(first.type, np.float32)  # token ids of text models are integers

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        chunks = [self.session.run([self.output], {self.input: np.ascontiguousarray(x[i : i + batch_size],
                                                                                  dtype=self.dtype)})[0]
                  for i in range(0, len(x), batch_size)]
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).reshape(len(x), -1).astype(np.float32, copy=False)
