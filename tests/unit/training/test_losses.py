import numpy as np
import pytest
import torch

from bigmodel_cli.config.schema import TrainSection
from bigmodel_cli.errors import UsageError
from bigmodel_cli.models.build import BinaryLogits, resolve_loss
from bigmodel_cli.training.losses import TaskLoss, class_weights, l1_penalty


def test_auto_loss_per_task():
    cfg = TrainSection()
    assert resolve_loss(cfg, "classification", ["a", "b"]) == "bce"
    assert resolve_loss(cfg, "classification", ["a", "b", "c"]) == "cross_entropy"
    assert resolve_loss(cfg, "regression", None) == "mse"
    with pytest.raises(UsageError, match="bce needs exactly 2 classes"):
        resolve_loss(TrainSection(loss="bce"), "classification", ["a", "b", "c"])
    with pytest.raises(UsageError, match="is for regression"):
        resolve_loss(TrainSection(loss="huber"), "classification", ["a", "b"])
    with pytest.raises(UsageError, match="is for classification"):
        resolve_loss(TrainSection(loss="cross_entropy"), "regression", None)


def test_binary_head_gives_sigmoid_probabilities_and_bce_equals_ce():
    torch.manual_seed(0)
    head = BinaryLogits(torch.nn.Linear(3, 1))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    logits = head(x)
    z = head.net(x)[:, 0]
    assert torch.allclose(torch.softmax(logits, 1)[:, 1], torch.sigmoid(z), atol=1e-6)
    bce = TaskLoss("bce", TrainSection(), None)(logits, y)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(bce, ce, atol=1e-6)


def test_auto_class_weights_are_inverse_frequency():
    y = np.array([0] * 90 + [1] * 10)
    w = class_weights(TrainSection(class_weights="auto"), y, 2)
    assert torch.allclose(w, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))
    weighted = TaskLoss("bce", TrainSection(), w)
    assert weighted.fn.pos_weight.item() == pytest.approx(9.0)
    with pytest.raises(UsageError, match="has 3 values; the data has 2 classes"):
        class_weights(TrainSection(class_weights=[1, 2, 3]), y, 2)


def test_regression_losses():
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 0.0])
    assert TaskLoss("mse", TrainSection(), None)(out, y).item() == pytest.approx(5.0)
    assert TaskLoss("mae", TrainSection(), None)(out, y).item() == pytest.approx(2.0)
    assert TaskLoss("huber", TrainSection(huber_delta=1.0), None)(out, y).item() == pytest.approx((0.5 + 2.5) / 2)


def test_l1_penalty_skips_biases():
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(-1.0)
        layer.bias.fill_(5.0)
    assert l1_penalty(layer).item() == pytest.approx(4.0)
