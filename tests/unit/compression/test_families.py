"""Every registered model family either prunes or is refused with a clear message.

A family that prunes: half the channels of every prunable group go, the network still maps [N, *input] to
[N, classes] with fewer parameters and MACs, the recorded architecture (`model.pruned`) rebuilds it through
`models.build` so that the pruned weights load strictly and give the same outputs, and its ONNX export
(the `bigmodel export` graph: normalisation, network, softmax) gives what PyTorch gives in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigmodel_cli.compression.architecture import record
from bigmodel_cli.compression.structured import StructuredPruner, count, refuse_unprunable
from bigmodel_cli.config.schema import ModelSection
from bigmodel_cli.errors import UsageError
from bigmodel_cli.models import list_models
from bigmodel_cli.models.build import build_from_recipe

CLASSES = 5
VOCAB = 50
# the cheapest arguments and inputs that still build each family as registered
CASES = {
    "mlp": ("tabular", [13], {"hidden": [32, 16]}),
    "cnn_small": ("image", [1, 8, 8], {"width": 8}),
    "resnet18": ("image", [3, 8, 8], {}),
    "resnet50": ("image", [3, 8, 8], {}),
    "mobilenet_v3_small": ("image", [3, 8, 8], {}),
    "efficientnet_b0": ("image", [3, 8, 8], {}),
    "vit_b_16": ("image", [3, 8, 8], {"num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}),
    "transformer_encoder": ("text", [12], {"d_model": 16, "num_heads": 2, "num_layers": 2, "dim_feedforward": 32}),
}
SAME_CODE_AS = {"resnet34": "resnet18"}  # the same builder (`_resnet`, basic blocks), only deeper
REFUSED = {"lstm": ("text", [12], {"embed_dim": 8, "hidden": 8}, "recurrent layers (LSTM)")}
HEAVY = {"resnet50", "efficientnet_b0"}


def test_every_registered_model_is_pruned_or_refused_here():
    # generative models: prune refuses their runs by task; hf runs are refused (tests/unit/hf/test_finetune.py)
    generative = {name for name, info in list_models().items()
                  if not {"classification", "regression"} & set(info["tasks"])}
    assert set(list_models()) == set(CASES) | set(SAME_CODE_AS) | set(REFUSED) | generative | {"hf"}


def _data(kind: str, shape: list[int]) -> dict:
    return {"task": "classification", "kind": kind, "classes": [f"c{i}" for i in range(CLASSES)],
            "input_shape": shape, "vocab_size": VOCAB}


def _inputs(kind: str, shape: list[int], rows: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if kind == "text":
        ids = torch.randint(2, VOCAB, (rows, *shape), generator=gen)
        ids[rows // 2:, shape[0] // 2:] = 0  # padded texts
        return ids
    return torch.randn(rows, *shape, generator=gen)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in CASES])
def test_family_prunes_rebuilds_exports_and_onnxruntime_agrees(name, tmp_path):
    from bigmodel_cli.export.module import Exportable
    from bigmodel_cli.export.onnx_graph import to_onnx
    from bigmodel_cli.export.verify import reference
    from bigmodel_cli.inference.session import create_session

    kind, shape, args = CASES[name]
    data = _data(kind, shape)
    section = ModelSection(name=name, args=args)
    net = build_from_recipe(section, data).eval()
    x = _inputs(kind, shape, 6)
    before = count(net, x)
    StructuredPruner(net, x[:2], name, ratio=0.5).step()
    after = count(net, x)
    assert net(x).shape == (6, CLASSES)
    assert after["parameters"] < 0.9 * before["parameters"] and after["macs"] < 0.9 * before["macs"]

    rebuilt = build_from_recipe(section.model_copy(update={"pruned": record(net, build_from_recipe(section, data))}),
                                data).eval()
    rebuilt.load_state_dict(net.state_dict())  # strict: every recorded shape fits
    torch.testing.assert_close(rebuilt(x), net(x))

    module = Exportable(torch.nn.Identity(), rebuilt, "classification").eval()
    to_onnx(module, x[:2], tmp_path / "pruned.onnx", 18, "classification")
    session = create_session(tmp_path / "pruned.onnx", "cpu")
    got = session.run(None, {"input": x.numpy()})
    want = reference(module, x.numpy())
    np.testing.assert_allclose(got[1], want, atol=1e-4)  # probabilities


@pytest.mark.parametrize("name", list(REFUSED))
def test_unprunable_family_is_refused_clearly(name):
    kind, shape, args, reason = REFUSED[name]
    net = build_from_recipe(ModelSection(name=name, args=args), _data(kind, shape))
    with pytest.raises(UsageError, match=rf"model '{name}' cannot be pruned: .*{reason.split('(')[0]}"):
        refuse_unprunable(net, name)
