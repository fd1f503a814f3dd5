"""`bigmodel export` and `bigmodel benchmark` as a user runs them: JSON out, and exit 2 for every bad request."""

import json
import shutil

import pytest

from tests.conftest import tree


@pytest.fixture
def run(digits_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(digits_run, dest)
    return dest


@pytest.mark.slow  # three commands: export int8, benchmark, benchmark A B (~45 s on 2 busy cores)
def test_export_int8_json_and_benchmark_gate(cli, run):
    result = cli("export", str(run), "--quantize", "int8", "--verify-samples", "64", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["quantize"] == "int8" and report["verification"]["samples"] == 64
    assert report["int8"]["metric"]["drop_points"] <= 1.0 and report["model"] == str(run / "model.int8.onnx")
    assert json.loads((run / "export.int8.json").read_text())["int8"] == report["int8"]
    assert not (run / "model.onnx").exists() and not (run / "export.json").exists()  # fp32's names stay free
    result = cli("benchmark", str(run), "--batch-sizes", "1", "--iterations", "3", "--fail-under", "accuracy=1.01")
    assert result.code == 3, result.stderr
    assert result.stdout == ""  # the table is human output: stderr
    assert "onnxruntime-fp32" in result.stderr and "benchmark gate failed" in result.stderr
    assert f"{run}: cnn_small (width 32" in result.stderr  # the model and width measured are named

    # the run against its int8 file, side by side: B (the file) is scored on A's validation rows
    result = cli("benchmark", str(run), str(run / "model.int8.onnx"), "--batch-sizes", "1,8", "--iterations", "3",
                 "--json")
    assert result.code == 0, result.stderr
    both = result.json()  # stdout holds the JSON document only
    (pair,) = both["comparison"]
    assert (pair["a"], pair["b"]) == ("onnxruntime-fp32", "onnxruntime-int8")
    accuracy_a, accuracy_b = pair["metric_a"]["accuracy"], pair["metric_b"]["accuracy"]
    assert accuracy_a > 0.8 and abs(accuracy_b - accuracy_a) <= 0.01
    assert pair["size_ratio_b_over_a"] < 0.5
    a, b = both["a"]["backends"]["onnxruntime-fp32"], both["b"]["backends"]["onnxruntime-int8"]
    for size in ("1", "8"):
        assert pair["latency_ratio_b_over_a"][size] == b["latency"][size]["p50_ms"] / a["latency"][size]["p50_ms"]
    assert both["b"]["onnx"] == str(run / "model.int8.onnx") and both["b"]["model"]["name"] == "cnn_small"
    assert "B/A" not in result.stderr  # --json: no table


@pytest.mark.parametrize("case", ["no checkpoint", "broken checkpoint", "missing out dir", "unknown quantize",
                                  "int8 without train data", "optimize a cnn"])
def test_bad_export_requests_exit_2_with_one_line_and_write_nothing(cli, run, tmp_path, case):
    args = [str(run)]
    if case == "no checkpoint":
        shutil.rmtree(run / "checkpoints")
    elif case == "broken checkpoint":
        (run / "checkpoints" / "best.pt").write_bytes(b"garbage")
    elif case == "missing out dir":
        args += ["--out", str(tmp_path / "nowhere" / "model.onnx")]
    elif case == "unknown quantize":
        args += ["--quantize", "int4"]
    elif case == "optimize a cnn":
        args += ["--optimize"]
    else:
        data = tmp_path / "data"
        shutil.copytree(_data_of(run), data)
        recipe = (run / "recipe.yaml").read_text()
        (run / "recipe.yaml").write_text(recipe.replace(str(_data_of(run)), str(data)))
        (data / "train" / "x.npy").unlink()
        (run / "reference" / "train_x.npy").unlink()  # nor the train rows the run carries
        args += ["--quantize", "int8"]
    before = tree(tmp_path)
    result = cli("export", *args)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"no checkpoint": "no best.pt", "broken checkpoint": "best.pt", "missing out dir": "does not exist",
                "unknown quantize": "--quantize int4", "int8 without train data": "train",
                "optimize a cnn": "--optimize / export.optimize"}[case]
    assert expected in lines[0]
    assert tree(tmp_path) == before  # nothing written, nothing left behind


def _data_of(run):
    import yaml

    return yaml.safe_load((run / "recipe.yaml").read_text())["data"]["prepared"]
