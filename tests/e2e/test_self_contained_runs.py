"""A run carries its own meaning: data prepared again (other scaling, seed or vocabulary) is refused by name, and a
run moved to another folder exports, evaluates raw rows and serves from any working directory."""

import json
import shutil
import urllib.request

import numpy as np
import pytest

from tests.cli.test_serve import Server
from tests.conftest import run_in_process as run_cli  # the real entry point, in this process
from tests.conftest import tree

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """breast-cancer-mlp prepared and trained for 5 epochs in its own folder (the user's project)."""
    work = tmp_path_factory.mktemp("project")
    assert run_cli("prepare-data", "-r", "breast-cancer-mlp", cwd=work).code == 0
    assert run_cli("train", "-r", "breast-cancer-mlp", "--set", "train.epochs=5", cwd=work).code == 0
    return work


@pytest.mark.parametrize("change", ["data.scaling=minmax", "seed=1"])
def test_eval_refuses_data_prepared_again_naming_both_fingerprints(trained, tmp_path, change):
    work = tmp_path / "project"
    shutil.copytree(trained, work)
    recipe = work / "runs/breast-cancer-mlp/recipe.yaml"  # the copy's run trained on the copy's data
    recipe.write_text(recipe.read_text().replace(str(trained / "data"), str(work / "data")))
    before = run_cli("eval", "runs/breast-cancer-mlp", "--json", cwd=work)
    assert before.code == 0 and before.json()["metrics"]["accuracy"] > 0.9
    run_fp = json.loads((work / "runs/breast-cancer-mlp/preprocessing.json").read_text())["fingerprint"]
    assert run_cli("prepare-data", "-r", "breast-cancer-mlp", "--force", "--set", change, cwd=work).code == 0
    new_fp = json.loads((work / "data/breast-cancer-mlp/manifest.json").read_text())["fingerprint"]
    assert new_fp != run_fp
    evaluated = tree(work / "runs/breast-cancer-mlp/eval")
    after = run_cli("eval", "runs/breast-cancer-mlp", cwd=work)
    assert after.code == 2, after.stderr
    assert run_fp[:12] in after.stderr and new_fp[:12] in after.stderr
    assert "--data" in after.stderr and "train again" in after.stderr
    assert tree(work / "runs/breast-cancer-mlp/eval") == evaluated  # nothing written over the first report
    # export is unaffected: the run verifies on the rows it carries, with its own preprocessing
    exported = run_cli("export", "runs/breast-cancer-mlp", "--json", cwd=work)
    assert exported.code == 0 and exported.json()["verification"]["passed"], exported.stderr


def test_text_data_prepared_with_another_vocabulary_is_refused(tmp_path):
    from tests.e2e.test_recipe_text import write_reviews

    write_reviews(tmp_path / "reviews.csv", 240)
    common = ["--source", str(tmp_path / "reviews.csv"), "--set", "data.target=label"]
    assert run_cli("prepare-data", "-r", "text-transformer", *common, "--set", "data.text.vocab_size=200",
                   cwd=tmp_path).code == 0
    trained = run_cli("train", "-r", "text-transformer", "--set", "train.epochs=1", "--set",
                      "model.args={d_model: 16, num_heads: 2, num_layers: 1, dim_feedforward: 32}", "--set",
                      "eval.fail_under={}", cwd=tmp_path)
    assert trained.code == 0, trained.stderr
    assert run_cli("eval", "runs/text-transformer", cwd=tmp_path).code == 0
    assert run_cli("prepare-data", "-r", "text-transformer", *common, "--set", "data.text.vocab_size=100",
                   "--force", cwd=tmp_path).code == 0
    refused = run_cli("eval", "runs/text-transformer", cwd=tmp_path)
    assert refused.code == 2 and "fingerprint" in refused.stderr


def test_a_moved_run_exports_evaluates_raw_rows_and_serves_from_anywhere(trained, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained, project)
    moved = tmp_path / "elsewhere" / "my-run"
    shutil.move(project / "runs/breast-cancer-mlp", moved)
    shutil.rmtree(project)  # the prepared data and the folder it was trained in are gone
    somewhere = tmp_path / "somewhere"
    somewhere.mkdir()
    exported = run_cli("export", str(moved), "--json", cwd=somewhere)
    assert exported.code == 0 and exported.json()["verification"]["passed"], exported.stderr
    assert (moved / "model.onnx").is_file()

    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    frame.to_csv(somewhere / "rows.csv", index=False)
    scored = run_cli("eval", str(moved), "--data", "rows.csv", "--json", cwd=somewhere)
    assert scored.code == 0, scored.stderr
    assert scored.json()["metrics"]["accuracy"] > 0.9

    server = Server(str(moved), "--port", "0")
    try:
        x = np.asarray(np.load(moved / "reference/val_x.npy")[:2], dtype=np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()
        request = urllib.request.Request(f"http://{server.url}/v2/models/breast-cancer-mlp/infer", data=body,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
        assert outputs["probabilities"]["shape"] == [2, 2]
    finally:
        assert server.stop() == 0
