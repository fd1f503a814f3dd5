"""The V2 inference app in-process (Starlette's TestClient): routes, JSON and binary tensors, the label
output, errors (the malformed-request suite), server bugs as logged 500s, metrics, access log, API key, the
limits (bounded JSON decoding, in-flight bytes, body timeouts, stalled uploads and batching, shutdown), and a
hypothesis fuzz of infer (JSON and binary tensors) that fails on any 5xx.
The real `bigmodel serve` process (tritonclient, batching, SIGTERM, the connection guards) is tested in
tests/cli/test_serve.py.

Models: tests/unit/serving/tiny_models.py (onnx.helper, no torch, no training).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from bigmodel_cli import __version__
from bigmodel_cli.errors import UsageError
from bigmodel_cli.serving.app import create_app
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.protocol import ModelSignature, RequestError, TensorSpec, decode_infer_request
from bigmodel_cli.serving.server import ServeOptions, resolve_model_path
from tests.unit.serving.tiny_models import CLS, REG, classifier, regressor

with warnings.catch_warnings():  # "install httpx2": the TestClient still works with httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cls": classifier(root / "cls.onnx"), "reg": regressor(root / "reg.onnx")}


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
    assert meta["extensions"] == ["binary_tensor_data", "model_configuration", "statistics"]


def test_model_metadata_and_config(client: TestClient, reg_client: TestClient) -> None:
    for path in (f"/v2/models/{CLS}", f"/v2/models/{CLS}/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == CLS and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                                   {"name": "label", "datatype": "BYTES", "shape": [-1]}]
        assert meta["parameters"]["task"] == "classification"
        assert meta["parameters"]["class_names"] == ["a", "b", "c"]
    config = client.get(f"/v2/models/{CLS}/config").json()
    assert config["name"] == CLS and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities", "label"]
    assert config["output"][2] == {"name": "label", "data_type": "TYPE_STRING", "dims": []}
    assert config["dynamic_batching"] == {}
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
    "binary size without binary data": (INFER, {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                          "parameters": {"binary_data_size": 16}}]}, 400),
    "data and binary size": (INFER, {"inputs": [{**_tensor()["inputs"][0], "parameters": {"binary_data_size": 16}}]},
                             400),
    "parameters not an object": (INFER, {**_tensor(), "parameters": [1]}, 400),
    "binary_data_output not a bool": (INFER, {**_tensor(), "parameters": {"binary_data_output": "yes"}}, 400),
    "classification extension": (INFER, {**_tensor(), "outputs": [{"name": "probabilities",
                                                                    "parameters": {"classification": 2}}]}, 400),
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


def test_wrong_method(client: TestClient) -> None:
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


# ------------------------------------------------------------------------------------------ binary tensors


def _binary(x: np.ndarray, datatype: str = "FP32", *, outputs: list | None = None, binary_output: bool = True,
            size: int | None = None, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    """A request as tritonclient sends it: JSON header, then the raw little-endian tensor bytes."""
    doc: dict = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                             "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}
    if outputs is not None:
        doc["outputs"] = outputs
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    header = json.dumps(doc).encode()
    return header + x.tobytes() + extra, {"Inference-Header-Content-Length": str(len(header))}


def _binary_outputs(r) -> dict[str, np.ndarray]:
    """Decode a binary response by the extension's rules (independently of the server's code)."""
    size = int(r.headers["Inference-Header-Content-Length"])
    doc, blob = json.loads(r.content[:size]), r.content[size:]
    out, offset = {}, 0
    for tensor in doc["outputs"]:
        if "data" in tensor:  # an output the request did not ask for in binary
            out[tensor["name"]] = np.array(tensor["data"], dtype=object if tensor["datatype"] == "BYTES"
                                           else np.float32).reshape(tensor["shape"])
            continue
        n = tensor["parameters"]["binary_data_size"]
        raw = blob[offset:offset + n]
        offset += n
        if tensor["datatype"] == "BYTES":
            items, i = [], 0
            while i < len(raw):
                length = int.from_bytes(raw[i:i + 4], "little")
                items.append(raw[i + 4:i + 4 + length].decode())
                i += 4 + length
            out[tensor["name"]] = np.array(items, dtype=object).reshape(tensor["shape"])
        else:
            out[tensor["name"]] = np.frombuffer(raw, {"FP32": np.float32}[tensor["datatype"]]).reshape(tensor["shape"])
    assert offset == len(blob)
    return out


def test_binary_in_and_out_matches_onnxruntime(client: TestClient, models: dict[str, Path]) -> None:
    body, headers = _binary(X, outputs=[{"name": "probabilities"}, {"name": "label"}, {"name": "logits"}])
    r = client.post(INFER, content=body, headers=headers)  # no Content-Type, as the extension allows
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    got = _binary_outputs(r)
    want = _local(models["cls"], X)
    assert list(got) == ["probabilities", "label", "logits"]
    assert np.allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    assert np.allclose(got["logits"], want["logits"], atol=1e-6)
    assert got["label"].tolist() == [["a", "b", "c"][i] for i in want["probabilities"].argmax(1)]


def test_binary_input_json_output_and_per_output_choice(client: TestClient, models: dict[str, Path]) -> None:
    want = _local(models["cls"], X)
    body, headers = _binary(X, binary_output=False)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers
    assert np.allclose(np.reshape(r.json()["outputs"][1]["data"], (3, 3)), want["probabilities"], atol=1e-6)

    outputs = [{"name": "logits", "parameters": {"binary_data": False}}, {"name": "probabilities"}]
    body, headers = _binary(X, outputs=outputs)  # request default binary, logits asked as JSON
    r = client.post(INFER, content=body, headers=headers)
    size = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:size])
    assert "data" in header["outputs"][0] and header["outputs"][1]["parameters"]["binary_data_size"] == 36
    assert np.allclose(np.frombuffer(r.content[size:], np.float32).reshape(3, 3), want["probabilities"], atol=1e-6)


def test_binary_other_datatypes_are_converted(client: TestClient, models: dict[str, Path]) -> None:
    ints = np.array([[1, -2, 3, 0], [4, 5, -6, 7]])
    want = _local(models["cls"], ints)["probabilities"]
    for datatype, dtype in (("INT32", np.int32), ("INT64", np.int64), ("FP64", np.float64), ("FP16", np.float16)):
        body, headers = _binary(ints.astype(dtype), datatype)
        r = client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200, (datatype, r.text)
        assert np.allclose(_binary_outputs(r)["probabilities"], want, atol=1e-5), datatype


def test_label_output_as_json(client: TestClient, models: dict[str, Path]) -> None:
    r = client.post(INFER, json=_body(X, outputs=[{"name": "label"}]))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    want = _local(models["cls"], X)["probabilities"].argmax(1)
    assert out == {"name": "label", "datatype": "BYTES", "shape": [3], "data": [["a", "b", "c"][i] for i in want]}


def test_regressor_has_no_label(reg_client: TestClient) -> None:
    x = np.zeros((1, 2, 3), np.float32)
    r = reg_client.post(f"/v2/models/{REG}/infer", json=_body(x, outputs=[{"name": "label"}]))
    assert r.status_code == 400 and "unknown output 'label'" in r.json()["error"]


BINARY_BAD = {
    "size too small for the shape": dict(size=12),
    "size larger than the body": dict(size=64),
    "bytes left after the inputs": dict(extra=b"\0" * 4),
    "negative size": dict(size=-1),
}


@pytest.mark.parametrize("case", list(BINARY_BAD))
def test_bad_binary_requests(client: TestClient, case: str) -> None:
    body, headers = _binary(X[:1], **BINARY_BAD[case])
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"], r.text
    assert client.post(INFER, json=_tensor()).status_code == 200


@pytest.mark.parametrize("header", ["abc", "-5", "0", "100000", "1.5"])
def test_bad_header_lengths(client: TestClient, header: str) -> None:
    body, _ = _binary(X[:1])
    r = client.post(INFER, content=body, headers={"Inference-Header-Content-Length": header})
    assert r.status_code == 400 and r.json()["error"], r.text


# ------------------------------------------------------------------------------------------ metrics, log


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_count_outcomes_and_durations(cls_model: LoadedModel) -> None:
    with TestClient(create_app(cls_model)) as c:
        assert c.post(INFER, json=_tensor()).status_code == 200
        assert c.post(INFER, json=_body(X)).status_code == 200
        assert c.post(INFER, content=b"{").status_code == 400
        assert c.post("/v2/models/nope/infer", json=_tensor()).status_code == 404
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    model = {"model": CLS}
    assert _metric(text, "bigmodel_requests_total", outcome="success", **model) == 2
    assert _metric(text, "bigmodel_requests_total", outcome="bad_request", **model) == 1
    assert _metric(text, "bigmodel_requests_total", outcome="not_found", **model) == 1
    assert _metric(text, "bigmodel_request_duration_seconds_count", **model) == 4
    assert _metric(text, "bigmodel_queue_duration_seconds_count", **model) == 2
    assert _metric(text, "bigmodel_compute_duration_seconds_count", **model) == 2
    assert _metric(text, "bigmodel_batch_size_sum", **model) == 4  # 1 row + 3 rows
    assert _metric(text, "bigmodel_inflight_requests", **model) == 0


def test_access_log_one_json_line_per_request(cls_model: LoadedModel) -> None:
    import io

    stream = io.StringIO()
    with TestClient(create_app(cls_model, access_log=True, log_stream=stream, api_key="k")) as c:
        c.post(INFER, json=_tensor(), headers={"Authorization": "Bearer k"})
        c.get("/v2/models/nope", headers={"Authorization": "Bearer k"})
        c.get("/v2")  # no key: 401, logged too
        c.get("/v2/health/live")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", INFER, 200), ("GET", "/v2/models/nope", 404), ("GET", "/v2", 401), ("GET", "/v2/health/live", 200)]
    first = lines[0]
    assert first["bytes_in"] > 0 and first["bytes_out"] > 0 and first["ms"] >= 0 and first["ts"].endswith("Z")


def test_access_log_is_written_while_serving_in_the_same_format(cls_model: LoadedModel) -> None:
    import io
    import time

    stream = io.StringIO()
    with TestClient(create_app(cls_model, access_log=True, log_stream=stream)) as c:
        c.post(INFER, json=_tensor())
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:  # flushed at the end of a loop step
            time.sleep(0.01)
        written = stream.getvalue()
    line = json.loads(written)
    assert written.endswith("\n") and list(line) == ["ts", "client", "method", "path", "status", "ms", "bytes_in",
                                                       "bytes_out"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]) and line["status"] == 200


def _asgi(app, path: str, chunks: list[bytes], disconnect: bool = False,
          client: tuple[str, int] = ("127.0.0.1", 1)) -> tuple[int, bytes]:
    """POST `chunks` (as separate ASGI body messages) straight to the app; its status and body."""
    import asyncio

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "client": client,
             "query_string": b"", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_infer_path_reads_a_body_in_pieces_and_survives_a_disconnect(cls_model: LoadedModel) -> None:
    body = json.dumps(_body(X)).encode()
    app = create_app(cls_model)
    status, content = _asgi(app, INFER, [body[:10], body[10:30], body[30:]])
    first = json.loads(content)["outputs"][0]
    assert status == 200 and np.allclose(np.reshape(first["data"], first["shape"]),
                                         cls_model.run_batch({"input": X})[first["name"]], atol=1e-5)
    status, content = _asgi(app, INFER, [body[:10]], disconnect=True)
    assert status == 400 and "disconnected" in json.loads(content)["error"]
    status, _ = _asgi(app, f"/v2/models/{CLS}/versions/1/infer", [body])
    assert status == 200


def test_access_log_lines_stay_json_whatever_the_client_and_path(cls_model: LoadedModel) -> None:
    import io

    stream = io.StringIO()
    app = create_app(cls_model, access_log=True, log_stream=stream)
    _asgi(app, f'/v2/models/{CLS}/x"y\\z/infer', [b"{}"], client=('10.0.0.1", "evil": "1', 5))
    app.flush()  # what the event loop would have done at the end of its step
    line = json.loads(stream.getvalue())
    assert line["client"] == '10.0.0.1", "evil": "1:5' and line["path"] == f'/v2/models/{CLS}/x"y\\z/infer'
    assert line["status"] == 404 and "evil" not in line


# ------------------------------------------------------------------------------------------ server bugs


def test_server_bug_is_a_500_logged_once_and_counted(models: dict[str, Path], capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=8)

    def bug(*args: object, **kwargs: object) -> None:
        raise KeyError("no such thing")

    monkeypatch.setattr(model, "with_extras", bug)  # a bug after decoding and inference
    monkeypatch.setattr(model, "config_json", bug)  # and one in a Starlette route
    with TestClient(create_app(model)) as c:
        r = c.post(INFER, json=_tensor())
        assert r.status_code == 500 and "internal server error" in r.json()["error"]
        r = c.get(f"/v2/models/{CLS}/config")
        assert r.status_code == 500 and r.json()["error"]
        assert c.post(INFER, content=b"{").status_code == 400  # what a client sent keeps its 4xx
        text = c.get("/metrics").text
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 2 and err.count("server error KeyError") == 2, err
    assert _metric(text, "bigmodel_requests_total", outcome="error", model=CLS) == 1
    assert _metric(text, "bigmodel_requests_total", outcome="bad_request", model=CLS) == 1
    assert _metric(text, "bigmodel_server_errors_total", model=CLS) == 2


# ------------------------------------------------------------------------------------------ limits


def _scope(path: str = INFER, headers: dict[str, str | bytes] | None = None) -> dict:
    raw = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": path, "client": ("127.0.0.1", 1), "query_string": b"",
            "root_path": "", "headers": raw}


async def _call(app, receive, headers: dict[str, str | bytes] | None = None) -> tuple[int, dict[bytes, bytes], dict]:
    """One request straight to the ASGI app: status, response headers, JSON body."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(_scope(headers=headers), receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], dict(sent[0]["headers"]), json.loads(body)


def _messages(*chunks: bytes, stall: bool = False):
    """An ASGI receive giving `chunks` (the last one ends the body unless `stall`), then waiting forever."""
    queue = [{"type": "http.request", "body": c, "more_body": stall or i < len(chunks) - 1}
             for i, c in enumerate(chunks)]

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def _endless(chunk: bytes = b" ", every_s: float = 0.05):
    """A chunked body that never ends: `chunk` every `every_s` seconds."""

    async def receive() -> dict:
        await asyncio.sleep(every_s)
        return {"type": "http.request", "body": chunk, "more_body": True}

    return receive


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb9", b" 1 2", b"+12", b"0x10"])
def test_malformed_header_length_is_a_quiet_400(cls_model: LoadedModel, capsys: pytest.CaptureFixture,
                                                value: bytes) -> None:
    body, _ = _binary(X[:1])  # b"\xb2" is '²' in latin-1, a digit to str.isdigit but not to int()
    status, _, doc = asyncio.run(_call(create_app(cls_model), _messages(body),
                                       {"Inference-Header-Content-Length": value}))
    assert status == 400 and "Inference-Header-Content-Length" in doc["error"], doc
    assert capsys.readouterr().err == ""  # no line per request: anyone could flood the log


def test_json_with_more_values_than_the_model_takes_is_refused_before_parsing(cls_model: LoadedModel) -> None:
    body = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[' + b"1," * 1_000_000 + b"1]}]}"
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as refused:
            decode_infer_request(body, cls_model.signature)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.status_code == 400 and "at most 48" in refused.value.message, refused.value.message
    assert peak < 100_000, f"{peak:,} bytes allocated for a {len(body):,}-byte body that is refused"

    calls = 0

    async def receive() -> dict:  # the same body as it comes over a socket: 64 KiB at a time
        nonlocal calls
        calls += 1
        piece = body[(calls - 1) * 65536:calls * 65536]
        return {"type": "http.request", "body": piece, "more_body": calls * 65536 < len(body)}

    status, headers, doc = asyncio.run(_call(create_app(cls_model), receive, {"content-length": str(len(body))}))
    assert status == 400 and "at most 48" in doc["error"] and calls == 2  # refused on its second 64 KiB
    assert b"connection" not in headers  # the server discards the rest: the client still reads the 400


def test_decoding_stays_within_the_memory_it_reserves() -> None:
    signature = ModelSignature(inputs=[TensorSpec("input", "FP32", (-1, 3, 16, 16))],
                               outputs=[TensorSpec("y", "FP32", (-1, 1))],
                               input_dtypes={"input": np.dtype(np.float32)}, max_batch_size=32)
    x = np.random.default_rng(0).normal(size=(32, 3, 16, 16))
    for nested in (False, True):  # the largest request the model takes, its data flat and nested
        body = json.dumps(_body(x, nested=nested)).encode()
        reserved: list[int] = []
        tracemalloc.start()
        try:
            decoded = decode_infer_request(body, signature, None, reserved.append)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.allclose(decoded.inputs["input"], x.astype(np.float32))
        assert peak <= reserved[0], (nested, peak, reserved)
    more_rows = json.dumps(_body(np.zeros((40, 3, 16, 16)), nested=True)).encode()
    with pytest.raises(RequestError, match="at most"):  # refused on its raw bytes, before parsing
        decode_infer_request(more_rows, signature)
    ints = np.random.default_rng(1).integers(-100, 100, (32, 3, 16, 16)).astype(np.int8)  # converted to FP32
    body, headers = _binary(ints, "INT8")
    reserved = []
    tracemalloc.start()
    try:
        decoded = decode_infer_request(body, signature, headers["Inference-Header-Content-Length"], reserved.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    header = int(headers["Inference-Header-Content-Length"])  # a small header's parse is not reserved: ~32x its size
    assert np.array_equal(decoded.inputs["input"], ints.astype(np.float32))
    assert sum(reserved) <= peak <= sum(reserved) + 32 * header, (peak, reserved, header)
    body, headers = _binary(ints.astype(np.float32))
    reserved = []
    decode_infer_request(body, signature, headers["Inference-Header-Content-Length"], reserved.append)
    assert reserved == []  # sent in the model's dtype: the tensor shares the body


def test_inflight_bytes_cap_503_in_total_413_alone(cls_model: LoadedModel) -> None:
    app = create_app(cls_model, max_inflight_bytes=64 * 1024)
    good = json.dumps(_tensor()).encode()

    def unread() -> None:
        raise AssertionError("a refused body must not be read")

    async def main() -> None:
        status, headers, doc = await _call(app, unread, {"content-length": "100000"})
        assert status == 413 and "--max-inflight-mb" in doc["error"] and headers[b"connection"] == b"close"

        stalled = asyncio.ensure_future(_call(app, _messages(b"{" * 100, stall=True), {"content-length": "40000"}))
        await asyncio.sleep(0.05)  # it holds 40,000 bytes while its body does not come
        status, _, doc = await _call(app, unread, {"content-length": "30000"})
        assert status == 503 and "server busy" in doc["error"], doc
        status, _, doc = await _call(app, _messages(good), {"content-length": str(len(good))})
        assert status == 200, doc  # small requests still fit
        stalled.cancel()  # (the server's grace period ends): it is answered, and gives its bytes back
        status, _, doc = await stalled
        assert status == 503 and "shutting down" in doc["error"]
        status, _, doc = await _call(app, _messages(b"{" * 30000), {"content-length": "30000"})
        assert status == 400, doc  # fits now; refused for what it is

    asyncio.run(main())
    with TestClient(app) as c:
        assert _metric(c.get("/metrics").text, "bigmodel_inflight_bytes", model=CLS) == 0


def test_stalled_or_endless_body_is_a_408(cls_model: LoadedModel) -> None:
    app = create_app(cls_model, request_timeout_s=0.3)

    async def main() -> None:
        for receive in (_messages(b'{"inputs": [', stall=True), _messages(stall=True), _endless()):
            started = time.monotonic()
            status, headers, doc = await _call(app, receive)
            assert status == 408 and "--request-timeout-s" in doc["error"], doc
            assert headers[b"connection"] == b"close" and 0.25 < time.monotonic() - started < 2
        status, _, _ = await _call(app, _messages(json.dumps(_tensor()).encode()))
        assert status == 200

    asyncio.run(main())
    with TestClient(app) as c:
        assert _metric(c.get("/metrics").text, "bigmodel_requests_total", outcome="timeout", model=CLS) == 3


def test_stalled_upload_does_not_delay_other_requests_batches(cls_model: LoadedModel) -> None:
    app = create_app(cls_model, max_queue_delay_ms=400)
    good = json.dumps(_tensor()).encode()

    async def main() -> list[float]:
        stalled = asyncio.ensure_future(_call(app, _messages(b'{"inputs": [', stall=True)))
        await asyncio.sleep(0.05)
        times = []
        for _ in range(3):
            started = time.monotonic()
            status, _, _ = await _call(app, _messages(good))
            times.append(time.monotonic() - started)
            assert status == 200
        stalled.cancel()
        await stalled
        return times

    times = asyncio.run(main())
    assert max(times) < 0.2, f"lone requests waited {times} s for a batch the stalled upload would never join"


def test_stopping_server_answers_a_stalled_upload_503_in_json(cls_model: LoadedModel) -> None:
    import threading

    stopping = threading.Event()
    app = create_app(cls_model, request_timeout_s=0.3, stopping=stopping)
    stopping.set()

    async def main() -> None:
        status, headers, doc = await _call(app, _messages(b"{", stall=True))
        assert status == 503 and "shutting down" in doc["error"] and headers[b"connection"] == b"close"

    asyncio.run(main())
    with TestClient(app) as c:
        assert c.get("/v2/health/ready").status_code == 503  # a load balancer stops sending


# ------------------------------------------------------------------------------------------ fuzz

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_shapes = st.lists(st.integers(-2, 10) | st.sampled_from([2**40, "1", None, 1.5]), max_size=4)
_tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "x", 3]) | _json_values},
    optional={"shape": _shapes | _json_values,
              "datatype": st.sampled_from(["FP32", "FP16", "INT8", "UINT64", "BYTES", "BOOL", "fp32", 7])
              | _json_values,
              "data": st.lists(st.floats(allow_nan=True) | st.integers(-300, 2**65) | st.text(max_size=2),
                               max_size=40) | _json_values,
              "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 64)})
              | _json_values},
)
_outputs = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["logits", "label", "probabilities", "x"])},
                                          optional={"parameters": st.fixed_dictionaries(
                                              {}, optional={"binary_data": st.booleans()}) | _json_values}),
                    max_size=3)
_outputs_valid = st.sampled_from([[{"name": "label"}, {"name": "probabilities"}],
                                  [{"name": "logits", "parameters": {"binary_data": True}}]])
_documents = st.fixed_dictionaries(
    {},
    optional={"inputs": st.lists(_tensors, max_size=3) | _json_values,
              "outputs": _outputs,
              "id": st.text(max_size=5) | _json_values,
              "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans() | _json_values})},
)


@st.composite
def _near_valid(draw: st.DrawFn) -> dict:
    """Requests the model takes, and ones a value or a count away from it."""
    rows = draw(st.integers(1, 10))
    kind = draw(st.sampled_from(["fine"] * 4 + ["extreme", "count"]))
    datatype = draw(st.sampled_from(["FP32"] * 3 + ["FP64", "INT16"]))
    small = st.integers(-100, 100) if datatype == "INT16" else st.integers(-100, 100) | st.floats(-10, 10)
    values = {"fine": small, "extreme": st.integers(-40000, 40000) | st.floats(-1e40, 1e40),
              "count": st.floats(-10, 10)}[kind]
    size = 4 * rows + (draw(st.sampled_from([-1, 1])) if kind == "count" else 0)
    doc: dict = {"inputs": [{"name": "input", "shape": [rows, 4], "datatype": datatype,
                             "data": draw(st.lists(values, min_size=size, max_size=size))}]}
    if draw(st.booleans()):
        doc["outputs"] = draw(_outputs_valid)
    return doc


_headers = st.none() | st.integers(-3, 400).map(str) | st.text(max_size=4)
_BINARY_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT8": np.int8, "INT32": np.int32,
                 "UINT64": np.uint64}


@st.composite
def _binary_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """Binary tensor requests as tritonclient builds them, the header length right; the tensor's bytes, its
    binary_data_size and the header's fields are right or off by a little."""
    rows = draw(st.integers(1, 10))
    odd = st.sampled_from([False] * 7 + [True])  # now and then a name or datatype that is not even a string
    datatype = draw(_json_values if draw(odd) else st.sampled_from(list(_BINARY_TYPES) + ["BYTES", "BOOL"]))
    dtype = np.dtype(_BINARY_TYPES.get(datatype, np.uint8) if isinstance(datatype, str) else np.uint8)
    if draw(st.sampled_from([True] * 3 + [False])):  # values a model can take
        values = draw(st.lists(st.integers(-100, 100), min_size=rows * 4, max_size=rows * 4))
        raw = np.array(values).astype(dtype.newbyteorder("<")).tobytes()
    else:
        raw = draw(st.binary(max_size=rows * 4 * dtype.itemsize + 4))
    size = draw(st.sampled_from([len(raw)] * 12 + [len(raw) + 1, max(len(raw) - 1, 0), -1, "16"]))
    shape = draw(st.sampled_from([[rows, 4]] * 12 + [[rows], [rows, 4, 1], [0, 4], [rows, 5]]))
    name = draw(_json_values) if draw(odd) else "input"
    tensor = {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
    doc = {"inputs": [tensor], **draw(st.fixed_dictionaries({}, optional={
        "outputs": _outputs, "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans()}),
        "id": st.text(max_size=5)}))}
    header = json.dumps(doc).encode()
    tail = draw(st.sampled_from([b""] * 12 + [b"\0", b"\0" * 8]))
    length = draw(st.sampled_from([str(len(header))] * 12 + [str(len(header) - 1), str(len(header) + 3), "0"]))
    return header + raw + tail, length


FUZZ_OK: dict[str, int] = {}


def _fuzz_post(client: TestClient, kind: str, body: bytes, headers: dict[str, str]) -> None:
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text, body[:200])  # a 500 is a server bug
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str)
    else:
        FUZZ_OK[kind] = FUZZ_OK.get(kind, 0) + 1
        if "inference-header-content-length" in r.headers:
            _binary_outputs(r)  # well-formed by the extension's rules
    assert client.get("/v2/health/ready").status_code == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(doc=_documents | _near_valid(), tail=st.binary(max_size=48), header=st.none() | _headers,
       raw=st.none() | st.none() | st.binary(max_size=64))
def test_fuzz_infer_never_5xx(client: TestClient, doc: dict, tail: bytes, header: str | None,
                              raw: bytes | None) -> None:
    document = json.dumps(doc, allow_nan=True).encode() + (tail if header is not None else b"")
    body = document if raw is None else raw  # raw: arbitrary bytes instead of a document
    headers = {}
    if header is not None and header.isascii() and header.isprintable():
        headers["Inference-Header-Content-Length"] = header
    _fuzz_post(client, "json", body, headers)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=_binary_requests())
def test_fuzz_binary_infer_never_5xx(client: TestClient, request: tuple[bytes, str]) -> None:
    body, length = request
    _fuzz_post(client, "binary", body, {"Inference-Header-Content-Length": length})


def test_fuzz_reached_successful_requests_too() -> None:
    """The fuzz above decoded real tensors on both paths, not only the errors before them."""
    assert FUZZ_OK.get("json", 0) >= 5 and FUZZ_OK.get("binary", 0) >= 5, FUZZ_OK


@pytest.mark.parametrize(("field", "value", "message"), [
    ("port", 70000, "--port 70000"), ("max_batch_size", 0, "--max-batch-size 0"),
    ("max_queue_delay_ms", -1, "--max-queue-delay-ms -1"), ("max_queue", 0, "--max-queue 0"),
    ("grace_seconds", -1, "--grace-seconds -1"), ("max_body_mb", 0, "--max-body-mb 0"),
    ("threads", -1, "--threads -1"), ("device", "tpu", "--device tpu"), ("model_name", "a/b", "model name"),
])
def test_serve_options_name_the_flag_out_of_range(field: str, value: object, message: str) -> None:
    ServeOptions().check()
    with pytest.raises(UsageError, match=re.escape(message)):
        ServeOptions(**{field: value}).check()
