"""Small sources on which streaming prepare-data must give what the in-memory prepare-data of commit c423ab6 gave.

    python -m tests.unit.data.make_golden /tmp/bigmodel-c423ab6   # regenerate with the old code (see there)

`golden/c423ab6.json` holds, per case, the manifest that commit wrote (paths replaced by
`<root>`, format_version and bigmodel_version left out) and the SHA-256 of each split's x.npy
and y.npy bytes. Only helpers that exist at that commit are used, so the old code can run it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.unit.data.conftest import make_image_folder, people_rows, write_csv, write_mnist, write_recipe

SPLITS = ("train", "val", "test")
VOLATILE = ("format_version", "bigmodel_version", "fingerprint")


def _people(root: Path) -> str:
    rows = people_rows(300, seed=1)
    rows += [dict(r) for r in rows[:25:3]]  # exact duplicates, later in the file
    for i, row in enumerate(rows):
        row["id"] = 0  # ids would make every row unique
        if i % 17 == 0:
            row["income"] = None
    return str(write_csv(root / "people.csv", rows))


def _people_jsonl(root: Path) -> str:
    rows = people_rows(200, seed=2)
    (root / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "people.jsonl")


def _people_parquet(root: Path) -> str:
    pq.write_table(pa.Table.from_pylist(people_rows(200, seed=3)), root / "people.parquet")
    return str(root / "people.parquet")


def _late_types(root: Path, suffix: str) -> str:
    """Columns whose type only the later rows show: empty then text, integers then decimals, a rare category."""
    rows = []
    for i in range(900):
        late = i >= 600
        rows.append({"a": i % 7, "note": ("x", "y", "z")[i % 3] if late and i % 4 else None,
                     "size": (i % 10) + (0.5 if late and i % 5 == 0 else 0), "flag": "yes" if i % 2 else "no",
                     "label": ("p", "q")[(i // 3) % 2]})
    if suffix == "csv":
        return str(write_csv(root / "late.csv", rows))
    (root / "late.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "late.jsonl")


def _with_split_column(root: Path) -> str:
    rows = people_rows(150, seed=4)
    for i, row in enumerate(rows):
        row["part"] = ("train", "Validation", "TEST", "train", "train")[i % 5]
    return str(write_csv(root / "split.csv", rows))


def _texts(root: Path) -> str:
    words = ["good", "bad", "film", "plot", "actor", "great", "dull", "scene", "music", "long"]
    rows = []
    for i in range(120):
        text = " ".join(words[(i * k + k) % len(words)] for k in range(1, 4 + i % 9))
        rows.append({"text": None if i % 23 == 0 else f"{text} {i % 13}", "label": ("pos", "neg")[i % 2]})
    rows += rows[:6]
    return str(write_csv(root / "texts.csv", rows))


def _images(root: Path) -> str:
    folder = make_image_folder(root / "images", per_class=10, seed=5)
    shutil.copy(folder / "cat" / "001.png", folder / "cat" / "zz_copy.png")  # a duplicate
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return str(folder)


def _mnist(root: Path) -> str:
    return f"torchvision:mnist:{write_mnist(root / 'mnist', n_train=60, n_test=20)}"


CASES: dict[str, tuple[Callable[[Path], str], dict, list[str]]] = {
    "table-defaults": (_people, {"target": "label", "drop": ["id"]}, []),
    "table-median-bins-minmax-iqr": (_people, {"target": "label"}, [
        "data.impute.columns={age: median, income: most_frequent}", "data.categorical.columns={city: ordinal}",
        "data.binning.columns={age: 4, income: 3}", "data.scaling=minmax", "data.outliers.method=iqr",
        "data.drop=[id]"]),
    "table-constant-uniform-zscore-nodedupe": (_people, {"target": "label", "drop": ["id"]}, [
        "data.impute.numeric=constant", "data.impute.categorical=constant",
        "data.impute.fill_value={age: -1, city: none}", "data.binning.columns={income: 5}",
        "data.binning.strategy=uniform", "data.outliers.method=zscore", "data.outliers.threshold=2",
        "data.dedupe=false", "seed=7"]),
    "table-drop-missing-nostratify": (_people, {"target": "label", "drop": ["id"]}, [
        "data.impute.numeric=drop", "data.split.stratify=false", "data.categorical.encoding=ordinal"]),
    "table-regression": (_people, {"target": "income", "drop": ["id"]}, [
        "task=regression", "data.impute.columns={age: median}"]),
    "jsonl": (_people_jsonl, {"target": "label", "drop": ["id"]}, []),
    "parquet": (_people_parquet, {"target": "label", "drop": ["id"]}, ["data.scaling=none"]),
    "csv-late-types": (lambda root: _late_types(root, "csv"), {"target": "label"}, []),
    "jsonl-late-types": (lambda root: _late_types(root, "jsonl"), {"target": "label"}, ["data.dedupe=false"]),
    "split-column": (_with_split_column, {"target": "label", "drop": ["id"], "split": {"column": "part"}}, []),
    "text-word": (_texts, {"target": "label"}, ["data.text.max_length=12"]),
    "text-bpe": (_texts, {"target": "label"}, ["data.text.tokenizer=bpe", "data.text.vocab_size=80",
                                               "data.split={val: 0.2, test: 0.1}"]),
    "image-folder": (_images, {}, ["data.image.size=12"]),
    "image-folder-grey": (_images, {}, ["data.image.size=9", "data.image.channels=1",
                                        "data.split.stratify=false"]),
    "sklearn-digits": (lambda root: "sklearn:digits", {}, []),
    "sklearn-wine": (lambda root: "sklearn:wine", {}, []),
    "sklearn-diabetes": (lambda root: "sklearn:diabetes", {}, ["task=regression"]),
    "torchvision-mnist": (_mnist, {}, ["data.image.size=14"]),
}


def run_case(name: str, root: Path) -> tuple[dict, dict[str, str]]:
    """Prepare one case under `root` (a fresh folder); returns (normalised manifest, {split/file: sha256})."""
    import hashlib

    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    build, data, sets = CASES[name]
    root.mkdir(parents=True, exist_ok=True)
    source = build(root)
    recipe = write_recipe(root, source=source, **data)
    console.quiet(True)
    manifest = prepare(resolve(str(recipe), {"data.prepared": str(root / "out")}, sets))
    text = json.dumps({k: v for k, v in manifest.items() if k not in VOLATILE}, sort_keys=True)
    normalised = json.loads(text.replace(str(root), "<root>"))
    for bad in normalised["report"].get("bad_files") or []:
        bad["error"] = "..."  # PIL's message (and the object address in it) is not a result
    digests = {f"{s}/{f}": hashlib.sha256((root / "out" / s / f).read_bytes()).hexdigest()
               for s in SPLITS for f in ("x.npy", "y.npy")}
    return normalised, digests
