"""Tables: every reader, cleaning, encoding, scaling, splitting, and the fitted transform applied to new rows."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.data.preprocess import apply
from bigmodel_cli.data.tables import read_table
from bigmodel_cli.errors import UsageError
from tests.unit.data.conftest import people_rows, write_csv, write_recipe


def run(tmp_path, source, *sets, **data):
    recipe = write_recipe(tmp_path, source=str(source), target="label", drop=["id"], **data)
    r = resolve(str(recipe), {"data.prepared": str(tmp_path / "out")}, list(sets))
    return prepare(r)


def split_arrays(tmp_path):
    return {s: [np.asarray(a) for a in manifests.load_split(tmp_path / "out", s)] for s in manifests.SPLITS}


@pytest.mark.parametrize("delimiter,encoding", [(",", "utf-8"), (";", "utf-8"), ("\t", "utf-8"), (",", "utf-8-sig"),
                                                ("|", "utf-16")])
def test_csv_delimiter_and_encoding_are_sniffed(tmp_path, delimiter, encoding):
    rows = people_rows(20)
    rows[0]["city"] = "Zürich"
    table = read_table(write_csv(tmp_path / "p.csv", rows, delimiter, encoding))
    assert table.column_names == list(rows[0]) and table.num_rows == 20
    assert table["city"][0].as_py() == "Zürich"


def test_csv_encoding_can_be_set(tmp_path):
    rows = people_rows(20)
    rows[0]["city"] = "Besançon"
    path = write_csv(tmp_path / "p.csv", rows, encoding="latin-1")
    with pytest.raises(UsageError, match=r"p.csv line 2: not valid utf-8 .*data.encoding"):
        read_table(path)
    assert read_table(path, encoding="latin-1")["city"][0].as_py() == "Besançon"


def test_csv_parquet_and_jsonl_give_the_same_prepared_data(tmp_path):
    rows = people_rows()
    write_csv(tmp_path / "p.csv", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {}
    for suffix in ("csv", "parquet", "jsonl"):
        m = run(tmp_path / suffix if (tmp_path / suffix).mkdir() is None else None, tmp_path / f"p.{suffix}")
        results[suffix] = (m["features"], m["classes"], m["splits"],
                           np.load(tmp_path / suffix / "out/test/x.npy"))
    assert results["csv"][:3] == results["parquet"][:3] == results["jsonl"][:3]
    assert np.allclose(results["csv"][3], results["parquet"][3]) and np.allclose(results["csv"][3], results["jsonl"][3])
    features, classes = results["csv"][:2]
    assert features == ["age", "income", "city=Oslo", "city=Paris", "city=Rome", "member=false", "member=true"]
    assert classes == ["high", "low", "mid"]  # a stable, sorted order


def test_every_statistic_is_fitted_on_train_only_and_applied_to_val_and_test(tmp_path):
    rows = people_rows(300)
    rows[5]["city"] = "Lima"  # a category that only one row has
    m = run(tmp_path, write_csv(tmp_path / "p.csv", rows), "data.binning.columns={age: 4}")
    arrays = split_arrays(tmp_path)
    by_income = {r["income"]: r for r in rows}  # income is unique per row: it identifies the raw row
    raw = {s: [by_income[round(float(v), 3)] for v in arrays[s][0][:, 1]] for s in manifests.SPLITS}
    spec = {c["name"]: c for c in m["preprocessing"]["table"]["columns"]}

    train_ages = np.array([r["age"] for r in raw["train"] if r["age"] is not None], dtype=float)
    all_ages = np.array([r["age"] for r in rows if r["age"] is not None], dtype=float)
    assert spec["age"]["fill"] == pytest.approx(train_ages.mean())  # imputation: train rows only
    assert spec["age"]["fill"] != pytest.approx(all_ages.mean())
    filled = [r["age"] if r["age"] is not None else spec["age"]["fill"] for r in raw["train"]]
    assert spec["age"]["bins"] == pytest.approx(sorted(set(np.quantile(filled, [0.25, 0.5, 0.75]))))  # bin edges
    lima_split = next(s for s in manifests.SPLITS if any(r["city"] == "Lima" for r in raw[s]))
    assert ("Lima" in spec["city"]["categories"]) == (lima_split == "train")  # categories: train only
    norm = m["preprocessing"]["normalize"]  # the normalisation: train only
    assert np.allclose(norm["mean"][:2], arrays["train"][0][:, :2].mean(0), atol=1e-4)
    assert not np.allclose(norm["mean"][:2], np.concatenate([a[0] for a in arrays.values()])[:, :2].mean(0))
    for split in manifests.SPLITS:  # each split is the one fitted transform applied to its raw rows
        assert np.array_equal(apply(m, raw[split]), arrays[split][0])


def test_unseen_and_missing_values_at_inference(tmp_path, people_csv):
    m = run(tmp_path, people_csv, "data.categorical.columns={member: ordinal}")
    x = apply(m, [{"age": None, "income": 55.0, "city": "Tokyo", "member": True},
                  {"age": 40, "income": 55.0, "city": "Paris", "member": None}])
    f = m["features"]
    assert x[0, f.index("age")] == pytest.approx(m["preprocessing"]["table"]["columns"][0]["fill"])
    assert not x[0, [f.index(c) for c in ("city=Oslo", "city=Paris", "city=Rome")]].any()  # unseen: all zeros
    assert x[0, f.index("member")] == 1 and x[1, f.index("city=Paris")] == 1  # ordinal: false=0, true=1
    with pytest.raises(UsageError, match="column 'city' is missing from the input"):
        apply(m, [{"age": 1, "income": 2.0, "member": True}])


@pytest.mark.parametrize("strategy,expected", [("median", None), ("most_frequent", None), ("constant", -1.0)])
def test_imputation_strategies(tmp_path, people_csv, strategy, expected):
    m = run(tmp_path, people_csv, f"data.impute.columns={{age: {strategy}}}", "data.impute.fill_value={age: -1}")
    age = m["preprocessing"]["table"]["columns"][0]
    assert age["impute"] == strategy
    if expected is not None:
        assert age["fill"] == expected
    assert m["report"]["missing_values"]["age"]["missing"] == 22
    assert strategy in m["report"]["missing_values"]["age"]["action"]


def test_drop_imputation_removes_rows_before_the_split(tmp_path, people_csv):
    m = run(tmp_path, people_csv, "data.impute.categorical=drop")
    assert m["report"]["rows_dropped_missing"] == {"city": 19, "member": 0}
    assert sum(m["splits"].values()) == 240 - 19
    assert "19 row(s) dropped" in m["report"]["missing_values"]["city"]["action"]


@pytest.mark.parametrize("method", ["zscore", "iqr"])
def test_outliers_are_removed_from_train_only(tmp_path, method):
    rows = people_rows(300, missing=False)
    for i in range(0, 300, 30):
        rows[i]["income"] = 10_000.0 + i
    m = run(tmp_path, write_csv(tmp_path / "p.csv", rows), f"data.outliers.method={method}")
    outliers = m["report"]["outliers"]
    assert outliers["columns"]["income"] == outliers["removed_from_train"] > 0
    arrays = split_arrays(tmp_path)
    assert arrays["train"][0][:, 1].max() < 1000  # train has none left
    kept = sum(int((arrays[s][0][:, 1] > 1000).sum()) for s in ("val", "test"))
    assert kept > 0 and outliers["removed_from_train"] >= 10 - kept  # val/test keep theirs: they must stay real
    assert sum(m["splits"].values()) == 300 - outliers["removed_from_train"]


def test_minmax_scaling_and_onehot_left_as_indicators(tmp_path, people_csv):
    m = run(tmp_path, people_csv, "data.scaling=minmax")
    x = split_arrays(tmp_path)["train"][0]
    norm = m["preprocessing"]["normalize"]
    assert norm["mean"][1] == pytest.approx(x[:, 1].min()) and norm["std"][1] == pytest.approx(np.ptp(x[:, 1]))
    city = m["features"].index("city=Oslo")
    assert (norm["mean"][city], norm["std"][city]) == (0.0, 1.0)


def test_predefined_split_column(tmp_path):
    rows = people_rows(60, missing=False)
    for i, row in enumerate(rows):
        row["fold"] = ["train", "train", "train", "validation", "test"][i % 5]
    m = run(tmp_path, write_csv(tmp_path / "p.csv", rows), "data.split.column=fold")
    assert m["splits"] == {"train": 36, "val": 12, "test": 12} and "fold" not in m["features"]
    rows[7]["fold"] = "trian"
    with pytest.raises(UsageError, match=r"data.split.column 'fold': row 8 has 'trian'"):
        run(tmp_path, write_csv(tmp_path / "p.csv", rows), "data.split.column=fold")


def test_features_drop_and_regression(tmp_path, people_csv):
    m = run(tmp_path, people_csv, "data.features=[age, city]")
    assert m["features"] == ["age", "city=Oslo", "city=Paris", "city=Rome"]
    m = run(tmp_path, people_csv, "task=regression", "data.target=income")
    assert m["classes"] is None and "income" not in m["features"] and "label=high" in m["features"]
    assert np.load(tmp_path / "out/train/y.npy").dtype == np.float32


def test_constant_feature_warns_but_prepares(tmp_path):
    rows = people_rows(60, missing=False)
    for row in rows:
        row["income"] = 1.0
    m = run(tmp_path, write_csv(tmp_path / "p.csv", rows))
    assert m["report"]["constant_features"] == ["income"]
    assert any("constant feature" in w for w in m["report"]["warnings"])


def test_rare_class_and_high_cardinality(tmp_path):
    rows = people_rows(400, missing=False)
    for i in range(3):
        rows[i]["label"] = "rare"
    m = run(tmp_path, write_csv(tmp_path / "p.csv", rows))
    assert any("class 'rare' is rare: 3 of 400" in w for w in m["report"]["warnings"])
    for i, row in enumerate(rows):
        row["city"] = f"c{i}"
    with pytest.raises(UsageError, match=r"column 'city' has 2\d\d categories, too many to one-hot"):
        run(tmp_path, write_csv(tmp_path / "p.csv", rows))


def test_exact_duplicates_dropped_missing_values_included(tmp_path):
    rows = people_rows(50, missing=False)
    rows[3]["age"] = rows[4]["age"] = None
    rows[4].update({k: rows[3][k] for k in ("income", "city", "member", "label")})
    rows.append(dict(rows[10], id=999))  # the same row under another id (dropped column): a duplicate
    rows.append(dict(rows[11], income=rows[11]["income"] + 0.001))  # nearly the same: kept
    m = run(tmp_path, write_csv(tmp_path / "p.csv", rows))
    assert m["report"]["duplicates_dropped"] == 2 and sum(m["splits"].values()) == 50
    assert run(tmp_path, tmp_path / "p.csv", "data.dedupe=false")["report"]["duplicates_dropped"] == 0


def test_malformed_jsonl_and_parquet_name_the_file_and_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"a": 1, "label": "x"}\n{"a": 2, "label": "y"\n')
    with pytest.raises(UsageError, match=r"p.jsonl line 2: not valid JSON"):
        read_table(tmp_path / "p.jsonl")
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match=r"p.parquet: not a readable Parquet file"):
        read_table(tmp_path / "p.parquet")
    (tmp_path / "n.jsonl").write_text('{"a": {"b": 1}, "label": "x"}\n')
    with pytest.raises(UsageError, match=r"column 'a' holds nested values"):
        read_table(tmp_path / "n.jsonl")


def test_quoted_line_breaks_and_date_columns(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\n"a long\nreview",pos\n"short",neg\n')
    assert read_table(tmp_path / "t.csv")["text"].to_pylist() == ["a long\nreview", "short"]
    rows = people_rows(30, missing=False)
    for i, row in enumerate(rows):
        row["joined"] = f"2024-01-{i % 28 + 1:02d}"
    with pytest.raises(UsageError, match="column 'joined' holds dates/times .* data.drop"):
        run(tmp_path, write_csv(tmp_path / "p.csv", rows))
    assert run(tmp_path, tmp_path / "p.csv", "data.drop=[id, joined]")["features"][0] == "age"
