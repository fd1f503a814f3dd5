"""Paths only a GPU reaches. Marked `gpu`: skipped (and listed as skipped) on machines without CUDA;
`make gpu-check` runs them where there is one."""

import json

import numpy as np
import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.training.loop import fit

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run make gpu-check there)")]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-digits")
    prepare(resolve("digits-cnn", {"data.prepared": str(root / "data")}))
    return root / "data"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_mixed_precision_trains_on_the_gpu(digits, tmp_path, precision):
    recipe = resolve("digits-cnn", {"data.prepared": str(digits)},
                     ["train.epochs=2", f"train.precision={precision}", "train.devices=cuda"])
    summary = fit(recipe, tmp_path / "run")
    assert summary["device"].startswith("cuda")
    assert summary["last_metrics"]["val_accuracy"] > 0.8  # chance is 0.1
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "16-mixed")  # the GradScaler's state is checkpointed


def test_resume_on_the_gpu_continues_from_the_checkpoint(digits, tmp_path):
    sets = ["train.epochs=2", "train.precision=16-mixed", "train.devices=cuda"]
    fit(resolve("digits-cnn", {"data.prepared": str(digits)}, [*sets[:0], "train.epochs=1", *sets[1:]]),
        tmp_path / "run")
    summary = fit(resolve("digits-cnn", {"data.prepared": str(digits)}, sets), tmp_path / "run", resume=True)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and summary["epochs_run"] == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_pins_memory_and_delivers_cuda_batches(digits, workers):
    from bigmodel_cli.data import manifest
    from bigmodel_cli.data.loader import Batches, epoch_order
    from bigmodel_cli.tasks.base import Split
    from bigmodel_cli.training.distributed import Dist

    split = Split(*manifest.load_split(digits, "train"))
    batches = Batches(split, epoch_order(0, 0, len(split)), 64, Dist(), 0, torch.device("cuda"), workers=workers)
    seen = 0
    for _, x, y, rows in batches:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8
        seen += rows
    assert seen == len(split)


def test_onnxruntime_cuda_provider_runs_an_exported_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu is the project's dependency)")
    from bigmodel_cli.inference.session import create_session

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    torch.onnx.export(net, (torch.zeros(1, 4),), str(tmp_path / "m.onnx"), input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    session = create_session(tmp_path / "m.onnx", device="cuda")
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    out = session.run(None, {"input": np.ones((2, 4), np.float32)})[0]
    assert np.allclose(out, net(torch.ones(2, 4)).detach().numpy(), atol=1e-4)
