"""`bigmodel eval` as CI runs it: JSON on stdout, tables on stderr, exit 3 on a gate, 2 on bad input."""

import json
import shutil

import pytest
import yaml

from bigmodel_cli.cli.eval import runs_and_models
from bigmodel_cli.errors import UsageError
from tests.conftest import tree


@pytest.fixture(scope="module")
def exported_digits(digits_run, tmp_path_factory):
    """A copy of the session's digits run with its model.onnx (exported in-process)."""
    from bigmodel_cli import console
    from bigmodel_cli.export.onnx_export import export_run

    run = tmp_path_factory.mktemp("cli-eval") / "digits"
    shutil.copytree(digits_run, run)
    console.quiet(True)
    try:
        export_run(run)
    finally:
        console.quiet(False)
    return run


@pytest.fixture
def run(exported_digits, tmp_path):
    dest = tmp_path / "runs" / "digits"
    shutil.copytree(exported_digits, dest)
    return dest


def test_onnx_alone_json_only_on_stdout(cli, run):
    """`--onnx` alone evaluates RUN_DIR/model.onnx; with --json, stdout holds the JSON document only."""
    result = cli("eval", str(run), "--onnx", "--json", "--no-plots", "--fail-under", "accuracy=0.5", "--ci", "0.9")
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["model"] == str(run / "model.onnx")
    assert report["onnx"]["agreement"] >= 0.999 and report["onnx"]["max_abs_difference"] < 1e-4
    assert report["metrics"]["accuracy"] > 0.8 and report["metrics"]["top_5_accuracy"] > 0.95  # chance: 0.1, 0.5
    assert report["gates"] == [{"metric": "accuracy", "kind": "fail_under", "limit": 0.5,
                                "value": report["metrics"]["accuracy"], "passed": True}]
    low, high = report["ci"]["intervals"]["f1"]
    assert low <= report["metrics"]["f1"] <= high
    assert "accuracy" not in result.stderr  # no human table with --json
    assert json.loads((run / "eval/test.onnx.json").read_text())["metrics"] == report["metrics"]
    assert not (run / "eval/test.json").exists()  # the checkpoint's own evaluation is not overwritten


def test_failed_gates_exit_3_naming_gate_and_value(cli, run):
    result = cli("eval", str(run), "--fail-under", "accuracy=1.01", "--fail-over", "log_loss=0.00001",
                 "--fail-under", "f1=0.1")
    assert result.code == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gate failed: accuracy = 0.") and "is below 1.01" in last
    assert "gate failed: log_loss = " in last and "is above 1e-05" in last and "f1 =" not in last
    # the human report came first, on stderr: headline, per class, confusion matrix, gates
    for text in ("balanced_accuracy", "top_3_accuracy", "confusion matrix", "gate f1 >= 0.1: pass"):
        assert text in result.stderr
    # CI logs: the 10-class matrix would need more than 100 columns, so it is summarised, not wrapped
    assert "confusion matrix: 10 classes need" in result.stderr and "largest confusions" in result.stderr
    assert "true \\ predicted" not in result.stderr
    for suffix in (".json", "_predictions.csv", "_roc.png", "_pr.png", "_confusion.png", "_calibration.png"):
        assert (run / "eval" / f"test{suffix}").is_file()


def test_unknown_gate_metric_is_exit_2_with_the_nearest_name(cli, run):
    before = tree(run)
    result = cli("eval", str(run), "--fail-under", "acuracy=0.9")
    assert result.code == 2
    assert result.stderr.strip() == "error: --fail-under acuracy: unknown metric; did you mean 'accuracy'?"
    assert tree(run) == before


def test_several_runs_side_by_side(cli, run, tmp_path):
    other = tmp_path / "runs" / "digits-last"
    shutil.copytree(run, other)
    result = cli("eval", str(run), str(other), "--checkpoint", "last", "--no-plots", "--fail-under",
                 "accuracy=0.99")
    assert result.code == 3  # a 3-epoch digits run is not that good: both runs fail, each named
    last = result.stderr.strip().splitlines()[-1]
    assert f"{run}: gate failed: accuracy" in last and f"{other}: gate failed: accuracy" in last
    assert "side by side" in result.stderr and str(other) in result.stderr
    for folder in (run, other):
        assert json.loads((folder / "eval/test.last.json").read_text())["checkpoint"].endswith("last.pt")
        assert not (folder / "eval/test.json").exists()  # reserved for the best checkpoint


def test_data_with_another_schema_is_exit_2_naming_it(cli, run, tmp_path):
    data = tmp_path / "other-data"
    shutil.copytree(yaml.safe_load((run / "recipe.yaml").read_text())["data"]["prepared"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["classes"][3] = "three"
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = cli("eval", str(run), "--data", str(data))
    assert result.code == 2
    assert result.stderr.strip().startswith(f"error: --data {data}: class 'three' of column ")
    assert not (run / "eval").exists()


def test_onnx_paths_pair_with_the_run_before_them(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert runs_and_models([a, b], onnx=False) == [(a, None), (b, None)]
    assert runs_and_models([a, b], onnx=True) == [(a, a / "model.onnx"), (b, b / "model.onnx")]
    assert runs_and_models([a, tmp_path / "x.onnx", b], onnx=True) == [(a, tmp_path / "x.onnx"), (b, b / "model.onnx")]
    with pytest.raises(UsageError, match="x.onnx: an ONNX model, not a run directory; .* --onnx"):
        runs_and_models([a, tmp_path / "x.onnx"], onnx=False)
    with pytest.raises(UsageError, match="give its run directory first"):
        runs_and_models([tmp_path / "x.onnx", a], onnx=True)
    with pytest.raises(UsageError, match="give its run directory first"):
        runs_and_models([a, tmp_path / "x.onnx", tmp_path / "y.onnx"], onnx=True)
