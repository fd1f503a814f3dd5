import json

import numpy as np
import pytest

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.data.sources import read_source
from bigmodel_cli.errors import UsageError


def prepared(tmp_path, recipe="breast-cancer-mlp", *sets):
    r = resolve(recipe, {"data.prepared": str(tmp_path / "data")}, list(sets))
    return r, prepare(r)


@pytest.mark.parametrize("source,kind,task", [
    ("sklearn:digits", "image", "classification"), ("sklearn:breast_cancer", "tabular", "classification"),
    ("sklearn:wine", "tabular", "classification"), ("sklearn:iris", "tabular", "classification"),
    ("sklearn:diabetes", "tabular", "regression"),
])
def test_every_sklearn_source_prepares(tmp_path, source, kind, task):
    r, m = prepared(tmp_path, "breast-cancer-mlp", f"data.source={source}", f"task={task}")
    assert (m["kind"], m["task"]) == (kind, task)
    x, y = manifests.load_split(tmp_path / "data", "train")
    assert x.dtype == (np.uint8 if kind == "image" else np.float32)
    assert y.dtype == (np.int64 if task == "classification" else np.float32)
    assert list(x.shape[1:]) == m["input_shape"]
    assert sum(m["splits"].values()) == m["report"]["rows_read"] - m["report"]["duplicates_dropped"]
    assert len(m["source_sha256"]) == 64


def test_splits_are_disjoint_stratified_and_seeded(tmp_path):
    r, m = prepared(tmp_path / "a")
    xs = {s: manifests.load_split(tmp_path / "a" / "data", s)[0] for s in manifests.SPLITS}
    rows = {s: {tuple(row) for row in np.asarray(x)} for s, x in xs.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    fractions = {s: n / sum(m["splits"].values()) for s, n in m["splits"].items()}
    assert fractions["val"] == pytest.approx(0.15, abs=0.01) and fractions["test"] == pytest.approx(0.15, abs=0.01)
    for counts in m["report"]["class_counts"].values():  # class proportions kept in every split
        share = counts["malignant"] / sum(counts.values())
        assert share == pytest.approx(212 / 569, abs=0.03)
    _, again = prepared(tmp_path / "b")
    assert again["splits"] == m["splits"]
    assert np.array_equal(np.load(tmp_path / "a/data/test/x.npy"), np.load(tmp_path / "b/data/test/x.npy"))


def test_normalisation_is_fitted_on_train_only(tmp_path):
    r, m = prepared(tmp_path)
    x_train = np.asarray(manifests.load_split(tmp_path / "data", "train")[0], dtype=np.float64)
    table = read_source("sklearn:breast_cancer").table
    x_all = np.stack([np.asarray(table[f], dtype=np.float64) for f in m["features"]], axis=1)
    norm = m["preprocessing"]["normalize"]
    assert np.allclose(norm["mean"], x_train.mean(0)) and np.allclose(norm["std"], x_train.std(0))
    assert not np.allclose(norm["mean"], x_all.mean(0))  # the whole table (val/test included) differs


def test_image_normalisation_per_channel_on_train(tmp_path):
    r, m = prepared(tmp_path, "digits-cnn")
    x = np.load(tmp_path / "data/train/x.npy")
    norm = m["preprocessing"]["normalize"]
    assert norm["per"] == "channel" and norm["scale"] == pytest.approx(1 / 255)
    assert norm["mean"][0] == pytest.approx((x / 255.0).mean())
    assert x.max() == 255 and x.shape[1:] == (1, 8, 8)


def test_manifest_has_the_spec_fields(tmp_path):
    _, m = prepared(tmp_path)
    on_disk = json.loads((tmp_path / "data/manifest.json").read_text())
    assert on_disk == m
    for key in ("format_version", "task", "kind", "source", "source_sha256", "target", "classes", "features",
                "splits", "preprocessing", "report"):
        assert key in m
    assert m["classes"] == ["malignant", "benign"]


def test_out_pointing_at_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    r = resolve("breast-cancer-mlp", {"data.prepared": str(target)})
    with pytest.raises(UsageError, match="is a file"):
        prepare(r)
    assert target.read_text() == "keep me"


def test_failed_rerun_keeps_previous_output(tmp_path, monkeypatch):
    r, m = prepared(tmp_path)
    before = (tmp_path / "data/manifest.json").read_text()
    import bigmodel_cli.data.arrays as arrays

    monkeypatch.setattr(arrays, "create_npy", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        prepare(r)
    assert (tmp_path / "data/manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unknown_sources_are_clear():
    with pytest.raises(UsageError, match="did you mean 'sklearn:digits'"):
        read_source("sklearn:digit")
    with pytest.raises(UsageError, match="data.source is not set"):
        read_source(None)
    with pytest.raises(UsageError, match="unsupported source"):
        read_source("s3://bucket/x.csv")


def test_classification_recipe_on_regression_data_is_refused(tmp_path):
    with pytest.raises(UsageError, match="set task: regression"):
        prepared(tmp_path, "breast-cancer-mlp", "data.source=sklearn:diabetes")
