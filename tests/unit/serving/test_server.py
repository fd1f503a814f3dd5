"""The V2 inference server: in-process with Starlette's TestClient, and one real `bigmodel serve`.

The ONNX models are built here with onnx.helper (no torch, no training): a 4-feature, 3-class
classifier (MatMul + Add + Softmax) and a regressor on [2, 3] features (Flatten + MatMul + Add).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from starlette.exceptions import StarletteDeprecationWarning

from bigmodel_cli import __version__
from bigmodel_cli.errors import UsageError
from bigmodel_cli.serving.server import LoadedModel, create_app, resolve_model_path

with warnings.catch_warnings():  # "install httpx2": the TestClient still works with httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

CLS = "tiny-cls"
REG = "tiny-reg"


def _metadata(model: onnx.ModelProto, **props: object) -> None:
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)


def _save(graph: onnx.GraphProto, path: Path, **props: object) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10,
                              producer_name="test")
    _metadata(model, bigmodel_version=__version__, normalization={}, input_kind="tabular", exporter="test", **props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _classifier(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny_cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w, b],
    )
    return _save(graph, path, task="classification", class_names=["a", "b", "c"], input_shape=[4], recipe=CLS)


def _regressor(path: Path) -> Path:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(6, 1)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([0.5], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["prediction"]),
        ],
        "tiny_reg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b],
    )
    return _save(graph, path, task="regression", class_names=None, input_shape=[2, 3], recipe=REG)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cls": _classifier(root / "cls.onnx"), "reg": _regressor(root / "reg.onnx")}


def _local(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x.astype(np.float32)}), strict=True))


@pytest.fixture(scope="module")
def cls_model(models: dict[str, Path]) -> LoadedModel:
    return LoadedModel.load(models["cls"], device="cpu", max_batch_size=8)


@pytest.fixture(scope="module")
def client(cls_model: LoadedModel):
    with TestClient(create_app(cls_model, max_body_bytes=1 << 20)) as c:
        yield c


@pytest.fixture(scope="module")
def reg_client(models: dict[str, Path]):
    with TestClient(create_app(LoadedModel.load(models["reg"], device="cpu"))) as c:
        yield c


def _body(x: np.ndarray, *, nested: bool = False, **extra: object) -> dict:
    data = x.tolist() if nested else x.ravel().tolist()
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}], **extra}


X = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)


# ------------------------------------------------------------------------------------------ metadata


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{CLS}/ready").status_code == 200
    assert client.get(f"/v2/models/{CLS}/versions/1/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "bigmodel" and meta["version"] == __version__
    assert meta["extensions"] == ["model_configuration"]


def test_model_metadata_and_config(client: TestClient, reg_client: TestClient) -> None:
    for path in (f"/v2/models/{CLS}", f"/v2/models/{CLS}/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == CLS and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
        assert meta["parameters"]["task"] == "classification"
        assert meta["parameters"]["class_names"] == ["a", "b", "c"]
    config = client.get(f"/v2/models/{CLS}/config").json()
    assert config["name"] == CLS and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities"]
    assert client.get(f"/v2/models/{CLS}/versions/1/config").json() == config

    reg = reg_client.get(f"/v2/models/{REG}").json()
    assert reg["inputs"][0]["shape"] == [-1, 2, 3]
    assert reg["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]
    assert reg["parameters"]["task"] == "regression" and reg["parameters"]["class_names"] is None
    assert reg_client.get(f"/v2/models/{REG}/config").json()["input"][0]["dims"] == [2, 3]


def test_model_name_defaults_to_recipe_then_stem(models: dict[str, Path], tmp_path: Path) -> None:
    assert LoadedModel.load(models["cls"], device="cpu").name == CLS
    assert LoadedModel.load(models["cls"], name="other", device="cpu").name == "other"
    bare = onnx.load(models["cls"])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "plain-model.onnx")
    plain = LoadedModel.load(tmp_path / "plain-model.onnx", device="cpu")
    assert plain.name == "plain-model" and plain.task == "classification" and plain.class_names is None
    assert plain.ready


# ------------------------------------------------------------------------------------------ inference


@pytest.mark.parametrize("nested", [False, True])
def test_infer_matches_onnxruntime(client: TestClient, models: dict[str, Path], nested: bool) -> None:
    r = client.post(f"/v2/models/{CLS}/infer", json=_body(X, nested=nested))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == CLS and doc["model_version"] == "1" and "id" not in doc
    want = _local(models["cls"], X)
    assert [o["name"] for o in doc["outputs"]] == ["logits", "probabilities"]
    for out in doc["outputs"]:
        assert out["datatype"] == "FP32" and out["shape"] == [3, 3]
        assert np.allclose(np.array(out["data"], np.float32).reshape(3, 3), want[out["name"]], atol=1e-6)


def test_infer_output_selection_id_and_version_path(client: TestClient, models: dict[str, Path]) -> None:
    body = _body(X[:1], id="req-42", outputs=[{"name": "probabilities"}], parameters={"anything": 1})
    r = client.post(f"/v2/models/{CLS}/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-42"
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    assert np.allclose(doc["outputs"][0]["data"], _local(models["cls"], X[:1])["probabilities"].ravel(), atol=1e-6)


def test_infer_without_content_type_and_other_datatypes(client: TestClient, models: dict[str, Path]) -> None:
    raw = json.dumps(_body(X)).encode()
    r = client.post(f"/v2/models/{CLS}/infer", content=raw, headers={"content-type": ""})
    assert r.status_code == 200, r.text
    ints = np.array([[1, -2, 3, 0]], np.int64)
    for datatype in ("INT8", "INT16", "INT32", "INT64", "FP16", "FP64"):
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": datatype, "data": ints.ravel().tolist()}]}
        r = client.post(f"/v2/models/{CLS}/infer", json=body)
        assert r.status_code == 200, (datatype, r.text)
        assert np.allclose(r.json()["outputs"][0]["data"], _local(models["cls"], ints)["logits"].ravel(), atol=1e-5)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "UINT8", "data": [1, 2, 3, 255]}]}
    assert client.post(f"/v2/models/{CLS}/infer", json=body).status_code == 200


def test_regression_infer_nested(reg_client: TestClient, models: dict[str, Path]) -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 10
    r = reg_client.post(f"/v2/models/{REG}/infer", json=_body(x, nested=True))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "prediction" and out["shape"] == [2, 1]
    assert np.allclose(out["data"], _local(models["reg"], x)["prediction"].ravel(), atol=1e-5)
    bad = _body(x.reshape(2, 3, 2))  # right element count, wrong feature dims
    assert reg_client.post(f"/v2/models/{REG}/infer", json=bad).status_code == 400


# ------------------------------------------------------------------------------------------ errors


def _tensor(**override: object) -> dict:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
    tensor.update(override)
    return {"inputs": [tensor]}


INFER = f"/v2/models/{CLS}/infer"
BAD_REQUESTS = {
    "malformed json": (INFER, b'{"inputs": [', 400),
    "not utf-8": (INFER, b"\xff\xfe\xfa", 400),
    "json array": (INFER, b"[1, 2]", 400),
    "empty body": (INFER, b"", 400),
    "missing inputs": (INFER, {"outputs": []}, 400),
    "empty inputs": (INFER, {"inputs": []}, 400),
    "unknown input": (INFER, _tensor(name="x"), 400),
    "missing input name": (INFER, {"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, 400),
    "extra input": (INFER, {"inputs": [_tensor()["inputs"][0], _tensor(name="extra")["inputs"][0]]}, 400),
    "input twice": (INFER, {"inputs": [_tensor()["inputs"][0], _tensor()["inputs"][0]]}, 400),
    "bytes datatype": (INFER, _tensor(datatype="BYTES", data=["a", "b", "c", "d"]), 400),
    "bool datatype": (INFER, _tensor(datatype="BOOL", data=[True, False, True, False]), 400),
    "unknown datatype": (INFER, _tensor(datatype="FP8"), 400),
    "missing datatype": (INFER, {"inputs": [{"name": "input", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, 400),
    "feature dims": (INFER, _tensor(shape=[1, 5], data=[1, 2, 3, 4, 5]), 400),
    "rank": (INFER, _tensor(shape=[4]), 400),
    "shape not ints": (INFER, _tensor(shape=["1", 4]), 400),
    "negative shape": (INFER, _tensor(shape=[-1, 4]), 400),
    "zero batch": (INFER, _tensor(shape=[0, 4], data=[]), 400),
    "count mismatch": (INFER, _tensor(data=[1, 2, 3]), 400),
    "count mismatch nested": (INFER, _tensor(shape=[2, 4], data=[[1, 2, 3, 4]]), 400),
    "ragged": (INFER, _tensor(shape=[2, 4], data=[[1, 2, 3, 4], [1, 2, 3]]), 400),
    "strings in data": (INFER, _tensor(data=["1", "2", "3", "4"]), 400),
    "null in data": (INFER, _tensor(data=[1, None, 3, 4]), 400),
    "data not a list": (INFER, _tensor(data=5), 400),
    "no data": (INFER, {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]}, 400),
    "nan": (INFER, b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}', 400),
    "infinity": (INFER, b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,Infinity,2,3]}]}',
                 400),
    "fp32 overflow": (INFER, _tensor(datatype="FP64", data=[1e300, 0, 0, 0]), 400),
    "int out of range": (INFER, _tensor(datatype="INT8", data=[1000, 0, 0, 0]), 400),
    "floats for int": (INFER, _tensor(datatype="INT32", data=[1.5, 0, 0, 0]), 400),
    "unknown output": (INFER, {**_tensor(), "outputs": [{"name": "nope"}]}, 400),
    "outputs not a list": (INFER, {**_tensor(), "outputs": "logits"}, 400),
    "id not a string": (INFER, {**_tensor(), "id": 7}, 400),
    "batch over max": (INFER, _tensor(shape=[9, 4], data=[0.0] * 36), 400),
    "binary extension": (INFER, {"inputs": [{**_tensor()["inputs"][0], "parameters": {"binary_data_size": 16}}]},
                         400),
    "unknown model": ("/v2/models/nope/infer", _tensor(), 404),
    "unknown version": (f"/v2/models/{CLS}/versions/2/infer", _tensor(), 404),
    "unknown model metadata": ("/v2/models/nope", None, 404),
    "unknown model ready": ("/v2/models/nope/ready", None, 404),
    "unknown version config": (f"/v2/models/{CLS}/versions/7/config", None, 404),
    "unknown path": ("/v2/nothing/here", None, 404),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_json_errors(client: TestClient, case: str) -> None:
    path, body, status = BAD_REQUESTS[case]
    if body is None:
        r = client.get(path)
    elif isinstance(body, bytes):
        r = client.post(path, content=body)
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(INFER, json=_tensor()).status_code == 200


def test_binary_header_and_wrong_method(client: TestClient) -> None:
    r = client.post(INFER, json=_tensor(), headers={"Inference-Header-Content-Length": "10"})
    assert r.status_code == 400 and "binary" in r.json()["error"]
    r = client.get(INFER)
    assert r.status_code == 405 and r.json()["error"]


def test_non_finite_model_output_is_a_400(client: TestClient, models: dict[str, Path]) -> None:
    x = np.full((1, 4), 3e38, np.float32)
    with np.errstate(all="ignore"):
        assert not np.isfinite(_local(models["cls"], x)["probabilities"]).all()
    r = client.post(INFER, json=_body(x))
    assert r.status_code == 400 and "NaN" in r.json()["error"]


def test_body_limit_413(cls_model: LoadedModel) -> None:
    with TestClient(create_app(cls_model, max_body_bytes=200)) as small:
        assert small.post(INFER, json=_tensor()).status_code == 200
        big = _tensor(data=[0.123456789] * 4, id="x" * 300)
        r = small.post(INFER, json=big)
        assert r.status_code == 413 and r.json()["error"]

        def chunks():  # no Content-Length: the limit holds while streaming
            yield b'{"inputs": ['
            yield b" " * 300
            yield b"]}"

        r = small.post(INFER, content=chunks())
        assert r.status_code == 413
        assert small.get("/v2/health/ready").status_code == 200


def test_api_key(cls_model: LoadedModel) -> None:
    with TestClient(create_app(cls_model, api_key="s3cret")) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            for method, path in (("GET", "/v2"), ("GET", f"/v2/models/{CLS}"), ("GET", f"/v2/models/{CLS}/ready"),
                                 ("GET", f"/v2/models/{CLS}/config"), ("POST", INFER)):
                r = c.request(method, path, json=_tensor() if method == "POST" else None, headers=headers)
                assert r.status_code == 401, (headers, path)
                assert r.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/v2", headers=good).status_code == 200
        assert c.get(f"/v2/models/{CLS}", headers=good).status_code == 200
        assert c.post(INFER, json=_tensor(), headers=good).status_code == 200


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model not found"):
        resolve_model_path(tmp_path / "missing.onnx")
    with pytest.raises(UsageError, match="bigmodel export"):
        resolve_model_path(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    assert resolve_model_path(tmp_path) == tmp_path / "model.onnx"
    with pytest.raises(UsageError, match="cannot load"):
        LoadedModel.load(tmp_path / "model.onnx", device="cpu")


# ------------------------------------------------------------------------------------------ real server


def _cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "BIGMODEL_DEBUG"} | (env or {})
    return subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "serve", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_url(proc: subprocess.Popen, timeout: float = 60) -> str:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps draining stderr so the server never blocks on a full pipe
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match and match.group(1) != "0":
            return f"127.0.0.1:{match.group(1)}"
    proc.kill()
    raise AssertionError(f"no URL line from the server; stderr: {''.join(seen)}")


def test_real_server_with_tritonclient(models: dict[str, Path]) -> None:
    import tritonclient.http as httpclient

    proc = _cli(str(models["cls"]), "--port", "0", "--model-name", "tiny", "--device", "cpu",
                "--api-key-env", "TEST_SERVE_KEY", env={"TEST_SERVE_KEY": "k3y"})
    try:
        url = _wait_for_url(proc)
        auth = {"Authorization": "Bearer k3y"}
        client = httpclient.InferenceServerClient(url=url)
        deadline = time.monotonic() + 30
        while not client.is_server_live():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.is_server_ready()
        assert not client.is_model_ready("tiny")  # no key: 401
        assert client.is_model_ready("tiny", headers=auth)
        meta = client.get_model_metadata("tiny", headers=auth)
        assert meta["name"] == "tiny" and meta["inputs"][0]["shape"] == [-1, 4]

        x = X[:2]
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        result = client.infer("tiny", [tensor], outputs=[httpclient.InferRequestedOutput(
            "probabilities", binary_data=False)], headers=auth, request_id="r1")
        assert result.get_response()["id"] == "r1"
        assert np.allclose(result.as_numpy("probabilities"), _local(models["cls"], x)["probabilities"], atol=1e-6)
        client.close()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = _cli(*args, env=env)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("kind", ["missing file", "run dir without model", "not onnx", "port in use", "unset key"])
def test_cli_usage_errors_exit_2(kind: str, models: dict[str, Path], tmp_path: Path) -> None:
    listener = None
    if kind == "missing file":
        args = ["/nonexistent.onnx"]
    elif kind == "run dir without model":
        args = [str(tmp_path)]
    elif kind == "not onnx":
        (tmp_path / "broken.onnx").write_text("garbage")
        args = [str(tmp_path / "broken.onnx")]
    elif kind == "port in use":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        args = [str(models["cls"]), "--port", str(listener.getsockname()[1]), "--device", "cpu"]
    else:
        args = [str(models["cls"]), "--api-key-env", "TEST_SERVE_UNSET_KEY"]
    try:
        code, err = _run_cli(*args, env={"TEST_SERVE_UNSET_KEY": ""})
    finally:
        if listener is not None:
            listener.close()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
