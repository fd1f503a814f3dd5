"""The whole path with the real command, for both walking-skeleton recipes:
prepare-data -> train -> eval (gated) -> export (verified) -> eval --onnx -> serve -> infer."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
import pytest

RECIPES = {
    # recipe: (overrides that keep the test short, headline gate)
    "digits-cnn": (["train.epochs=6"], "accuracy=0.9"),
    "breast-cancer-mlp": (["train.epochs=15"], "roc_auc=0.95"),
}


def start_server(model_path, cwd):
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "serve", str(model_path), "--port", "0"],
                            cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, f"http://127.0.0.1:{match.group(1)}"
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("server did not start")


def http(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
        return response.status, json.loads(response.read() or b"null")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_full_pipeline(cli, tmp_path, name):
    sets, gate = RECIPES[name]
    set_args = [a for s in sets for a in ("--set", s)]

    prepared = cli("prepare-data", "-r", name, "--json")
    assert prepared.code == 0, prepared.stderr
    manifest = prepared.json()["manifest"]
    assert (tmp_path / "data" / name / "manifest.json").is_file()

    trained = cli("train", "-r", name, *set_args, "--json")
    assert trained.code == 0, trained.stderr
    run = tmp_path / "runs" / name
    assert trained.json()["epochs_run"] >= 1
    for path in ("recipe.yaml", "metrics.jsonl", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / path).is_file()

    evaluated = cli("eval", str(run), "--fail-under", gate, "--json")
    assert evaluated.code == 0, evaluated.stderr
    report = evaluated.json()
    assert report["split"] == "test" and report["n"] == manifest["splits"]["test"]
    assert report["gates"][0]["passed"] and report["metrics"]["accuracy"] > 0.9
    assert len(report["confusion_matrix"]) == len(manifest["classes"])
    for suffix in (".json", "_predictions.csv", "_roc.png", "_pr.png", "_confusion.png"):
        assert (run / "eval" / f"test{suffix}").is_file()
    csv_header = (run / "eval/test_predictions.csv").read_text().splitlines()[0]
    assert csv_header == ",".join(["y_true", "y_pred", *[f"p_{c}" for c in manifest["classes"]]])

    failed_gate = cli("eval", str(run), "--fail-under", "accuracy=1.01")
    assert failed_gate.code == 3 and "accuracy" in failed_gate.stderr.strip().splitlines()[-1]

    exported = cli("export", str(run), "--json")
    assert exported.code == 0, exported.stderr
    check = exported.json()["verification"]
    assert check["passed"] and check["agreement"] >= 0.999
    model_path = run / "model.onnx"
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["task"] == "classification" and json.loads(meta["class_names"]) == manifest["classes"]
    assert json.loads(meta["input_shape"]) == manifest["input_shape"] and meta["recipe"] == name
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert json.loads((run / "export.json").read_text())["verification"]["passed"]

    # the exported model on raw test rows gives the same metrics as the checkpoint
    onnx_eval = cli("eval", str(run), "--onnx", str(model_path), "--json")
    assert onnx_eval.code == 0, onnx_eval.stderr
    assert onnx_eval.json()["metrics"]["accuracy"] == pytest.approx(report["metrics"]["accuracy"], abs=1e-9)

    x_test = np.load(tmp_path / "data" / name / "test/x.npy")[:5].astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"input": x_test})[0]
    proc, url = start_server(run, tmp_path)
    try:
        assert http(f"{url}/v2/health/ready")[0] == 200
        status, answer = http(f"{url}/v2/models/{name}/infer", {
            "id": "e2e", "inputs": [{"name": "input", "shape": list(x_test.shape), "datatype": "FP32",
                                     "data": x_test.ravel().tolist()}],
            "outputs": [{"name": "probabilities"}]})
        assert status == 200 and answer["id"] == "e2e"
        out = answer["outputs"][0]
        assert out["name"] == "probabilities" and out["shape"] == list(expected.shape)
        assert np.allclose(np.array(out["data"]).reshape(expected.shape), expected, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
