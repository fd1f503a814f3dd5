"""Small trained runs of every registered model family, trained in-process for one epoch (shared by the module)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

# family -> (recipe, data kind, --set overrides that keep it small and fast)
FAMILIES = {
    "mlp": ("breast-cancer-mlp", "tabular", {"model.args": {"hidden": [16]}}),
    "cnn_small": ("digits-cnn", "image", {"model.args": {"width": 8}}),
    "resnet18": ("digits-cnn", "image", {"model.args": {}}),
    "mobilenet_v3_small": ("digits-cnn", "image", {"model.args": {}}),
    "efficientnet_b0": ("digits-cnn", "image", {"model.args": {}}),
    "vit_b_16": ("digits-cnn", "image", {"model.args": {"num_layers": 1, "hidden_dim": 32, "mlp_dim": 64,
                                                        "num_heads": 2}}),
    "transformer_encoder": ("breast-cancer-mlp", "text", {"model.args": {"d_model": 16, "num_heads": 2, "num_layers": 1,
                                                            "dim_feedforward": 32}}),
    "lstm": ("breast-cancer-mlp", "text", {"model.args": {"embed_dim": 16, "hidden": 16, "num_layers": 2}}),
}


def _text_source(folder: Path) -> Path:
    """A tiny review table: the label is readable from one word, so one epoch learns something."""
    path = folder / "reviews.csv"
    words = ["plot", "actor", "scene", "music", "story", "camera"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(120):
            good = i % 2 == 0
            extra = " ".join(words[(i + k) % len(words)] for k in range(i % 9))
            writer.writerow([f"{'great' if good else 'awful'} film {i} {extra}", "pos" if good else "neg"])
    return path


def train_family(name: str, root: Path, digits_data: Path | None = None) -> Path:
    """A run dir of model `name` trained for one epoch: text on a generated table, images on digits 1x8x8."""
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.training.loop import fit, load_data

    recipe_name, kind, sets = FAMILIES[name]
    overrides = {"model.name": name, **sets, "data.prepared": str(root / "data")}
    if kind == "text":
        overrides.update({"data.source": str(_text_source(root)), "data.kind": "text", "name": "reviews",
                          "data.text.max_length": 12})
    if kind == "image" and digits_data is not None:
        shutil.copytree(digits_data, root / "data")
    recipe = resolve(recipe_name, overrides, ["train.epochs=1", "train.batch_size=32"])
    if not (root / "data").is_dir():
        prepare(recipe)
    # 96 train rows and 32 validation rows: export tests need trained weights, not a good model
    fit(recipe, root / "run", data=load_data(recipe).subset(96, 32))
    return root / "run"


@pytest.fixture(scope="session")
def family_run(tmp_path_factory, digits_run):
    """`family_run("lstm")`: a trained run of that family (cached per session)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = train_family(name, tmp_path_factory.mktemp(name), digits_run.parent / "data")
        return cache[name]

    return get
