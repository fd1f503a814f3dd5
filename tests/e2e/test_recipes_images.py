"""The image recipes end to end with the real commands, each on tiny data in its real format written here:
mnist-cnn (MNIST idx files), cifar10-resnet18 (CIFAR-10 python batches), imagefolder-resnet50 (a folder of
PNG/JPEG files, from a torchvision resnet50 state dict with the backbone frozen) and imagefolder-vit.

    pytest tests/e2e/test_recipes_images.py --durations=0

prepare-data -> train 1 epoch -> eval -> export (verified) -> one onnxruntime inference (recipe_pipeline).
The heavy models run at 32x32 and the ViT with 2 small blocks; everything else is the recipe file's.
"""

from __future__ import annotations

import json

import pytest
import torch
from recipe_pipeline import run_recipe

from tests.unit.data.conftest import make_image_folder, write_cifar10, write_mnist

ONE_EPOCH = ["train.epochs=1", "eval.fail_under.accuracy=0"]  # tiny random data: the shipped gates cannot pass


def recipe_of(run) -> dict:
    import yaml

    return yaml.safe_load((run / "recipe.yaml").read_text())


def steps_per_epoch(run) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [b["step"] - a["step"] for a, b in zip([{"step": 0}, *rows], rows, strict=False)]


@pytest.mark.slow
def test_mnist_cnn(cli, tmp_path):
    root = write_mnist(tmp_path / "datasets", n_train=60, n_test=20, gz=True)
    result = run_recipe(cli, tmp_path, "mnist-cnn", source=f"torchvision:mnist:{root}",
                        sets=[*ONE_EPOCH, "train.batch_size=16"])
    manifest = result.manifest
    assert manifest["classes"] == [str(d) for d in range(10)] and manifest["input_shape"] == [1, 28, 28]
    assert manifest["splits"]["test"] == 20  # MNIST's own t10k set, as predefined; val cut from its train
    assert manifest["splits"]["train"] + manifest["splits"]["val"] == 60
    assert result.eval["n"] == 20 and 0.0 <= result.eval["metrics"]["accuracy"] <= 1.0
    assert result.outputs["probabilities"].shape == (4, 10) and result.inputs.shape == (4, 1, 28, 28)


@pytest.mark.slow
def test_cifar10_resnet18(cli, tmp_path):
    root = write_cifar10(tmp_path / "datasets", per_batch=12, n_test=20)
    result = run_recipe(cli, tmp_path, "cifar10-resnet18", source=f"torchvision:cifar10:{root}",
                        sets=[*ONE_EPOCH, "train.batch_size=16"])
    assert result.manifest["classes"][:2] == ["airplane", "automobile"]
    assert result.manifest["input_shape"] == [3, 32, 32] and result.manifest["splits"]["test"] == 20
    assert result.eval["n"] == 20 and "top_5_accuracy" in result.eval["metrics"]
    trained = recipe_of(result.run)
    assert trained["data"]["augment"]["crop_padding"] == 4 and trained["data"]["augment"]["horizontal_flip"] == 0.5
    assert trained["train"]["precision"] == "bf16-mixed"  # autocast on the CPU too
    assert trained["train"]["scheduler"] == {**trained["train"]["scheduler"], "name": "cosine", "warmup_epochs": 1}
    assert result.outputs["probabilities"].shape == (4, 10)


@pytest.mark.slow
def test_imagefolder_resnet50_frozen_pretrained(cli, tmp_path):
    import torchvision

    images = make_image_folder(tmp_path / "photos", classes=("cat", "dog", "fox"), per_class=20)
    weights = tmp_path / "resnet50.pt"
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet50().state_dict()  # stands for ImageNet weights: same keys and shapes
    torch.save(pretrained, weights)
    result = run_recipe(cli, tmp_path, "imagefolder-resnet50", source=str(images),
                        sets=[*ONE_EPOCH, "data.image.size=32", "train.batch_size=16",
                              f"model.weights={weights}", "model.freeze=[backbone]"])
    assert result.manifest["classes"] == ["cat", "dog", "fox"] and result.manifest["input_shape"] == [3, 32, 32]
    assert result.eval["n"] == result.manifest["splits"]["test"] == 9
    assert result.eval["metrics"]["accuracy"] >= 0.0 and len(result.eval["confusion_matrix"]) == 3
    assert result.outputs["probabilities"].shape == (4, 3)

    last = torch.load(result.run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    trained = last["networks"]["model"]
    for key in ("layer1.0.conv1.weight", "layer4.2.conv3.weight", "layer3.5.bn2.weight", "layer1.0.bn1.running_mean",
                "layer4.2.bn3.running_var"):  # weights and BatchNorm statistics alike
        assert torch.equal(trained[key], pretrained[key]), f"{key} changed although the backbone is frozen"
    assert trained["fc.weight"].shape == (3, 2048)  # a new head for 3 classes; the 1000-class fc was skipped
    assert trained["conv1.weight"].shape == (64, 3, 3, 3)  # the small-image stem, not the 7x7 one of the file


@pytest.mark.slow
def test_imagefolder_vit(cli, tmp_path):
    images = make_image_folder(tmp_path / "photos", classes=("cat", "dog", "fox"), per_class=20)
    small = ["model.args.num_layers=2", "model.args.hidden_dim=64", "model.args.num_heads=2", "model.args.mlp_dim=128"]
    result = run_recipe(cli, tmp_path, "imagefolder-vit", source=str(images),
                        sets=[*ONE_EPOCH, *small, "data.image.size=32", "train.batch_size=8"])
    assert result.manifest["input_shape"] == [3, 32, 32]
    assert result.eval["n"] == result.manifest["splits"]["test"] == 9
    assert result.outputs["probabilities"].shape == (4, 3)
    trained = recipe_of(result.run)["train"]
    assert trained["precision"] == "bf16-mixed" and trained["accumulate"] == 8
    # 42 training images in batches of 8 = 6 batches, accumulated 8 at a time: one optimiser step per epoch
    assert steps_per_epoch(result.run) == [1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-cnn", "cifar10-resnet18", "imagefolder-resnet50", "imagefolder-vit"])
def test_missing_source_is_one_line(cli, tmp_path, name):
    """The default data.source of a shipped image recipe is a path the user fills: missing, it says so (exit 2)."""
    result = cli("prepare-data", "-r", name)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "data" in lines[0], result.stderr
    assert not (tmp_path / "data" / name).exists()
