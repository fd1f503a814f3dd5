import sys
import textwrap

import pytest
import torch

from bigmodel_cli.config.schema import ModelSection
from bigmodel_cli.errors import UsageError
from bigmodel_cli.models import build_from_recipe, create_model, list_models

SHAPES = {"tabular": [[5], [30]], "image": [[1, 8, 8], [3, 32, 32], [3, 5, 7]]}


def manifest(kind: str, shape: list[int], classes: int = 3) -> dict:
    return {"task": "classification", "kind": kind, "classes": [str(i) for i in range(classes)], "input_shape": shape}


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_registered_model_trains_a_step_on_its_kinds(name):
    for kind in list_models()[name]["kinds"]:
        for shape in SHAPES[kind]:
            net = create_model(name, num_classes=4, input_shape=shape)
            x = torch.randn(3, *shape)
            out = net(x)
            assert out.shape == (3, 4)
            out.sum().backward()
            assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


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
        from bigmodel_cli.models.registry import _check_fits

        _check_fits(torch.nn.Linear(4, 2), "x", [4], 3)
