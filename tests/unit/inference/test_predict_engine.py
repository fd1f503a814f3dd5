"""The predict engine on tiny ONNX models built with onnx.helper (no torch, no training): output columns per task,
threshold and top-k, bad JSON lines, failures that leave no output, and where the preprocessing comes from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow as pa
import pytest
from onnx import TensorProto, helper, numpy_helper

from bigmodel_cli import console
from bigmodel_cli.errors import UsageError
from bigmodel_cli.inference import predict as engine
from bigmodel_cli.inference.outputs import Columns, OutputFile
from bigmodel_cli.inference.predict import Options, predict
from bigmodel_cli.inference.predictor import input_spec, open_model

TABLE = {"columns": [{"name": "x", "type": "numeric", "impute": "mean", "fill": 0.5, "bins": None},
                     {"name": "color", "type": "categorical", "impute": "most_frequent", "fill": "red",
                      "encoding": "onehot", "categories": ["green", "red"]}],
         "features": ["x", "color=green", "color=red"]}


def tiny_model(path: Path, task: str = "classification", metadata: bool = True) -> Path:
    """classification: logits [-5x, 5x + 2*green] over classes lo, hi; regression: prediction 2x + 1."""
    if task == "classification":
        w = np.array([[-5.0, 5.0], [0.0, 2.0], [0.0, 0.0]], np.float32)
        b, outputs = np.zeros(2, np.float32), ["logits", "probabilities"]
    else:
        w, b, outputs = np.array([[2.0], [0.0], [0.0]], np.float32), np.ones(1, np.float32), ["prediction"]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], [outputs[0]])]
    if task == "classification":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", w.shape[1]])
                               for o in outputs],
                              initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    props = {"task": task, "input_kind": "tabular", "input_shape": [3],
             "class_names": ["lo", "hi"] if task == "classification" else None}
    if metadata:
        props["table_preprocessing"] = TABLE
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, path)
    return path


def run(model: Path, **kw) -> dict:
    console.quiet(True)
    try:
        return predict(model, Options(**kw))
    finally:
        console.quiet(False)


def test_classification_columns_threshold_and_top_k(tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    (tmp_path / "in.csv").write_text("x,color,id\n1,red,a\n-1,green,b\n,,c\n0.1,blue,d\n")
    run(model, data=[tmp_path / "in.csv"], keep=["id"], out=tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["id", "prediction", "probability", "p_lo", "p_hi"]
    z = np.array([[-5, 5], [5, -3], [-2.5, 2.5], [-0.5, 0.5]])  # x missing: the fill 0.5; blue: no indicator
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out[["p_lo", "p_hi"]], p, rtol=1e-5)
    assert out["prediction"].tolist() == ["hi", "lo", "hi", "hi"]
    np.testing.assert_allclose(out["probability"], p.max(axis=1), rtol=1e-5)
    run(model, data=[tmp_path / "in.csv"], out=tmp_path / "t.csv", threshold=0.9)
    assert pd.read_csv(tmp_path / "t.csv")["prediction"].tolist() == ["hi", "lo", "hi", "lo"]  # P(hi) 0.73 < 0.9
    run(model, data=[tmp_path / "in.csv"], out=tmp_path / "k.parquet", top_k=1)
    k = pd.read_parquet(tmp_path / "k.parquet")
    assert list(k.columns) == ["prediction", "probability", "top_1", "p_top_1"]
    assert (k["top_1"] == k["prediction"]).all()


def test_regression_writes_the_prediction(tmp_path):
    model = tiny_model(tmp_path / "r.onnx", "regression")
    (tmp_path / "in.jsonl").write_text('{"x": 2, "color": "red"}\n{"x": null, "color": "green"}\n')
    summary = run(model, data=[tmp_path / "in.jsonl"], out=tmp_path / "out.jsonl")
    assert summary["task"] == "regression" and summary["columns"] == ["prediction"]
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == \
        [{"prediction": 5.0}, {"prediction": 2.0}]
    with pytest.raises(UsageError, match="--top-k: applies to classification; this model does regression"):
        run(model, data=[tmp_path / "in.jsonl"], top_k=2)


def test_bad_json_lines_are_named_or_written_empty(tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    (tmp_path / "in.jsonl").write_text('{"x": 1, "color": "red"}\n[1, 2]\n{"x": "high", "color": "red"}\n'
                                       '{"x": -1, "color": "red"}\n')
    with pytest.raises(UsageError, match=r"in.jsonl row 2: expected a JSON object, got list; fix it, or pass"):
        run(model, data=[tmp_path / "in.jsonl"], out=tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    summary = run(model, data=[tmp_path / "in.jsonl"], out=tmp_path / "out.csv", on_bad_row="null")
    assert summary["null"] == 2 and [e["row"] for e in summary["bad_examples"]] == [2, 3]
    assert pd.read_csv(tmp_path / "out.csv")["prediction"].tolist() == ["hi", np.nan, np.nan, "lo"]


def test_a_failure_while_reading_leaves_no_output_and_no_temporary_file(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "m.onnx")
    monkeypatch.setattr(engine, "TABLE_ROWS", 2)
    (tmp_path / "in.csv").write_text("x,color\n" + "1,red\n" * 5 + '"2,red\n')  # an unclosed quote at the end
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UsageError, match="in.csv"):
        run(model, data=[tmp_path / "in.csv"], out=tmp_path / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_inputs_that_cannot_be_predicted(tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    (tmp_path / "empty.csv").write_text("x,color\n")
    with pytest.raises(UsageError, match="no rows to predict"):
        run(model, data=[tmp_path / "empty.csv"], out=tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    (tmp_path / "in.csv").write_text("x,color\n1,red\n")
    with pytest.raises(UsageError, match="is the input file"):
        run(model, data=[tmp_path / "in.csv"], out=tmp_path / "in.csv")
    with pytest.raises(UsageError, match="a tabular model takes one CSV, Parquet or JSONL file, not a folder"):
        run(model, data=[tmp_path], out=tmp_path / "out.csv")
    with pytest.raises(UsageError, match="give a run directory .* or an exported .onnx file"):
        open_model(tmp_path / "in.csv")
    with pytest.raises(UsageError, match="missing_run: no such run directory or model file"):
        input_spec(tmp_path / "missing_run")
    with pytest.raises(UsageError, match="missing.onnx: file not found; create it with: bigmodel export RUN_DIR"):
        input_spec(tmp_path / "missing.onnx")


def test_an_older_table_export_takes_the_preprocessing_of_the_run_it_lies_in(tmp_path):
    old = tiny_model(tmp_path / "model.onnx", metadata=False)
    with pytest.raises(UsageError, match="no table_preprocessing"):
        input_spec(old)
    (tmp_path / "recipe.yaml").write_text("name: old\n")
    (tmp_path / "preprocessing.json").write_text(json.dumps(
        {"task": "classification", "kind": "tabular", "classes": ["lo", "hi"], "input_shape": [3],
         "features": TABLE["features"], "preprocessing": {"table": TABLE}}))
    spec, task = input_spec(old)
    assert task == "classification" and spec.rows([{"x": 3, "color": "green"}]).tolist() == [[3.0, 1.0, 0.0]]


def test_output_file_is_renamed_only_on_success_and_keeps_one_type_per_column(tmp_path):
    with OutputFile(tmp_path / "out.tsv") as out:
        out.write(pa.table({"id": pa.nulls(2, pa.null()), "v": [1.0, 2.0]}))
        out.write(pa.table({"id": ["a", "b"], "v": [3.0, 4.0]}))
        assert not (tmp_path / "out.tsv").exists()
    assert (tmp_path / "out.tsv").read_text().splitlines() == ['"id"\t"v"', "\t1", "\t2", '"a"\t3', '"b"\t4']
    with pytest.raises(RuntimeError), OutputFile(tmp_path / "fail.csv") as out:
        out.write(pa.table({"v": [1.0]}))
        raise RuntimeError("model crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]


def test_columns_of_a_chunk_skip_or_null_bad_rows():
    columns = Columns("classification", ["a", "b", "c"])
    logits = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3]], np.float32)
    bad = np.array([False, True, False])
    keep = pa.table({"id": [1, 2, 3]})
    nulled = columns.table(logits, keep, bad, "null")
    assert nulled["prediction"].to_pylist() == ["a", None, "c"] and nulled["p_b"].null_count == 1
    skipped = columns.table(logits, keep, bad, "skip")
    assert skipped["id"].to_pylist() == [1, 3] and skipped.column_names[:2] == ["id", "prediction"]
