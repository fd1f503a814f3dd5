"""`bigmodel prepare-data` from the shell: every bad input is exit 2 with one line and nothing written; the report."""

import json

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
