"""Tiny ONNX models built with onnx.helper (no torch, no training) for the serving tests.

- `classifier`: 4 features -> 3 classes "a", "b", "c" (MatMul + Add + Softmax), outputs logits, probabilities.
- `regressor`: [2, 3] features -> 1 value (Flatten + MatMul + Add), output prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bigmodel_cli import __version__

CLS = "tiny-cls"
REG = "tiny-reg"


def _metadata(model: onnx.ModelProto, **props: object) -> None:
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)


def save(graph: onnx.GraphProto, path: Path, **props: object) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10,
                              producer_name="test")
    _metadata(model, bigmodel_version=__version__, normalization={}, input_kind="tabular", exporter="test", **props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def classifier(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny_cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w, b],
    )
    return save(graph, path, task="classification", class_names=["a", "b", "c"], input_shape=[4], recipe=CLS)


def regressor(path: Path) -> Path:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(6, 1)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([0.5], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["prediction"]),
        ],
        "tiny_reg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b],
    )
    return save(graph, path, task="regression", class_names=None, input_shape=[2, 3], recipe=REG)


def slow_classifier(path: Path, size: int = 640) -> Path:
    """The classifier plus a [size x size] matrix product that depends on the input (so that onnxruntime
    cannot fold it away) and is multiplied by 0: same answers, tens of milliseconds per run."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(size=(size, size)).astype(np.float32) / size, "C"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0),
            helper.make_node("Mul", ["C", "s"], ["cs"]),
            helper.make_node("MatMul", ["cs", "C"], ["p1"]),
            helper.make_node("MatMul", ["p1", "C"], ["p2"]),
            helper.make_node("ReduceMean", ["p2"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["xwb"]),
            helper.make_node("Add", ["xwb", "nothing"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "slow_cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    return save(graph, path, task="classification", class_names=["a", "b", "c"], input_shape=[4], recipe="slow")
