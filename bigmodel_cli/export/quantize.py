"""fp16 and int8 versions of an exported fp32 ONNX model, and how much faster int8 runs.

    to_fp16(Path("fp32.onnx"), Path("model.fp16.onnx"))                       # bigmodel export RUN --quantize fp16
    to_int8(Path("fp32.onnx"), Path("model.int8.onnx"), calib, "static")      # ... --quantize int8
    speedup(Path("fp32.onnx"), Path("model.int8.onnx"), rows, np.float32)     # fp32 time / int8 time at batch 64

The accuracy check that guards int8 is `verify.metric_drop`.

fp16 keeps float32 inputs and outputs (`keep_io_types`), so clients and `bigmodel serve` send
the same tensors as to the fp32 model. int8 is onnxruntime's static quantisation (QDQ,
per-channel int8 weights, uint8 activations calibrated on train batches) after ORT's
quantisation pre-processing; for tables and text (`mlp`, `transformer_encoder`, `lstm`),
whose time goes into MatMul/LSTM rather than convolutions, dynamic quantisation is used: it
needs no calibration and is faster there. (Dynamic quantisation of convolutions is slower
than fp32 on CPU, so it is never used for image models.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bigmodel_cli.errors import JobFailed, first_line

DYNAMIC_MODELS = {"mlp", "transformer_encoder", "lstm"}
CALIBRATION_BATCH = 32


def int8_method(model_name: str | None, kind: str) -> str:
    """'dynamic' for tables and text (MatMul/LSTM-bound), 'static' (QDQ) for images."""
    return "dynamic" if model_name in DYNAMIC_MODELS or kind in ("tabular", "text") else "static"


def to_fp16(src: Path, dest: Path) -> None:
    """fp16 weights and activations, float32 at the edges (Cast nodes added around the converted graph).

    onnxconverter-common's own `keep_io_types` mis-types a tensor that is both a graph output and
    the input of another node (`logits` feeding the softmax), so the casts are added here.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    model.graph.ClearField("value_info")  # the exporter's float32 annotations would contradict the fp16 types
    model = float16.convert_float_to_float16(model, keep_io_types=False)
    graph = model.graph
    typed = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    for node in graph.node:  # a cast to float32 whose output the converter typed fp16 (Llama's rotary embedding)
        if node.op_type == "Cast" and typed.get(node.output[0]) == TensorProto.FLOAT16:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
    casts = []
    defaults = {t.name: t for t in graph.initializer}  # inputs with a default value (a decoder's empty cache)
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            _rename_uses(graph, value.name, f"{value.name}_fp16", producers=False)
            casts.append(helper.make_node("Cast", [value.name], [f"{value.name}_fp16"], to=TensorProto.FLOAT16))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
            if value.name in defaults:
                default = defaults[value.name]
                default.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(default).astype("float32"),
                                                         value.name))
    tail = []
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            _rename_uses(graph, value.name, f"{value.name}_fp16", producers=True)
            tail.append(helper.make_node("Cast", [f"{value.name}_fp16"], [value.name], to=TensorProto.FLOAT))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = casts + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dest))


def _rename_uses(graph, old: str, new: str, producers: bool) -> None:
    """Point every node input (and, with `producers`, output) named `old` at `new`."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        if producers:
            node.output[:] = [new if name == old else name for name in node.output]


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over fixed batches of raw train rows."""

    def __init__(self, x: np.ndarray, name: str):
        self.batches = iter([{name: x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # pragma: no cover - only called by ORT's entropy/percentile calibrators
        pass


def calibration_rows(x_train: np.ndarray, batches: int, seed: int, dtype) -> np.ndarray:
    """`batches` x 32 rows drawn (without replacement) from the prepared train split."""
    count = min(len(x_train), batches * CALIBRATION_BATCH)
    pick = np.sort(np.random.default_rng(seed).choice(len(x_train), size=count, replace=False))
    return np.ascontiguousarray(x_train[pick], dtype=dtype)


def _softmax_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Softmax"]


def to_int8(src: Path, dest: Path, calibration: np.ndarray | None, method: str) -> None:
    """Pre-process `src` (shape inference + ORT graph optimisation) and quantise it into `dest`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser logs every skipped node at INFO/WARNING
    with tempfile.TemporaryDirectory(prefix="bigmodel-int8-") as work:
        pre = Path(work) / "pre.onnx"
        here = os.getcwd()
        try:
            os.chdir(work)  # its symbolic shape inference leaves sym_shape_infer_temp.onnx in the working directory
            quant_pre_process(str(Path(src).resolve()), str(pre), skip_symbolic_shape=method == "static")
        except Exception as e:  # symbolic shape inference cannot take every graph; quantise the model as exported
            from bigmodel_cli import console

            console.warn(f"int8: onnxruntime's quantisation pre-processing failed ({first_line(e, 200)}); "
                         f"quantising the graph as exported")
            pre = src
        finally:
            os.chdir(here)
        try:
            if method == "dynamic":
                quantize_dynamic(str(pre), str(dest), weight_type=QuantType.QInt8, per_channel=False,
                                 op_types_to_quantize=["MatMul", "Gemm", "LSTM", "Attention"],
                                 extra_options={"DefaultTensorType": 1})  # FLOAT where ORT's fused ops hide the type
            else:
                quantize_static(str(pre), str(dest), _Batches(calibration, "input"), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=_softmax_nodes(pre))
        except Exception as e:
            raise JobFailed(f"int8 quantisation failed: {first_line(e)}")\
                from None


def latency_ms(sess, batch: np.ndarray, repeats: int = 10) -> float:
    """Median wall time of one session.run on `batch`."""
    feed = {"input": batch}
    with contextlib.suppress(Exception):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def speedup(fp32: Path, quantized: Path, x: np.ndarray, dtype, batch: int = 64) -> float:
    """fp32 time / quantised time at `batch` rows (repeated when the split is smaller): > 1 is faster."""
    from bigmodel_cli.inference.session import create_session

    rows = np.ascontiguousarray(np.resize(np.asarray(x, dtype), (batch, *x.shape[1:])))
    fp32_ms = latency_ms(create_session(fp32, device="cpu"), rows)
    return fp32_ms / max(latency_ms(create_session(quantized, device="cpu"), rows), 1e-9)
