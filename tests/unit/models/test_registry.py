import sys
import textwrap

import pytest
import torch

from bigmodel_cli.config.schema import ModelSection
from bigmodel_cli.errors import UsageError
from bigmodel_cli.models import create_model, list_models
from bigmodel_cli.models.build import build_from_recipe, check_fits

SHAPES = {"tabular": [[5], [30]], "image": [[1, 8, 8], [3, 32, 32]], "text": [[12]]}
SMALL_IMAGES_ONLY = {"resnet34", "resnet50", "vit_b_16"}  # the big ones: one shape keeps the suite fast


def manifest(kind: str, shape: list[int], classes: int = 3) -> dict:
    return {"task": "classification", "kind": kind, "classes": [str(i) for i in range(classes)], "input_shape": shape}


@pytest.mark.parametrize("name", sorted(n for n, m in list_models().items() if "classification" in m["tasks"]))
def test_every_registered_model_trains_a_step_on_its_kinds(name):  # generative models: tests/unit/tasks
    if name == "hf":
        pytest.skip("hf builds from a local model folder: tests/unit/hf")
    for kind in list_models()[name]["kinds"]:
        for shape in SHAPES[kind][:1] if name in SMALL_IMAGES_ONLY else SHAPES[kind]:
            if kind == "text":
                net = create_model(name, num_classes=4, input_shape=shape, vocab_size=30)
                x = torch.randint(1, 30, (3, *shape))
                x[0, 5:] = 0  # padding at the end of a shorter text
            else:
                net = create_model(name, num_classes=4, input_shape=shape)
                x = torch.randn(3, *shape)
            out = net(x)
            assert out.shape == (3, 4)
            out.sum().backward()
            trainable = [p for p in net.parameters() if p.requires_grad]
            assert all(p.grad is not None for p in trainable if p.ndim > 1 or p.numel() > 1)


@pytest.mark.parametrize("name", ["transformer_encoder", "lstm"])
def test_text_models_ignore_padding(name):
    torch.manual_seed(0)
    net = create_model(name, num_classes=2, input_shape=[10], vocab_size=20).eval()
    short = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0]])
    longer_pad = torch.tensor([[5, 6, 7, 0, 0]])  # same text, less padding
    with torch.no_grad():
        assert torch.allclose(net(short), net(longer_pad), atol=1e-5)
        assert not torch.allclose(net(short), net(torch.tensor([[5, 6, 8, 0, 0]])), atol=1e-5)


def test_small_images_keep_their_resolution_in_the_stem():
    net = create_model("resnet18", num_classes=10, input_shape=[1, 8, 8])
    assert net.conv1.in_channels == 1 and net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    big = create_model("resnet18", num_classes=10, input_shape=[3, 128, 128])
    assert big.conv1.stride == (2, 2) and isinstance(big.maxpool, torch.nn.MaxPool2d)
    vit = create_model("vit_b_16", num_classes=10, input_shape=[3, 32, 32], num_layers=1)
    assert vit.patch_size == 4


def test_unknown_model_suggests_nearest():
    with pytest.raises(UsageError, match="did you mean 'cnn_small'"):
        create_model("cnn_smal", num_classes=2, input_shape=[1, 8, 8])


def test_model_for_the_wrong_kind_of_data_is_a_clear_error():
    with pytest.raises(UsageError, match="takes image data, but the prepared data is tabular"):
        build_from_recipe(ModelSection(name="cnn_small"), manifest("tabular", [30]))


def test_bad_args_name_the_model():
    with pytest.raises(UsageError, match="model 'mlp'.*model.args"):
        build_from_recipe(ModelSection(name="mlp", args={"hiden": [3]}), manifest("tabular", [4]))


def test_user_component_is_called_with_data_shapes(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn
        def build(num_classes, input_shape, hidden=8):
            return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        def wrong(num_classes, input_shape):
            return nn.Linear(input_shape[0] + 1, num_classes)
        def not_a_module(num_classes, input_shape):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_from_recipe(ModelSection(component="my_nets:build", args={"hidden": 5}), manifest("tabular", [6]))
    assert net(torch.zeros(2, 6)).shape == (2, 3)
    with pytest.raises(UsageError, match="does not fit the data"):
        build_from_recipe(ModelSection(component="my_nets:wrong"), manifest("tabular", [6]))
    with pytest.raises(UsageError, match="not a torch.nn.Module"):
        build_from_recipe(ModelSection(component="my_nets:not_a_module"), manifest("tabular", [6]))
    with pytest.raises(UsageError, match="cannot import"):
        build_from_recipe(ModelSection(component="no_such_pkg.mod:build"), manifest("tabular", [6]))
    with pytest.raises(UsageError, match="no callable 'missing'"):
        build_from_recipe(ModelSection(component="my_nets:missing"), manifest("tabular", [6]))
    sys.modules.pop("my_nets", None)


def test_output_size_mismatch_is_reported():
    with pytest.raises(UsageError, match=r"expected output \[N, 3\]"):
        check_fits(torch.nn.Linear(4, 2), "x", [4], 3)
