"""Moved to `bigmodel_cli.inference` (`inference.batch.predict`, `softmax`; `inference.onnx_model.OnnxModel`).
These two names remain importable from here for the training loop until it imports `inference.batch` itself."""

from bigmodel_cli.inference.batch import predict, softmax

__all__ = ["predict", "softmax"]
