"""DiffAugment (train.gan.augment): each policy changes what D sees as it says, the same way for real and fake,
differentiably, drawn from torch's generator (a seeded run draws the same)."""

from __future__ import annotations

import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tasks.diffaugment import DiffAugment


def digits(n: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.full((n, 1, 8, 8), -1.0)
    x[:, :, 2:6, 3:5] = torch.rand(n, 1, 4, 2) * 2 - 1  # a stroke on a black background
    return x


def test_translation_shifts_whole_images_by_at_most_one_pixel_and_fills_black():
    x = digits()
    torch.manual_seed(0)
    out = DiffAugment(["translation"])(x)
    assert out.shape == x.shape
    shifted = 0
    for a, b in zip(x, out, strict=True):
        found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                 if torch.equal(torch.roll(torch.nn.functional.pad(a, [1, 1, 1, 1], value=-1), (-dy, -dx), (1, 2))
                                [:, 1:9, 1:9], b)]
        assert found, "not a shift of the image by at most one pixel"
        shifted += found[0] != (0, 0)
    assert shifted > 32  # 8 of 9 shifts move the image


def test_cutout_blacks_out_a_square_of_half_the_side_and_keeps_the_rest():
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    out = DiffAugment(["cutout"])(x)
    changed = out != x
    assert torch.all(out[changed] == -1)
    counts = changed.flatten(1).sum(dim=1)
    assert counts.max() == 16 and counts.min() >= 4  # 4x4, clipped at the border


def test_color_moves_brightness_and_contrast_per_image():
    x = digits()
    torch.manual_seed(0)
    out = DiffAugment(["color"])(x)
    shift = (out - x).mean(dim=(1, 2, 3))
    assert shift.abs().max() <= 0.5 + 1e-6 and shift.std() > 0.1


def test_policies_are_differentiable_and_seeded():
    x = digits().requires_grad_(True)
    augment = DiffAugment(["color", "translation", "cutout"])
    torch.manual_seed(3)
    a = augment(x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(3)
    assert torch.equal(augment(x), a)
    assert torch.equal(DiffAugment([])(x), x)


def test_an_unknown_policy_is_refused_naming_the_key():
    with pytest.raises(UsageError, match=r"train\.gan\.augment"):
        resolve("digits-dcgan", sets=["train.gan.augment=[translate]"])
