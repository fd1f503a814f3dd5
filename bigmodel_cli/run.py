"""A run directory: the one owner of what a run holds, so that it carries its own meaning.

    bigmodel train -r digits-cnn      # writes runs/digits-cnn/{recipe.yaml, preprocessing.json, reference/, ...}
    run = load_run("runs/digits-cnn")                 # from any working directory, on any machine
    x, y = prepared_split(run, "test")               # exit 2 if the prepared data changed since training

`recipe.yaml` is the resolved recipe with its paths made absolute. `preprocessing.json` is the
prepared data's manifest as it was when the run trained: task, kind, classes, features, input
shape, the fitted preprocessing (normalisation, imputation values, categories, bins, the
tokenizer) and the data's fingerprint. `reference/` holds a few hundred validation and train
rows, so `export` can verify and calibrate a moved run without its prepared data. Nothing
outside the run directory changes what it means: eval, export, serve and benchmark read the
preprocessing from here, never from `data/<name>` as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import atomic
from bigmodel_cli.errors import UsageError

RUN_DATA = "preprocessing.json"
REFERENCE = "reference"
REFERENCE_ROWS = 512  # rows of each reference split kept in the run
REFERENCE_BYTES = 16 * 2**20  # at most this many bytes of inputs per reference split


@dataclass
class Run:
    path: Path
    recipe: Any  # schema.Recipe
    manifest: dict[str, Any]  # the run's own copy of the data description (preprocessing.json)


def load_run(run_dir: str | Path) -> Run:
    from bigmodel_cli.config.recipe import load_yaml, validate

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    recipe_file = path / "recipe.yaml"
    if not recipe_file.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no recipe.yaml); create one with bigmodel train -r RECIPE "
                         f"--run-dir {run_dir}")
    recipe = validate(load_yaml(recipe_file), str(recipe_file))
    return Run(path=path, recipe=recipe, manifest=read_data(path))


def read_data(run_dir: Path) -> dict[str, Any]:
    import json

    file = run_dir / RUN_DATA
    if not file.is_file():
        raise UsageError(f"{run_dir}: no {RUN_DATA} (a run written by an older bigmodel, or a training that never "
                         "started); train it again")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{file}: not valid JSON ({e})") from e


def portable_recipe(recipe):
    """The recipe with every local path made absolute, so the run means the same from any directory."""
    data = recipe.data
    updates: dict[str, Any] = {"prepared": str(Path(recipe.prepared_dir).expanduser().resolve())}
    source = data.source
    if source and ":" not in source.split("/")[0]:  # a local file or folder, not sklearn:/torchvision: names
        updates["source"] = str(Path(source).expanduser().resolve())
    elif source and source.startswith("torchvision:") and source.count(":") >= 2:
        scheme, name, root = source.split(":", 2)
        updates["source"] = f"{scheme}:{name}:{Path(root).expanduser().resolve()}"
    model_updates = {}
    if recipe.model.weights:
        model_updates["weights"] = str(Path(recipe.model.weights).expanduser().resolve())
    if recipe.model.path and Path(recipe.model.path).expanduser().exists():  # a local folder, not a Hub id
        model_updates["path"] = str(Path(recipe.model.path).expanduser().resolve())
    return recipe.model_copy(update={"data": data.model_copy(update=updates),
                                     "model": recipe.model.model_copy(update=model_updates)})


def write_run_files(run_dir: Path, recipe, manifest: dict[str, Any], train, val) -> None:
    """What a run carries (rank 0, before training): resolved recipe, data description, reference rows.

    `train` and `val` are (x, y) arrays (memory-mapped); a few hundred rows of each are copied.
    """
    from bigmodel_cli.config.recipe import dump

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "recipe.yaml", dump(portable_recipe(recipe)))
    atomic.write_json(run_dir / RUN_DATA, manifest)
    for split, (x, y) in (("train", train), ("val", val)):
        rows = _reference_rows(x)
        for name, array in (("x", x), ("y", y)):
            with atomic.atomic_path(run_dir / REFERENCE / f"{split}_{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(array[:rows]))  # to the open file: np.save(path) would append .npy


def _reference_rows(x) -> int:
    row_bytes = max(1, int(np.prod(x.shape[1:])) * x.dtype.itemsize)
    return int(min(len(x), REFERENCE_ROWS, max(1, REFERENCE_BYTES // row_bytes)))


def reference_rows(run: Run, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """The reference rows the run keeps (model inputs as stored, and their targets)."""
    folder = run.path / REFERENCE
    try:
        return np.load(folder / f"{split}_x.npy"), np.load(folder / f"{split}_y.npy")
    except (OSError, ValueError) as e:
        raise UsageError(f"{folder}: missing or unreadable reference rows ({e}); train the run again") from e


def prepared_split(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split of the prepared data the run trained on (memory-mapped), if it still is that data."""
    from bigmodel_cli.data import manifest as manifests

    folder = Path(run.recipe.prepared_dir)
    check_fingerprint(run, manifests.read(folder, run.recipe.name), folder)
    return manifests.load_split(folder, split)


def rows(run: Run, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """Rows to verify, calibrate or time a model on: the prepared split while it is still the data the run
    trained on (memory-mapped, whole), else the reference rows the run carries (a moved run, new data)."""
    try:
        return prepared_split(run, split)
    except UsageError:
        return reference_rows(run, split)


def check_fingerprint(run: Run, prepared: dict[str, Any], folder: Path) -> None:
    """Exit 2, naming both fingerprints and the two ways out, when prepared data is not what the run trained on."""
    want, got = run.manifest.get("fingerprint"), prepared.get("fingerprint")
    if want != got:
        raise UsageError(f"{folder} is not the data {run.path} was trained on (prepared data fingerprint "
                         f"{str(got)[:12]}, the run's {str(want)[:12]}): it was prepared again since. Evaluate "
                         f"raw rows with `bigmodel eval {run.path} --data RAW_FILE`, or train again")


def load_network(run: Run, which: str = "best"):
    """The trained network (eval mode, CPU), its input normaliser, and the checkpoint path."""
    from bigmodel_cli.models.build import load_trained

    return load_trained(run, which)
