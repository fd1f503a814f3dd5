"""The recorded architecture of a pruned network: plain data that rebuilds it from its builder's network."""

import pytest
import torch
import yaml
from torch import nn

from bigmodel_cli.compression.architecture import apply, digest, record


class Net(nn.Module):
    """A bit of everything structured pruning changes: a conv, a norm over a tuple shape, a parameter on the root."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.LayerNorm((width,))
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = self.conv(x).mean((2, 3)) * self.scale
        return self.head(self.norm(h))


def test_record_then_apply_rebuilds_the_network_from_the_builder():
    small, builder = Net(width=5), Net(width=8)
    spec = record(small, builder)
    assert spec["conv"] == {"out_channels": 5, "weight": "5x3x3x3", "bias": "5"}
    assert spec["norm"]["normalized_shape"] == [5] and spec["."] == {"scale": "5"}
    assert "head" in spec and spec["head"]["in_features"] == 5
    spec = yaml.safe_load(yaml.safe_dump(spec))  # what recipe.yaml keeps
    rebuilt = apply(Net(width=8), spec)
    rebuilt.load_state_dict(small.state_dict())  # strict
    assert rebuilt.norm.normalized_shape == (5,)  # the attribute keeps its type: LayerNorm compares tuples
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(rebuilt(x), small(x))


def test_an_unpruned_network_records_nothing_and_digests_tell_architectures_apart():
    assert record(Net(), Net()) == {} and digest({}) is None
    assert digest(record(Net(5), Net())) != digest(record(Net(6), Net())) != None  # noqa: E711


def test_another_kind_of_network_is_not_a_pruning():
    class Other(Net):
        pass

    with pytest.raises(ValueError, match="not a structured pruning"):
        record(nn.Sequential(nn.Linear(2, 2)), Net())
    assert record(Net(), Net()) == {}
