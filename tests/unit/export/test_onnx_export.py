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


@pytest.fixture
def run(digits_run, tmp_path):
    """A private copy of the shared trained run, so tests can write into it."""
    dest = tmp_path / "run"
    shutil.copytree(digits_run, dest)
    return dest


def test_export_writes_a_checked_model_that_matches_pytorch(run):
    report = oe.export_run(run)
    path = run / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    meta = metadata.read(path)
    assert {"bigmodel_version", "task", "class_names", "input_shape", "recipe", "normalization"} <= set(meta.raw)
    assert meta.normalization["per"] == "channel" and meta.input_shape == [1, 8, 8] and meta.task == "classification"
    assert meta.class_names == [str(d) for d in range(10)] and meta.quantize == "none"
    assert meta.model["name"] == "cnn_small" and meta.model["args"]["width"] == 32
    assert meta.checkpoint == report["checkpoint"] and meta.checkpoint["which"] == "best"
    assert meta.checkpoint["path"] == "checkpoints/best.pt"  # relative: the run directory can move
    assert report["verification"]["passed"] and report["exporter"] == "dynamo"
    # raw pixels in, the same probabilities as the trained network on normalised pixels
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probabilities"], {"input": x})[0]
    from bigmodel_cli.run import load_network, load_run

    net, norm, _ = load_network(load_run(run))
    with torch.no_grad():
        want = torch.softmax(net(norm(torch.from_numpy(x))), 1).numpy()
    assert np.allclose(got, want, atol=1e-5)
    assert json.loads((run / "export.json").read_text())["model"] == str(path)


def test_failed_verification_exits_1_and_leaves_no_file(run, monkeypatch):
    real = V.verify_onnx

    class Skewed(torch.nn.Module):  # a PyTorch reference that disagrees with the exported graph
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            logits, proba = self.module(x)
            return logits, proba.flip(1)

    monkeypatch.setattr(V, "verify_onnx", lambda path, module, *a: real(path, Skewed(module), *a))
    with pytest.raises(JobFailed, match="verification failed"):
        oe.export_run(run)
    assert not (run / "model.onnx").exists() and not (run / "export.json").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_falls_back_to_the_torchscript_exporter(run, monkeypatch):
    real = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("dynamo cannot take this model")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    report = oe.export_run(run, out=run / "legacy.onnx")
    assert report["exporter"] == "torchscript" and report["verification"]["passed"]
    x = np.zeros((3, 1, 8, 8), np.float32)
    session = ort.InferenceSession(str(run / "legacy.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(["probabilities"], {"input": x})[0].shape == (3, 10)


def test_bad_export_requests(run, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        oe.export_run(run, out=tmp_path / "missing/dir/model.onnx")
    with pytest.raises(UsageError, match="--quantize int4: expected one of none, fp16, int8"):
        oe.export_run(run, quantize="int4")
    with pytest.raises(UsageError, match="--format onnx2"):
        oe.export_run(run, fmt="onnx2")
    with pytest.raises(UsageError, match="--opset 7"):
        oe.export_run(run, opset=7)
    broken = run / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a readable checkpoint"):
        oe.export_run(run, checkpoint=str(broken))
    assert not (run / "model.onnx").exists()
