"""`bigmodel predict` on the data people have: unlabeled CSV/Parquet/JSONL rows, image files of any mode and size,
text lines; the checkpoint and the exported model give the same answers, bad rows are named or counted, and a
failure leaves no output file.

Runs are trained in-process once per module (a few seconds each); most tests call the engine in-process, and
the command itself runs where its exit code and output streams are what is tested.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bigmodel_cli import console
from bigmodel_cli.errors import UsageError
from bigmodel_cli.inference import predict as engine
from bigmodel_cli.inference.predict import Options, predict
from tests.conftest import tree
from tests.unit.data.conftest import write_csv

CITIES = ["Oslo", "Bergen", "Paris", "Rome"]


def people(n: int, seed: int = 0) -> list[dict]:
    """Customers whose label follows age and city (learnable in a few epochs); some values missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = int(rng.integers(18, 90))
        city = CITIES[int(rng.integers(0, 4))]
        rows.append({"customer_id": f"c{i:05d}", "age": None if i % 9 == 4 else age,
                     "income": round(float(rng.normal(50, 15)), 2), "city": None if i % 13 == 6 else city,
                     "member": bool(rng.integers(0, 2)), "fold": ("train", "train", "train", "val", "test")[i % 5],
                     "churned": "yes" if age > 55 or city == "Rome" else "no"})
    return rows


def train_run(root: Path, recipe_name: str, overrides: dict, sets: list[str]) -> Path:
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.training.loop import fit

    recipe = resolve(recipe_name, {"data.prepared": str(root / "data"), **overrides},
                     ["train.early_stopping.patience=null", "eval.fail_under={}", *sets])
    console.quiet(True)
    try:
        prepare(recipe)
        fit(recipe, root / "run")
        export_run(root / "run", verify_model=False)
    finally:
        console.quiet(False)
    return root / "run"


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    """A churn table run (exported): numbers with missing values, a city, a boolean; split by its fold column."""
    root = tmp_path_factory.mktemp("predict-table")
    source = write_csv(root / "customers.csv", people(1000))
    return train_run(root, "tabular-csv", {"data.source": str(source)},
                     ["data.target=churned", "data.drop=[customer_id]", "data.split.column=fold", "data.dedupe=false",
                      "train.epochs=10", "train.batch_size=32", "train.optimizer.lr=0.01", "model.args={hidden: [16]}"])


@pytest.fixture(scope="module")
def digits_exported(digits_run, tmp_path_factory) -> Path:
    from bigmodel_cli.export.onnx_export import export_run

    run = tmp_path_factory.mktemp("predict-digits") / "digits"
    shutil.copytree(digits_run, run)
    console.quiet(True)
    try:
        export_run(run, verify_model=False)
    finally:
        console.quiet(False)
    return run


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict-text")
    with (root / "reviews.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "label"])
        for i in range(160):
            good = i % 2 == 0
            writer.writerow([f"{'great' if good else 'awful'} film number {i} {'plot ' * (i % 5)}".strip(),
                             "pos" if good else "neg"])
    return train_run(root, "text-transformer", {"data.source": str(root / "reviews.csv")},
                     ["data.text_column=review", "data.text.tokenizer=word", "data.text.max_length=8",
                      "train.epochs=3", "train.batch_size=32",
                      "model.args={d_model: 16, num_heads: 2, num_layers: 1, dim_feedforward: 32}"])


def quiet_predict(model: Path, **kw) -> dict:
    console.quiet(True)
    try:
        return predict(model, Options(**kw))
    finally:
        console.quiet(False)


# ---------------------------------------------------------------- tables


def test_raw_rows_are_encoded_as_in_training_and_checkpoint_equals_onnx(table_run, tmp_path):
    """The test rows of the raw file, predicted from the checkpoint, give what the network gives on the prepared
    test split (same preprocessing); the ONNX model from Parquet, and from JSON lines, gives the same answers."""
    from bigmodel_cli.inference.predictor import open_model
    from bigmodel_cli.run import load_run

    rows = [r for r in people(1000) if r["fold"] == "test"]
    unlabeled = [{k: v for k, v in r.items() if k not in ("churned", "fold")} for r in rows]
    write_csv(tmp_path / "new.csv", unlabeled)
    pq.write_table(pa.Table.from_pylist(unlabeled), tmp_path / "new.parquet")
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unlabeled))

    summary = quiet_predict(table_run, data=[tmp_path / "new.csv"], keep=["customer_id"], out=tmp_path / "a.csv")
    assert summary["rows"] == summary["predicted"] == len(rows) and summary["source"]["checkpoint"].endswith("best.pt")
    a = pd.read_csv(tmp_path / "a.csv")
    assert list(a.columns) == ["customer_id", "prediction", "probability", "p_no", "p_yes"]
    assert a["customer_id"].tolist() == [r["customer_id"] for r in rows]  # input order kept
    test_x = np.load(Path(load_run(table_run).recipe.prepared_dir) / "test" / "x.npy")
    from bigmodel_cli.inference.outputs import softmax

    expected = softmax(open_model(table_run).predict(test_x))
    np.testing.assert_allclose(a[["p_no", "p_yes"]].to_numpy(), expected, atol=1e-6)
    truth = np.array([r["churned"] for r in rows])
    majority = max((truth == "yes").mean(), (truth == "no").mean())
    assert (a["prediction"].to_numpy() == truth).mean() > majority + 0.05  # it learnt something

    quiet_predict(table_run / "model.onnx", data=[tmp_path / "new.parquet"], keep=["customer_id"],
                  out=tmp_path / "b.parquet")
    quiet_predict(table_run / "model.onnx", data=[tmp_path / "new.jsonl"], keep=["customer_id"],
                  out=tmp_path / "c.jsonl")
    for other in (pq.read_table(tmp_path / "b.parquet").to_pandas(), pd.read_json(tmp_path / "c.jsonl", lines=True)):
        assert other["customer_id"].tolist() == a["customer_id"].tolist()
        assert other["prediction"].tolist() == a["prediction"].tolist()
        np.testing.assert_allclose(other[["p_no", "p_yes"]].to_numpy(), a[["p_no", "p_yes"]].to_numpy(), atol=1e-5)


def test_unseen_category_target_column_and_default_output(table_run, tmp_path):
    rows = people(30, seed=5)
    rows[0]["city"] = "Tokyo"  # never seen in training: encoded as no city at all, not an error
    write_csv(tmp_path / "next month.csv", rows)  # target and fold present: ignored
    summary = quiet_predict(table_run / "model.onnx", data=[tmp_path / "next month.csv"], threshold=0.0)
    out = table_run / "predict" / "next month.csv"
    assert summary["out"] == str(out) and summary["rows"] == 30
    assert set(pd.read_csv(out)["prediction"]) == {"yes"}  # threshold 0: every row is the positive class
    out.unlink()


def test_devices_split_rows_over_processes_into_one_ordered_output(table_run, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "TABLE_ROWS", 100)  # several chunks in flight over the two workers
    write_csv(tmp_path / "new.csv", people(1000, seed=3))
    one = quiet_predict(table_run / "model.onnx", data=[tmp_path / "new.csv"], keep=["customer_id"],
                        out=tmp_path / "one.csv")
    two = quiet_predict(table_run / "model.onnx", data=[tmp_path / "new.csv"], keep=["customer_id"],
                        out=tmp_path / "two.csv", devices=2)
    assert two["devices"] == 2 and two["rows"] == one["rows"] == 1000
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()


def test_bad_rows_skip_or_null_are_counted(table_run, tmp_path):
    rows = people(20, seed=7)
    rows[2]["age"] = "forty"
    rows[11]["income"] = "n/a?"
    write_csv(tmp_path / "bad.csv", rows)
    skipped = quiet_predict(table_run / "model.onnx", data=[tmp_path / "bad.csv"], keep=["customer_id"],
                            out=tmp_path / "skip.csv", on_bad_row="skip")
    assert (skipped["bad_rows"], skipped["skipped"], skipped["written"]) == (2, 2, 18)
    assert skipped["bad_examples"] == [{"row": 3, "error": "column 'age' is 'forty', not a number"},
                                       {"row": 12, "error": "column 'income' is 'n/a?', not a number"}]
    kept = pd.read_csv(tmp_path / "skip.csv")["customer_id"].tolist()
    assert kept == [r["customer_id"] for i, r in enumerate(rows) if i not in (2, 11)]
    nulled = quiet_predict(table_run / "model.onnx", data=[tmp_path / "bad.csv"], out=tmp_path / "null.csv",
                           on_bad_row="null")
    out = pd.read_csv(tmp_path / "null.csv")
    assert nulled["null"] == 2 and len(out) == 20
    assert out["prediction"].isna().tolist() == [i in (2, 11) for i in range(20)]


def test_a_bad_row_late_in_the_file_leaves_no_output(table_run, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "TABLE_ROWS", 10)  # the bad row is in the fifth chunk: four are written before
    rows = people(50, seed=8)
    rows[44]["age"] = "??"
    write_csv(tmp_path / "bad.csv", rows)
    before = tree(tmp_path)
    with pytest.raises(UsageError, match=r"bad.csv row 45: column 'age' is '\?\?', not a number; fix it, or pass "
                                         r"--on-bad-row skip"):
        quiet_predict(table_run / "model.onnx", data=[tmp_path / "bad.csv"], out=tmp_path / "preds.csv")
    assert tree(tmp_path) == before


def test_cli_exit_2_one_line_naming_the_missing_column_and_json_summary(cli, table_run, tmp_path):
    rows = [{("Age" if k == "age" else k): v for k, v in r.items()} for r in people(10)]
    write_csv(tmp_path / "renamed.csv", rows)
    result = cli("predict", str(table_run / "model.onnx"), "--data", str(tmp_path / "renamed.csv"), "--out",
                 str(tmp_path / "p.csv"))
    assert result.code == 2 and not (tmp_path / "p.csv").exists()
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'renamed.csv'}: column 'age' is missing from the input; did you mean 'Age'? "
        f"(expected: age, income, city, member)"]
    write_csv(tmp_path / "ok.csv", people(10))
    result = cli("predict", str(table_run / "model.onnx"), "--data", str(tmp_path / "ok.csv"), "--out",
                 str(tmp_path / "p.jsonl"), "--keep", "customer_id", "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["rows"] == 10 and summary["format"] == "jsonl" and summary["rows_per_s"] > 0
    assert [json.loads(line)["customer_id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == \
        [f"c{i:05d}" for i in range(10)]


@pytest.mark.parametrize("args, message", [
    (["--top-k", "3"], "--top-k 3: must be between 1 and the number of classes (2)"),
    (["--threshold", "1.5"], "--threshold 1.5: must be between 0 and 1"),
    (["--keep", "custmer_id"], "new.csv has no such column; did you mean 'customer_id'?"),
    (["--keep", "prediction"], "--keep prediction: the output has a column of that name"),
    (["--on-bad-row", "ignore"], "--on-bad-row ignore: expected one of error, skip, null"),
    (["--out", "preds.xlsx"], "unknown format '.xlsx'"),
])
def test_bad_options_are_refused_before_any_work(table_run, tmp_path, args, message):
    from typer.testing import CliRunner

    from bigmodel_cli.cli.app import app

    write_csv(tmp_path / "new.csv", people(5))
    result = CliRunner().invoke(app, ["predict", str(table_run / "model.onnx"), "--data", str(tmp_path / "new.csv"),
                                      *args], standalone_mode=False)
    assert isinstance(result.exception, UsageError) and message in str(result.exception)


# ---------------------------------------------------------------- images


def digit_files(folder: Path) -> tuple[list[Path], list[int]]:
    """sklearn's digits as PNG files, as a user has them: grey, RGB, RGBA, palette, and larger than 8x8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    files, labels = [], []
    for i in range(0, 400, 4):
        pixels = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        image = Image.fromarray(pixels)
        mode = i // 4 % 4
        if mode == 1:
            image = image.convert("RGB")
        elif mode == 2:
            image = image.convert("RGBA")
        elif mode == 3:
            image = image.convert("P")
        path = folder / f"{i:04d}.png"
        image.save(path)
        files.append(path)
        labels.append(int(digits.target[i]))
    return files, labels


def test_images_of_any_mode_from_checkpoint_and_onnx(digits_exported, tmp_path):
    files, labels = digit_files(tmp_path / "digits")
    (tmp_path / "digits" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UsageError, match=r"broken.png \(image 101\): unreadable image"):
        quiet_predict(digits_exported, data=[tmp_path / "digits"], out=tmp_path / "x.csv")
    summary = quiet_predict(digits_exported, data=[tmp_path / "digits"], out=tmp_path / "a.csv", on_bad_row="skip",
                            top_k=3)
    assert summary["skipped"] == 1 and summary["bad_examples"][0]["path"].endswith("broken.png")
    a = pd.read_csv(tmp_path / "a.csv")
    assert list(a.columns) == ["path", "prediction", "probability", "top_1", "p_top_1", "top_2", "p_top_2", "top_3",
                               "p_top_3"]
    assert a["path"].tolist() == [str(f) for f in files]
    assert (a["prediction"].to_numpy() == np.array(labels)).mean() > 0.8  # grey, RGB, RGBA, palette alike
    assert (a["top_1"] == a["prediction"]).all() and (a["p_top_1"] >= a["p_top_2"]).all()
    quiet_predict(digits_exported / "model.onnx", data=files[:50], out=tmp_path / "b.csv", top_k=3, devices=2)
    b = pd.read_csv(tmp_path / "b.csv")
    assert b["prediction"].tolist() == a["prediction"].tolist()[:50]
    np.testing.assert_allclose(b["p_top_1"], a["p_top_1"][:50], atol=1e-5)


# ---------------------------------------------------------------- texts


def test_text_lines_and_tables_and_truncation_as_in_training(text_run, tmp_path):
    texts = ["great film number 7", "awful film number 8 plot plot", "a great great film " + "plot " * 40]
    (tmp_path / "reviews.txt").write_text("\n".join(texts) + "\n")
    write_csv(tmp_path / "reviews.csv", [{"id": i, "review": t} for i, t in enumerate(texts)])
    quiet_predict(text_run / "model.onnx", data=[tmp_path / "reviews.txt"], out=tmp_path / "a.csv", keep=["text"])
    quiet_predict(text_run, data=[tmp_path / "reviews.csv"], out=tmp_path / "b.csv", keep=["id"])
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert a["text"].tolist() == texts and b["id"].tolist() == [0, 1, 2]
    assert a["prediction"].tolist() == b["prediction"].tolist()
    np.testing.assert_allclose(a[["p_neg", "p_pos"]], b[["p_neg", "p_pos"]], atol=1e-5)
    first_words = " ".join(texts[2].split()[:8])  # max_length 8 word tokens: the rest is cut, as in training
    (tmp_path / "cut.txt").write_text(first_words + "\n")
    quiet_predict(text_run / "model.onnx", data=[tmp_path / "cut.txt"], out=tmp_path / "c.csv")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "c.csv")[["p_neg", "p_pos"]].to_numpy()[0],
                               a[["p_neg", "p_pos"]].to_numpy()[2], atol=1e-6)


# ---------------------------------------------------------------- a file larger than the memory allowed

CAP = 416 * 2**20  # private memory (prlimit --data) allowed; the file below is 441 MiB


def write_wide(path: Path, blocks: int = 450) -> int:
    """Customers with a 1,000-character note each (passed through to the output): 1,000 rows written `blocks`
    times. The rows' number is returned."""
    rows = people(1000, seed=9)
    lines = [",".join(["customer_id", "age", "income", "city", "member", "notes"]) + "\n"]
    block = "".join(f"{r['customer_id']},{'' if r['age'] is None else r['age']},{r['income']},{r['city'] or ''},"
                    f"{r['member']},{'n' * 1000}\n" for r in rows)
    with path.open("w") as f:
        f.write(lines[0])
        for _ in range(blocks):
            f.write(block)
    return blocks * len(rows)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_a_file_larger_than_the_memory_allowed_is_predicted_in_bounded_memory(table_run, tmp_path):
    import os
    import subprocess
    import sys

    n = write_wide(tmp_path / "big.csv")
    assert (tmp_path / "big.csv").stat().st_size > CAP
    env = {**os.environ, "CI": "1"}
    proc = subprocess.run(["prlimit", f"--data={CAP}", sys.executable, "-m", "bigmodel_cli", "predict",
                           str(table_run / "model.onnx"), "--data", str(tmp_path / "big.csv"), "--keep",
                           "customer_id,notes", "--out", str(tmp_path / "preds.csv"), "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["rows"] == n
    assert (tmp_path / "preds.csv").stat().st_size > CAP
    with (tmp_path / "preds.csv").open() as f:
        assert f.readline().startswith('"customer_id","notes","prediction","probability","p_no","p_yes"')
    # the control: the same cap stops a process that reads the file whole
    control = subprocess.run(["prlimit", f"--data={CAP}", sys.executable, "-c",
                              f"import pyarrow.csv as c; print(c.read_csv({str(tmp_path / 'big.csv')!r}).num_rows)"],
                             capture_output=True, text=True, timeout=300, env=env)
    # (Python's MemoryError, or Arrow's C++ allocator aborting: which one depends on where the cap is hit)
    assert control.returncode != 0 and ("MemoryError" in control.stderr or "Out of memory" in control.stderr), \
        control.stderr[-500:]
