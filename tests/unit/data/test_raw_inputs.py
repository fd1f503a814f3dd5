"""Raw inputs -> model inputs (`data.raw_inputs`) and new rows read a chunk at a time (`tables.RowSource`): the same
arrays prepare-data wrote for the same rows, and bad rows named, not raised, when asked."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bigmodel_cli import console
from bigmodel_cli.data import images, preprocess
from bigmodel_cli.data.raw_inputs import InputSpec
from bigmodel_cli.data.tables import ROW_ERROR, RowSource, text_lines
from bigmodel_cli.errors import UsageError
from tests.unit.data.conftest import write_csv

CITIES = ["Oslo", "Bergen", "Paris"]


def people(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = None if i % 7 == 3 else int(rng.integers(18, 90))
        rows.append({"id": f"c{i:04d}", "age": age, "income": round(float(rng.normal(50, 10)), 3),
                     "city": None if i % 11 == 5 else CITIES[i % 3], "member": bool(i % 2),
                     "fold": ("train", "train", "train", "val", "test")[i % 5],
                     "label": "yes" if (age or 40) > 50 else "no"})
    return rows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A table prepared by prepare-data (split by a fold column): its manifest, folder and raw rows."""
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("raw-inputs")
    rows = people(300)
    source = write_csv(root / "people.csv", rows)
    recipe = resolve("tabular-csv", {"data.source": str(source), "data.prepared": str(root / "data")},
                     ["data.target=label", "data.drop=[id]", "data.split.column=fold",
                      "data.binning.columns={income: 4}"])
    console.quiet(True)
    try:
        manifest = prepare(recipe)
    finally:
        console.quiet(False)
    return manifest, root / "data", rows, source


def test_rows_of_a_file_encode_exactly_as_prepare_data_encoded_them(prepared):
    manifest, folder, rows, source = prepared
    spec = InputSpec.from_manifest(manifest)
    types = {**spec.read_types(), "fold": None}
    parts = [(first, chunk) for first, chunk in RowSource(source).chunks(types, rows=64)]
    assert [first for first, _ in parts] == list(range(0, 300, 64))  # chunks in order, numbered
    test = np.concatenate([spec.table(chunk.filter(pa.compute.equal(chunk["fold"], "test")).drop_columns(["fold"]))
                           for _, chunk in parts])
    np.testing.assert_array_equal(test, np.load(folder / "test" / "x.npy"))
    json_rows = [{k: v for k, v in r.items() if k not in ("fold", "label", "id")} for r in rows if r["fold"] == "test"]
    np.testing.assert_array_equal(spec.rows(json_rows), test)  # JSON objects, as a server receives them
    np.testing.assert_array_equal(spec.one(json_rows[0]), test[:1])


def test_unseen_category_and_missing_values_are_handled_as_in_training(prepared):
    manifest = prepared[0]
    spec = InputSpec.from_manifest(manifest)
    features = manifest["features"]
    x = spec.rows([{"age": None, "income": 50.0, "city": "Tokyo", "member": True},
                   {"age": 30, "income": None, "city": None, "member": None}])
    city = [j for j, f in enumerate(features) if f.startswith("city=")]
    assert x[0, city].sum() == 0  # never seen in training: no one-hot indicator, not an error
    columns = {c["name"]: c for c in manifest["preprocessing"]["table"]["columns"]}
    assert x[0, features.index("age")] == np.float32(columns["age"]["fill"])  # the train median
    assert x[1, features.index(f"city={columns['city']['fill']}")] == 1.0  # the most frequent train city


def test_bad_values_name_the_row_or_are_reported(prepared):
    spec = InputSpec.from_manifest(prepared[0])
    table = pa.table({"age": ["41", "forty", "", "7"], "income": [1.0, 2.0, 3.0, 4.0], "city": ["Oslo"] * 4,
                      "member": [True] * 4})
    with pytest.raises(UsageError, match="row 102: column 'age' is 'forty', not a number"):
        spec.table(table, first_row=100)
    bad: dict[int, str] = {}
    x = spec.table(table, first_row=100, bad=bad)
    assert bad == {1: "column 'age' is 'forty', not a number"}
    assert not x[1].any() and x[0, prepared[0]["features"].index("age")] == 41.0 and x[3, 0] == 7.0
    columns = {"age": [41, "forty"], "income": [1.0, 2.0], "city": ["Oslo", 3], "member": [True, None]}
    with pytest.raises(UsageError, match="row 2: column 'age' is 'forty', not a number"):
        spec.table(columns)  # a column per tensor, as a server may get them: mixed JSON types are no crash


FEW_SPEC = {  # every kind of column: numeric (binned or not, imputed or drop), categorical one-hot and ordinal
    "columns": [
        {"name": "n", "type": "numeric", "impute": "median", "fill": 2.5, "bins": None},
        {"name": "b", "type": "numeric", "impute": "mean", "fill": 0.4, "bins": [0.0, 1.0, 10.0]},
        {"name": "d", "type": "numeric", "impute": "drop", "fill": None, "bins": None},
        {"name": "o", "type": "categorical", "impute": "most_frequent", "fill": "b", "encoding": "onehot",
         "categories": ["a", "b", "c"]},
        {"name": "r", "type": "categorical", "impute": "constant", "fill": "lo", "encoding": "ordinal",
         "categories": ["hi", "lo"]},
        {"name": "t", "type": "categorical", "impute": "most_frequent", "fill": "true", "encoding": "onehot",
         "categories": ["false", "true"]},
    ],
    "features": ["n", "b", "d", "o=a", "o=b", "o=c", "r", "t=false", "t=true"],
}


def test_a_few_json_rows_encode_without_arrow_exactly_as_through_it():
    """`preprocess.FewRows` (a request's rows, value by value) gives apply_table's features to the bit, and hands
    back to it (None) every value it does not read plainly, so faults are still named as before."""
    few = preprocess.FewRows(FEW_SPEC)
    columns = {"n": [1, 2.75, None, float("nan"), float("inf"), -3, 0.1],
               "b": [0.5, None, 10.0, 1.0, -2, 99.5, 1e300],
               "d": [1, 2, 3.5, 4, 5, 6, 7],
               "o": ["a", None, "c", "zz", "b", "A", ""],
               "r": ["hi", None, "lo", "??", "hi", "lo", "hi"],
               "t": [True, False, None, "true", "false", True, "yes"]}
    through_arrow = preprocess.apply_table(FEW_SPEC, pa.table({k: pa.array(v) if k != "t" else
                                                               pa.array([None if x is None else str(x).lower()
                                                                         for x in v]) for k, v in columns.items()}))
    x = few(columns, 7)
    np.testing.assert_array_equal(x, through_arrow)
    assert x.dtype == np.float32 and x[1, FEW_SPEC["features"].index("o=b")] == 1.0  # imputed with the fill
    arrays = {k: np.asarray(v) for k, v in columns.items() if k in ("n", "b", "d")}
    np.testing.assert_array_equal(few({**columns, **arrays}, 7), through_arrow)  # binary tensors arrive as arrays
    for column, value in [("n", "7"), ("n", True), ("o", 3), ("d", None), ("n", 2**60), ("t", 1.5)]:
        assert few({**columns, column: [value] * 7}, 7) is None, (column, value)  # left for Arrow to read and name
    assert few({k: v * 10 for k, v in columns.items()}, 70) is None  # many rows: Arrow is the faster
    spec = InputSpec("tabular", "classification", None, [9], {"tabular": FEW_SPEC})
    with pytest.raises(UsageError, match="row 2: column 'd' is missing and its imputation is 'drop'"):
        spec.rows([{k: v[0] for k, v in columns.items()}, {**{k: v[0] for k, v in columns.items()}, "d": None}])


def test_missing_column_names_the_nearest_and_json_keys_are_checked(prepared):
    spec = InputSpec.from_manifest(prepared[0])
    with pytest.raises(UsageError, match=r"column 'city' is missing from the input; did you mean 'City'\?"):
        spec.table(pa.table({"age": [1], "income": [2.0], "City": ["Oslo"], "member": [True]}))
    row = {"age": 41, "income": 50.0, "city": "Oslo", "member": True}
    with pytest.raises(UsageError, match="column 'member' is missing"):
        spec.one({k: v for k, v in row.items() if k != "member"})
    with pytest.raises(UsageError, match=r"row 1: unknown column 'incme'; did you mean 'income'\?"):
        spec.rows([{**row, "incme": 3}], extra="error")
    assert spec.rows([{**row, "incme": 3}]).shape == (1, len(prepared[0]["features"]))  # ignored by default
    with pytest.raises(UsageError, match="expected a JSON object"):
        spec.rows([[41, 50.0]])


def test_metadata_and_manifest_give_the_same_transform(prepared):
    from bigmodel_cli.export import metadata

    manifest = prepared[0]
    props = {"task": "classification", "input_kind": "tabular", "input_shape": json.dumps(manifest["input_shape"]),
             "class_names": json.dumps(manifest["classes"]),
             "table_preprocessing": json.dumps(manifest["preprocessing"]["table"])}
    from_onnx = InputSpec.from_metadata(metadata.parse(props))
    rows = [{"age": 20, "income": 70.5, "city": "Paris", "member": False}]
    np.testing.assert_array_equal(from_onnx.rows(rows), InputSpec.from_manifest(manifest).rows(rows))
    described = from_onnx.describe()
    assert described["features"] == manifest["features"] and described["classes"] == ["no", "yes"]
    assert {c["name"]: c["type"] for c in described["columns"]} == {"age": "numeric", "income": "numeric",
                                                                    "city": "categorical", "member": "categorical"}
    del props["table_preprocessing"]
    with pytest.raises(UsageError, match="no table_preprocessing"):
        InputSpec.from_metadata(metadata.parse(props), "old.onnx")


def image_spec(channels: int = 3, size: int = 8) -> InputSpec:
    return InputSpec("image", "classification", ["a", "b"], [channels, size, size],
                     {"image": {"channels": channels, "size": [size, size]}})


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "RGB"])
def test_image_bytes_of_any_mode_and_size_are_converted_as_in_training(mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 13, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65535, (20, 13), np.uint16))
    for channels in (1, 3):
        spec = image_spec(channels)
        x = spec.one(png(image))
        assert x.shape == (1, channels, 8, 8) and x.dtype == np.uint8
        np.testing.assert_array_equal(x[0], images.to_array(io.BytesIO(png(image)), (8, 8), channels))


def test_unreadable_image_bytes_are_a_clear_error():
    with pytest.raises(UsageError, match=r"image 1 \(BytesIO\): unreadable \(cannot identify image file\)"):
        image_spec().one(b"not a png")


def text_spec(max_length: int = 6) -> InputSpec:
    cfg = SimpleNamespace(tokenizer="word", vocab_size=50, lowercase=True, max_length=max_length)
    spec = preprocess.fit_text(["a fine film", "a dull film", "fine acting"], cfg)
    return InputSpec("text", "classification", ["neg", "pos"], [max_length], {"text": {**spec, "column": "review"}})


def test_texts_longer_than_max_length_are_truncated_as_in_training():
    spec = text_spec()
    long = " ".join(["fine"] * 3 + ["film"] * 40)
    x = spec.one(long)
    assert x.shape == (1, 6)
    np.testing.assert_array_equal(x, spec.texts(["fine fine fine film film film"]))  # its first 6 tokens
    np.testing.assert_array_equal(spec.one({"review": long}), x)  # a JSON row with the text column
    with pytest.raises(UsageError, match="column 'review' \\(the text\\) is missing"):
        spec.one({"text": long})


def test_raw_inputs_import_neither_torch_nor_onnxruntime():
    code = ("import sys, bigmodel_cli.data.raw_inputs; "
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- RowSource: chunks of a file, in order


def test_csv_junk_in_a_later_block_is_read_as_text_and_no_row_is_lost_or_repeated(tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("n,flag,id\n")
        for i in range(60000):
            f.write(f"{i},{'True' if i % 2 else 'false'},{i:06d}\n")
        f.write("oops,maybe,x\n")
    source = RowSource(path)
    assert source.names == ["n", "flag", "id"]
    chunks = list(source.chunks({"n": pa.float64(), "flag": pa.bool_(), "id": None}, rows=20000))
    table = pa.concat_tables([c.cast(chunks[-1][1].schema) for _, c in chunks])
    assert [first for first, _ in chunks] == [0, 20000, 40000, 60000][:len(chunks)]
    assert table.num_rows == 60001
    assert table["id"].to_pylist()[:2] == ["000000", "000001"]  # pass-through columns keep their text
    values, wrong = preprocess.parse_numbers(table["n"], "n")
    assert np.flatnonzero(wrong).tolist() == [60000] and values[59999] == 59999
    assert set(table["flag"].to_pylist()) == {"true", "false", "maybe"}  # Arrow's spellings, as training typed them


def test_jsonl_lines_of_mixed_types_or_broken_json_become_bad_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('\ufeff{"a": 1, "b": "x"}\n\n{"a": "two", "b": "y"}\nnot json\n{"b": "z", "c": 1}\n',
                    encoding="utf-8")  # with a byte-order mark
    source = RowSource(path)
    assert source.names == ["a", "b", "c"]
    (first, chunk), = list(source.chunks({"a": pa.float64(), "b": None}))
    assert first == 0 and chunk.num_rows == 4  # the blank line is no row
    assert chunk["a"].to_pylist() == ["1", "two", None, None]
    assert chunk[ROW_ERROR].to_pylist()[2].startswith("not valid JSON")


def test_parquet_and_text_lines(tmp_path):
    pq.write_table(pa.table({"a": list(range(10)), "b": ["x"] * 10}), tmp_path / "t.parquet", row_group_size=3)
    source = RowSource(tmp_path / "t.parquet")
    assert source.total == 10
    assert [(f, c.num_rows) for f, c in source.chunks({"a": None}, rows=4)] == [(0, 4), (4, 4), (8, 2)]
    (tmp_path / "t.txt").write_text("\ufefffirst line\r\n\nthird, with a comma\n", encoding="utf-8")
    assert list(text_lines(tmp_path / "t.txt", rows=2)) == [(0, ["first line", ""]), (2, ["third, with a comma"])]
