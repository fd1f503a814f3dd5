"""`bigmodel export` and `bigmodel benchmark` as a user runs them: JSON out, and exit 2 for every bad request."""

import shutil

import pytest

from tests.conftest import tree


@pytest.fixture
def run(digits_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(digits_run, dest)
    return dest


def test_export_int8_json_and_benchmark_gate(cli, run):
    result = cli("export", str(run), "--quantize", "int8", "--verify-samples", "64", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["quantize"] == "int8" and report["verification"]["samples"] == 64
    assert report["int8"]["metric"]["drop_points"] <= 1.0 and (run / "model.onnx").is_file()
    result = cli("benchmark", str(run), "--batch-sizes", "1", "--iterations", "3", "--fail-under", "accuracy=1.01")
    assert result.code == 3, result.stderr
    assert "onnxruntime-fp32" in result.stdout and "benchmark gate failed" in result.stderr


@pytest.mark.parametrize("case", ["no checkpoint", "broken checkpoint", "missing out dir", "unknown quantize",
                                  "int8 without train data"])
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
    else:
        data = tmp_path / "data"
        shutil.copytree(_data_of(run), data)
        recipe = (run / "recipe.yaml").read_text()
        (run / "recipe.yaml").write_text(recipe.replace(str(_data_of(run)), str(data)))
        (data / "train" / "x.npy").unlink()
        args += ["--quantize", "int8"]
    before = tree(tmp_path)
    result = cli("export", *args)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"no checkpoint": "no best.pt", "broken checkpoint": "best.pt", "missing out dir": "does not exist",
                "unknown quantize": "--quantize int4", "int8 without train data": "train"}[case]
    assert expected in lines[0]
    assert tree(tmp_path) == before  # nothing written, nothing left behind


def _data_of(run):
    import yaml

    return yaml.safe_load((run / "recipe.yaml").read_text())["data"]["prepared"]
