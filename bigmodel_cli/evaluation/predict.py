"""Batched inference on prepared arrays, by a PyTorch network (train's validation, eval) or an exported ONNX model.

Both read the split batch by batch from its memory-mapped `.npy`, so a split larger than memory
is evaluated with memory bounded by one batch plus the outputs.

    logits = predict(net, norm, x, torch.device("cpu"), batch_size=1024)
    logits = OnnxModel("runs/digits-cnn/model.onnx", "classification").predict(x)
"""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def predict(net: torch.nn.Module, norm: torch.nn.Module, x: np.ndarray | torch.Tensor, device: torch.device,
            batch_size: int = 1024) -> np.ndarray:
    """Raw model outputs (logits, or predictions for regression) as float32 [N, outputs]."""
    was_training = net.training
    net.eval()
    outputs = []
    try:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            xb = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
            outputs.append(net(norm(xb.to(device, non_blocking=True))).float().cpu())
    finally:
        net.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}


class OnnxModel:
    """An exported model in onnxruntime, checked against the run, giving raw outputs batch by batch.

    The exported graph applies the manifest's normalisation itself, so inputs are the prepared
    split as stored. `expect` (class_names, input_shape) is compared with the model's metadata:
    a model exported from another run is an exit-2 error, not wrong metrics.

        model = OnnxModel("runs/digits-cnn/model.onnx", "classification", {"class_names": classes})
        logits = model.predict(x, batch_size=1024)
    """

    def __init__(self, path, task: str, expect: dict | None = None):
        import json
        from pathlib import Path

        import onnxruntime as ort

        from bigmodel_cli.devices import ort_providers
        from bigmodel_cli.errors import UsageError

        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"--onnx {self.path}: file not found; create it with: bigmodel export RUN_DIR")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=ort_providers("auto"))
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise UsageError(f"--onnx {self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        for key, want in (expect or {}).items():
            if key in meta and json.loads(meta[key]) != want:
                raise UsageError(f"--onnx {self.path}: the model's {key} {meta[key]} differs from the run's "
                                 f"{json.dumps(want)}; was it exported from another run?")
        self.output = "logits" if task == "classification" else "prediction"
        names = [o.name for o in self.session.get_outputs()]
        if self.output not in names:
            raise UsageError(f"--onnx {self.path}: no '{self.output}' output (outputs: {', '.join(names)})")
        first = self.session.get_inputs()[0]
        self.input = first.name
        self.dtype = _ONNX_TYPES.get(first.type, np.float32)  # token ids of text models are integers

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        chunks = [self.session.run([self.output], {self.input: np.ascontiguousarray(x[i : i + batch_size],
                                                                                  dtype=self.dtype)})[0]
                  for i in range(0, len(x), batch_size)]
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).reshape(len(x), -1).astype(np.float32, copy=False)
