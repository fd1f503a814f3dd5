"""The ONNX metadata contract (one writer, one reader) and where each export variant is written."""

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from bigmodel_cli.errors import UsageError
from bigmodel_cli.export import metadata
from bigmodel_cli.export.onnx_export import default_model_path, report_path


def identity_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["prediction"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_every_variant_has_its_own_file_and_report():
    run = Path("runs/x")
    assert default_model_path(run, "onnx", "none") == run / "model.onnx"
    assert default_model_path(run, "onnx", "int8") == run / "model.int8.onnx"
    assert default_model_path(run, "onnx", "fp16") == run / "model.fp16.onnx"
    assert default_model_path(run, "torchscript", "none") == run / "model.torchscript.pt"
    assert report_path(run / "model.onnx") == run / "export.json"
    assert report_path(run / "model.int8.onnx") == run / "export.int8.json"
    assert report_path(run / "model.torchscript.pt") == run / "export.torchscript.json"
    assert report_path(Path("/tmp/digits.onnx")) == Path("/tmp/digits.export.json")
    names = {report_path(default_model_path(run, f, q)) for f, q in
             (("onnx", "none"), ("onnx", "int8"), ("onnx", "fp16"), ("torchscript", "none"))}
    assert len(names) == 4


def test_metadata_written_once_and_read_back_parsed(tmp_path):
    path = identity_model(tmp_path / "m.onnx")
    props = {metadata.TASK: "classification", metadata.CLASS_NAMES: json.dumps(["a", "b"]),
             metadata.INPUT_SHAPE: json.dumps([3]), metadata.QUANTIZE: "int8", "vendor_key": "kept",
             metadata.MODEL: json.dumps({"name": "mlp", "args": {"hidden": [16], "dropout": 0.1, "extra": {"a": 1}},
                                         "parameters": 99}),
             metadata.CHECKPOINT: json.dumps({"which": "last", "path": "checkpoints/last.pt", "sha256": "ab"})}
    metadata.write(path, props)
    meta = metadata.read(path)
    assert meta.class_names == ["a", "b"] and meta.input_shape == [3] and meta.quantize == "int8"
    assert meta.checkpoint["which"] == "last" and meta.raw["vendor_key"] == "kept"
    assert meta.normalization is None and meta.text_preprocessing is None  # absent keys read as None
    assert meta.describe_model() == "mlp (hidden [16], dropout 0.1; 99 parameters)"  # mappings are left out
    assert onnx.load(str(path)).producer_name == "bigmodel-cli"
    metadata.write(path, {**props, metadata.CLASS_NAMES: "[not json"})
    with pytest.raises(UsageError, match=r"m.onnx: metadata 'class_names' is not valid JSON"):
        metadata.read(path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01not a model")
    with pytest.raises(UsageError, match="junk.onnx: not a readable ONNX model"):
        metadata.read(tmp_path / "junk.onnx")


def test_recorded_checkpoint_is_found_after_the_run_moves_and_detects_a_replaced_file(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/last.pt").write_bytes(b"weights v1")
    record = metadata.checkpoint_record(run, "last", run / "checkpoints/last.pt")
    assert record == {"which": "last", "path": "checkpoints/last.pt", "sha256": metadata.fingerprint(
        run / "checkpoints/last.pt")}
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    assert metadata.recorded_checkpoint(moved, record) == ("last", True)
    (moved / "checkpoints/last.pt").write_bytes(b"weights v2")  # trained on since the export
    assert metadata.recorded_checkpoint(moved, record) == ("last", False)
    outside = tmp_path / "epoch3.pt"
    outside.write_bytes(b"w")
    record = metadata.checkpoint_record(moved, str(outside), outside)
    assert record["which"] == "path" and record["path"] == str(outside.resolve())
    assert metadata.recorded_checkpoint(moved, record) == (str(outside.resolve()), True)
