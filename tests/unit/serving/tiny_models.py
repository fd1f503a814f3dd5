"""Tiny ONNX models built with onnx.helper (no torch, no training) for the serving tests.

- `classifier`: 4 features -> 3 classes "a", "b", "c" (MatMul + Add + Softmax), outputs logits, probabilities.
- `regressor`: [2, 3] features -> 1 value (Flatten + MatMul + Add), output prediction.
- `generator`: z [B, 8] (+ label) -> image UINT8 [B, 1, 4, 4] (the generative export contract).
- `restorer`: image UINT8 -> image UINT8.
- `image_classifier`: pixels [B, 1, 8, 8] -> 3 classes (input_kind image: PNG/JPEG bytes accepted).
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


GEN = "tiny-gan"
RESTORE = "tiny-denoise"
Z_RULE = "numpy.random.default_rng(seed).standard_normal((n, latent_dim), dtype=numpy.float32)"


def generator(path: Path, *, conditional: bool = False, latent_dim: int = 8, image_shape: tuple[int, int, int] =
              (1, 4, 4), classes: tuple[str, ...] = ("zero", "one", "two")) -> Path:
    """A generator as `bigmodel export` writes one (docs/generative.md): `z` FP32 [B, latent_dim] (+ `label` INT64 [B])
    -> tanh(z W (+ E[label]) + b) mapped to 0..255, rounded, as `image` UINT8 [B, C, H, W]; its metadata written with
    export.metadata's writer."""
    from bigmodel_cli.export import metadata

    channels, height, width = image_shape
    pixels = channels * height * width
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(latent_dim, pixels)).astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.normal(size=(pixels,)).astype(np.float32) * 0.1, "b"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(127.5, np.float32), "half"),
             numpy_helper.from_array(np.array([-1, channels, height, width], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["z", "W"], ["zw"])]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", latent_dim])]
    if conditional:
        inits.append(numpy_helper.from_array(rng.normal(size=(len(classes), pixels)).astype(np.float32), "E"))
        nodes += [helper.make_node("Gather", ["E", "label"], ["embedded"], axis=0),
                  helper.make_node("Add", ["zw", "embedded"], ["h"])]
        inputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
    else:
        nodes.append(helper.make_node("Identity", ["zw"], ["h"]))
    nodes += [helper.make_node("Add", ["h", "b"], ["hb"]), helper.make_node("Tanh", ["hb"], ["t"]),
              helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["t1", "half"], ["px"]),
              helper.make_node("Round", ["px"], ["rounded"]),
              helper.make_node("Cast", ["rounded"], ["flat"], to=TensorProto.UINT8),
              helper.make_node("Reshape", ["flat", "shape"], ["image"])]
    graph = helper.make_graph(nodes, "tiny_gan", inputs,
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", *image_shape])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    metadata.write(path, {
        "bigmodel_version": __version__, "task": "generation", "recipe": GEN, "class_names": json.dumps(list(classes)),
        "input_shape": json.dumps([latent_dim]), "image_shape": json.dumps(list(image_shape)),
        "input_kind": "latent", "latent_dim": str(latent_dim), "conditional": json.dumps(conditional),
        "z_distribution": "standard_normal", "z_seed_rule": Z_RULE, "output_dtype": "uint8",
        "label_rule": "label of image i: the label asked for (a server requires it); bigmodel generate and eval "
                      "without one: i % len(class_names)"})
    return path


def restorer(path: Path, image_shape: tuple[int, int, int] = (1, 4, 4), dtype: int = TensorProto.UINT8) -> Path:
    """A restoration model: `input` UINT8 [B, C, H, W] (or FP32: unclipped noisy pixels, `data.corrupt.clip:
    false`) -> `image` UINT8 (each pixel halved, plus 10)."""
    from bigmodel_cli.export import metadata

    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(10.0, np.float32), "ten")]
    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "half"], ["h"]), helper.make_node("Add", ["h", "ten"], ["r"]),
             helper.make_node("Floor", ["r"], ["fl"]),
             helper.make_node("Cast", ["fl"], ["image"], to=TensorProto.UINT8)]
    graph = helper.make_graph(nodes, "tiny_denoise",
                              [helper.make_tensor_value_info("input", dtype, ["batch", *image_shape])],
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", *image_shape])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    metadata.write(path, {"bigmodel_version": __version__, "task": "restoration", "recipe": RESTORE,
                          "input_shape": json.dumps(list(image_shape)), "image_shape": json.dumps(list(image_shape)),
                          "input_kind": "image", "output_dtype": "uint8"})
    return path


IMG = "tiny-img"


def image_classifier(path: Path, image_shape: tuple[int, int, int] = (1, 8, 8)) -> Path:
    """An image classifier as an image run exports it: pixels FP32 [B, C, H, W] (raw 0..255, scaled inside) ->
    3 classes; metadata input_kind image and input_shape, so the server takes PNG/JPEG bytes too."""
    pixels = int(np.prod(image_shape))
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(size=(pixels, 3)).astype(np.float32) / 255.0, "W"),
             numpy_helper.from_array(np.array([-1, pixels], np.int64), "flat_shape")]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny_img", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *image_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    _metadata(model, bigmodel_version=__version__, task="classification", recipe=IMG, class_names=["x", "y", "z"],
              input_shape=list(image_shape), input_kind="image", normalization={})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
