"""Every model family exports and verifies; fp16 / int8 / TorchScript keep the predictions users trained."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bigmodel_cli.errors import JobFailed, UsageError
from bigmodel_cli.export import metadata
from bigmodel_cli.export import onnx_export as oe
from bigmodel_cli.export import verify as V
from bigmodel_cli.run import load_network, load_run

QUICK = ["mlp", "resnet18", "vit_b_16", "transformer_encoder", "lstm"]
SLOW_EXPORT = ["mobilenet_v3_small", "efficientnet_b0"]  # ~30 s each in the dynamo exporter


def _copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("family", QUICK + [pytest.param(f, marks=pytest.mark.slow) for f in SLOW_EXPORT])
def test_every_model_family_exports_a_verified_model(family, family_run, tmp_path):
    run = _copy(family_run(family), tmp_path)
    report = oe.export_run(run)
    assert report["verification"]["passed"] and report["verification"]["agreement"] >= 0.999
    session = _session(run / "model.onnx")
    net, norm, _ = load_network(load_run(run))
    text = family in ("transformer_encoder", "lstm")
    if text:  # int64 ids, any batch and any length up to the trained one; padding (0) at the end
        assert session.get_inputs()[0].type == "tensor(int64)"
        x = np.random.default_rng(1).integers(1, 30, (5, 7))
        x[0, 3:], x[1, 1:] = 0, 0
    else:
        assert session.get_inputs()[0].type == "tensor(float)"
        raw = metadata.read(run / "model.onnx").input_shape
        x = np.random.default_rng(1).uniform(0, 16, (3, *raw)).astype(np.float32)
    got = session.run(["probabilities"], {"input": x})[0]
    with torch.no_grad():
        want = torch.softmax(net(norm(torch.from_numpy(x))), 1).numpy()
    assert np.allclose(got, want, atol=1e-4)


def test_fp16_is_half_the_size_keeps_float32_io_and_is_verified(digits_run, tmp_path):
    run = _copy(digits_run, tmp_path)
    fp32 = oe.export_run(run, out=run / "fp32.onnx", verify_model=False)
    assert (run / "fp32.export.json").is_file() and not (run / "export.json").exists()  # --out: report beside it
    report = oe.export_run(run, quantize="fp16")
    check = report["verification"]
    assert check["passed"] and check["atol"] == 1e-2 and check["agreement"] >= 0.99
    assert report["size_bytes"] < 0.6 * fp32["size_bytes"]
    assert report["model"] == str(run / "model.fp16.onnx") and (run / "export.fp16.json").is_file()
    session = _session(run / "model.fp16.onnx")
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[1].type == "tensor(float)"
    assert metadata.from_session(session).quantize == "fp16"


def test_int8_static_qdq_keeps_accuracy_and_reports_it(digits_run, tmp_path):
    run = _copy(digits_run, tmp_path)
    fp32 = oe.export_run(run)
    fp32_bytes, fp32_report = (run / "model.onnx").read_bytes(), (run / "export.json").read_text()
    report = oe.export_run(run, quantize="int8")
    int8 = report["int8"]
    assert int8["method"] == "static" and int8["calibration_rows"] == 16 * 32
    metric = int8["metric"]
    assert metric["metric"] == "accuracy" and metric["drop_points"] <= 1.0 and metric["quantized"] > 0.8
    ops = {n.op_type for n in onnx.load(str(run / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ format
    assert json.loads((run / "export.int8.json").read_text())["quantize"] == "int8"
    # the fp32 model that serve and eval --onnx use, and its report, are untouched
    assert (run / "model.onnx").read_bytes() == fp32_bytes and (run / "export.json").read_text() == fp32_report
    assert fp32["quantize"] == "none" and report["size_bytes"] < 0.5 * fp32["size_bytes"]


def test_int8_uses_dynamic_quantisation_for_tables(family_run, tmp_path):
    run = _copy(family_run("mlp"), tmp_path)
    report = oe.export_run(run, quantize="int8")
    assert report["int8"]["method"] == "dynamic" and report["int8"]["metric"]["drop_points"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(run / "model.int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    assert not (run / "model.onnx").exists()


def test_int8_that_loses_too_much_accuracy_fails_and_leaves_nothing(digits_run, tmp_path, monkeypatch):
    run = _copy(digits_run, tmp_path)
    monkeypatch.setattr(V, "metric_drop", lambda *a: {"metric": "accuracy", "rows": 270, "fp32": 0.95,
                                                      "quantized": 0.90, "drop_points": 5.0})
    with pytest.raises(JobFailed, match="5.00 points below fp32"):
        oe.export_run(run, quantize="int8")
    assert not (run / "model.int8.onnx").exists() and not (run / "export.int8.json").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_int8_of_a_run_whose_prepared_data_is_gone_calibrates_on_the_rows_it_carries(digits_run, tmp_path):
    run = _copy(digits_run, tmp_path)
    recipe = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(recipe.replace(str(digits_run.parent / "data"), str(tmp_path / "gone")))
    report = oe.export_run(run, quantize="int8")
    assert report["verification"]["passed"] and (run / "model.int8.onnx").is_file()
    (run / "reference" / "train_x.npy").unlink()  # nothing left to calibrate on: a usage error, nothing written
    (run / "model.int8.onnx").unlink()
    (run / "export.int8.json").unlink()
    with pytest.raises(UsageError, match="reference rows"):
        oe.export_run(run, quantize="int8")
    assert not (run / "model.int8.onnx").exists() and not (run / "export.int8.json").exists()


def test_torchscript_matches_pytorch_on_raw_inputs(digits_run, tmp_path):
    run = _copy(digits_run, tmp_path)
    report = oe.export_run(run, fmt="torchscript")
    assert report["verification"]["passed"] and report["model"] == str(run / "model.torchscript.pt")
    assert json.loads((run / "export.torchscript.json").read_text())["format"] == "torchscript"
    assert not (run / "export.json").exists()
    loaded = torch.jit.load(str(run / "model.torchscript.pt"))
    x = torch.randint(0, 17, (4, 1, 8, 8)).float()
    net, norm, _ = load_network(load_run(run))
    with torch.no_grad():
        assert torch.allclose(loaded(x)[1], torch.softmax(net(norm(x)), 1), atol=1e-5)
    with pytest.raises(UsageError, match="only ONNX models are quantised"):
        oe.export_run(run, fmt="torchscript", quantize="int8")
