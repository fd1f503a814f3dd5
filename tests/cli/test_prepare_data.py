"""`bigmodel prepare-data` from the shell: every bad input is exit 2 with one line and nothing written; the report."""

import json
import shutil

import pytest

from tests.conftest import tree
from tests.unit.data.conftest import make_image_folder, people_rows, write_csv


def recipe(folder, source, **data):
    import yaml

    (folder / "r.yaml").write_text(yaml.safe_dump({"name": "t", "data": {"source": source, "target": "label",
                                                                          **data}, "model": {"name": "mlp"}}))
    return "r.yaml"


def make_sources(folder):
    """One file or folder per bad input."""
    (folder / "empty.csv").write_bytes(b"")
    (folder / "header.csv").write_text("a,b,label\n")
    (folder / "ragged.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,6,7,z\n")
    (folder / "latin.csv").write_bytes("a,city,label\n1,Besançon,x\n".encode("latin-1"))
    (folder / "garbage.csv").write_bytes(bytes(range(256)) * 40)
    write_csv(folder / "ok.csv", people_rows(60, missing=False))
    rows = people_rows(60, missing=False)
    for row in rows:
        row["label"] = None
    write_csv(folder / "nolabel.csv", rows)
    rows = people_rows(60, missing=False)
    rows[0]["label"] = rows[1]["label"] = "rare"
    write_csv(folder / "rare.csv", rows)
    (folder / "noclasses").mkdir()
    (folder / "noclasses" / "readme.txt").write_text("no class folders here")
    (folder / "noimages" / "cat").mkdir(parents=True)
    (folder / "noimages" / "cat" / "notes.txt").write_text("x")
    make_image_folder(folder / "badimage", per_class=4)
    (folder / "badimage" / "cat" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "afile").write_text("I am a file")
    make_image_folder(folder / "oneclass", classes=("cat",), per_class=6)
    rows = people_rows(40, missing=False)
    for row in rows:
        row["label"] = "same"
    write_csv(folder / "onelabel.csv", rows)
    rows = people_rows(100, missing=False)
    for i, row in enumerate(rows):
        row["price"] = i % 60  # a quantity: 60 integer values, many seen once
    write_csv(folder / "prices.csv", rows)


CASES = [
    ("missing.csv", [], "data.source 'missing.csv': no such file"),
    ("empty.csv", [], "empty.csv: empty file"),
    ("header.csv", [], "header.csv: header only, no data rows"),
    ("ragged.csv", [], "ragged.csv line 4: 4 fields, but the header has 3"),
    ("latin.csv", [], "latin.csv line 2: not valid utf-8 text (byte 0xe7"),
    ("garbage.csv", [], "garbage.csv: binary data (NUL bytes), not a text CSV file"),
    ("ok.csv", ["--set", "data.target=lable"], "target column 'lable' not found; did you mean 'label'?"),
    ("nolabel.csv", [], "nolabel.csv: target column 'label' has no values"),
    ("rare.csv", [], "class 'rare' has only 2 row(s); a stratified train/val/test split needs at least 3"),
    ("noclasses", [], "noclasses: no class folders"),
    ("noimages", [], "noimages: no images in its class folders (cat)"),
    ("badimage", ["--set", "data.image.size=8", "--set", "data.on_bad_file=error"], "zz.png: unreadable image"),
    ("ok.csv", ["--out", "afile"], "--out afile: is a file, not a folder"),
    ("ok.csv", ["--set", "data.impute.columns={agee: median}"], "data.impute.columns.agee: column 'agee' not found; "
                                                                 "did you mean 'age'?"),
    ("oneclass", ["--set", "data.image.size=8"], "one class ('cat'); a classification task needs at least two classes"),
    ("onelabel.csv", [], "target column 'label' has one class ('same'); a classification task needs at least two"),
    ("prices.csv", ["--set", "data.target=price", "--set", "data.drop=[label]"],
     "target column 'price' holds 60 distinct numbers and class '40' has only 1 row(s); if it is a quantity to "
     "predict, set task: regression"),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    make_sources(folder)
    return folder


@pytest.mark.parametrize("source,args,message", CASES, ids=[f"{c[0]}-{c[2][:30]}" for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, sources, source, args, message):
    recipe(sources, source)
    before = tree(sources)
    result = cli("prepare-data", "-r", "r.yaml", *args, cwd=sources)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert tree(sources) == before  # nothing written, the source untouched


def test_constant_feature_warns_and_json_has_the_report(cli, tmp_path):
    rows = people_rows(80, missing=True)
    for row in rows:
        row["member"] = True
    write_csv(tmp_path / "p.csv", rows)
    recipe(tmp_path, "p.csv", drop=["id"])
    result = cli("prepare-data", "-r", "r.yaml", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    doc = result.json()
    report = doc["manifest"]["report"]
    assert report["constant_features"] == ["member=true"] and "warning: constant feature" in result.stderr
    assert report["rows_read"] == 80 and report["missing_values"]["age"]["missing"] == 8
    assert set(report["class_counts"]["train"]) == {"high", "low", "mid"} and len(report["source_sha256"]) == 64
    assert json.loads((tmp_path / "data/t/manifest.json").read_text())["report"] == report
    human = cli("prepare-data", "-r", "r.yaml", cwd=tmp_path)
    assert human.code == 0 and human.stdout == ""
    for words in ("data report", "rows read", "duplicates dropped", "missing values", "class counts", "SHA-256"):
        assert words in human.stderr


def test_rerun_replaces_output_only_on_success(cli, tmp_path):
    write_csv(tmp_path / "p.csv", people_rows(60))
    recipe(tmp_path, "p.csv", drop=["id"])
    assert cli("prepare-data", "-r", "r.yaml", cwd=tmp_path).code == 0
    before = tree(tmp_path)
    (tmp_path / "p.csv").write_text("a,label\n")  # the source broke: the previous output stays as it was
    failed = cli("prepare-data", "-r", "r.yaml", cwd=tmp_path)
    assert failed.code == 2
    assert {k: v for k, v in tree(tmp_path).items() if k != "p.csv"} == {k: v for k, v in before.items()
                                                                         if k != "p.csv"}
    write_csv(tmp_path / "p.csv", people_rows(90))
    assert cli("prepare-data", "-r", "r.yaml", cwd=tmp_path).code == 0
    manifest = json.loads((tmp_path / "data/t/manifest.json").read_text())
    assert manifest["report"]["rows_read"] == 90
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["t"]  # no temporary folder left behind


def test_data_of_another_source_or_recipe_is_replaced_only_with_force(cli, tmp_path):
    write_csv(tmp_path / "p.csv", people_rows(60))
    write_csv(tmp_path / "q.csv", people_rows(70, seed=1))
    recipe(tmp_path, "p.csv", drop=["id"])
    assert cli("prepare-data", "-r", "r.yaml", cwd=tmp_path).code == 0
    before = tree(tmp_path / "data")
    other = cli("prepare-data", "-r", "r.yaml", "--source", "q.csv", cwd=tmp_path)
    assert other.code == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "data/t holds data prepared from 'p.csv', not 'q.csv'" in other.stderr and "--force" in other.stderr
    assert tree(tmp_path / "data") == before
    (tmp_path / "u.yaml").write_text((tmp_path / "r.yaml").read_text().replace("name: t", "name: u"))
    renamed = cli("prepare-data", "-r", "u.yaml", "--out", "data/t", cwd=tmp_path)
    assert renamed.code == 2 and "holds the data of recipe 't', not 'u'" in renamed.stderr
    assert "--force" in renamed.stderr and tree(tmp_path / "data") == before
    (tmp_path / "p-copy.csv").write_bytes((tmp_path / "p.csv").read_bytes())  # the same data under another name
    assert cli("prepare-data", "-r", "r.yaml", "--source", "p-copy.csv", cwd=tmp_path).code == 0
    forced = cli("prepare-data", "-r", "r.yaml", "--source", "q.csv", "--force", "--json", cwd=tmp_path)
    assert forced.code == 0 and forced.json()["manifest"]["source"] == "q.csv"
    assert json.loads((tmp_path / "data/t/manifest.json").read_text())["report"]["rows_read"] == 70
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    refused = cli("prepare-data", "-r", "r.yaml", "--out", "notes", cwd=tmp_path)
    assert refused.code == 2 and "notes: exists and is not prepared data" in refused.stderr
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_image_folder_with_its_own_train_val_test_folders(cli, tmp_path):
    for split, per_class in (("train", 10), ("val", 3), ("test", 4)):
        make_image_folder(tmp_path / "photos" / split, per_class=per_class, seed=len(split))
    (tmp_path / "r.yaml").write_text("name: t\ndata: {source: photos, image: {size: 8}}\nmodel: {name: mlp}\n")
    result = cli("prepare-data", "-r", "r.yaml", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "the folder's own train/val/test" in " ".join(result.stderr.split())
    manifest = json.loads((tmp_path / "data/t/manifest.json").read_text())
    assert manifest["splits"] == {"train": 20, "val": 6, "test": 8} and manifest["classes"] == ["cat", "dog"]
    assert manifest["report"]["split_method"] == "the folder's own train/val/test"


def _smooth_pngs(root, n, size):
    """n RGB PNGs of size x size in two class folders: gradients that compress (and so write) fast."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(n):
        folder = root / ("ab"[i % 2])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (ramp[None, :, None] * rng.random(3, dtype=np.float32) + ramp[:, None, None] * rng.random(3)) / 2
        pixels[i % size] = 255
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:04d}.png", compress_level=1)


def _peak_vm_data(cmd, cwd, env):
    """(exit code, peak VmData in bytes): the private writable memory that `prlimit --data` limits, polled."""
    import subprocess
    import time
    from pathlib import Path

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, peak = Path(f"/proc/{proc.pid}/status"), 0
    while proc.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmData:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.005)
    return proc.returncode, peak


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit (util-linux)")
def test_private_memory_capped_below_the_size_of_the_images(tmp_path):
    """320 images of 256x256x3 (63 MB of pixels) prepare with private memory capped 48 MiB above what 24 need."""
    import os
    import sys

    _smooth_pngs(tmp_path / "few", 24, 256)
    _smooth_pngs(tmp_path / "many", 320, 256)
    for name in ("few", "many"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\ndata: {{source: {name}}}\nmodel: {{name: mlp}}\n")
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bigmodel_cli", "prepare-data", "-r"]
    code, base = _peak_vm_data([*command, "few.yaml"], tmp_path, env)
    assert code == 0 and base > 0
    limit = base + 48 * 2**20  # less than the 63 MB of pixels: they cannot all sit in private memory
    code, _ = _peak_vm_data(["prlimit", f"--data={limit}", *command, "many.yaml"], tmp_path, env)
    assert code == 0, f"prepare-data failed under prlimit --data={limit} (24 images needed {base})"
    manifest = json.loads((tmp_path / "data/many/manifest.json").read_text())
    assert sum(manifest["splits"].values()) == 320 and manifest["input_shape"] == [3, 256, 256]
