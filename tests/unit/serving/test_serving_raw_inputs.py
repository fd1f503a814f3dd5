"""Serving raw inputs (issue 19) in-process: table rows as JSON objects or one tensor per column (JSON, and the
binary body tritonclient builds), encoded with the run's fitted preprocessing; image files (PNG, JPEG; base64 in
JSON, raw as binary) decoded, converted and resized as in training; the encoded and pixel inputs still working;
the metadata that says what the input means; and each bad input a 400 naming it.

Tables: the churn run of conftest.py (trained and exported: its metadata carries the fitted preprocessing).
Images: tiny_models.image_classifier (input_kind image, 1x8x8).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from bigmodel_cli.data import preprocess
from bigmodel_cli.data.raw_inputs import InputSpec
from bigmodel_cli.serving.app import create_app
from bigmodel_cli.serving.model import LoadedModel
from tests.unit.serving.conftest import CHURN_COLUMNS
from tests.unit.serving.tiny_models import IMG, image_classifier

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ROWS = [
    {"tenure_months": 3, "monthly_charges": 95.5, "plan": "basic", "region": "south", "support_calls": 4,
     "paperless": True},
    {"tenure_months": None, "monthly_charges": 40.0, "plan": "gold", "region": "north", "support_calls": 0,
     "paperless": False},  # tenure missing (imputed), a plan never seen in training
    {"tenure_months": 60, "monthly_charges": 20.25, "plan": None, "region": "east", "support_calls": 1,
     "paperless": None},
]


# ------------------------------------------------------------------------------------------ tables


@pytest.fixture(scope="module")
def churn(churn_run: Path):
    model = LoadedModel.load(churn_run / "model.onnx", device="cpu", max_batch_size=16)
    with TestClient(create_app(model, monitoring=False)) as c:
        yield model, c


def _probabilities(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"input": x.astype(np.float32)})[0]


@pytest.mark.slow  # the churn run (shared) trains and exports first
def test_metadata_says_what_the_table_input_means(churn, churn_run: Path) -> None:
    model, client = churn
    manifest = json.loads((churn_run / "preprocessing.json").read_text())
    raw = client.get(f"/v2/models/{model.name}").json()["parameters"]["raw_input"]
    assert [c["name"] for c in raw["columns"]] == CHURN_COLUMNS
    types = {c["name"]: c["type"] for c in raw["columns"]}
    assert types["monthly_charges"] == "numeric" and types["plan"] == "categorical"
    assert next(c for c in raw["columns"] if c["name"] == "plan")["categories"] == ["basic", "plus", "pro"]
    assert raw["features"] == manifest["features"]  # the encoded order of the input tensor
    assert "raw feature units" in raw["range"] and set(raw["forms"]) == {"encoded", "rows", "columns"}
    config = client.get(f"/v2/models/{model.name}/config").json()
    assert json.loads(config["parameters"]["raw_input"]["string_value"]) == raw


@pytest.mark.slow
def test_rows_are_encoded_with_the_runs_fitted_preprocessing(churn, churn_run: Path) -> None:
    model, client = churn
    manifest = json.loads((churn_run / "preprocessing.json").read_text())
    r = client.post(f"/v2/models/{model.name}/infer", json={"parameters": {"rows": ROWS},
                                                              "outputs": [{"name": "probabilities"}]})
    got = _probabilities(r)
    x = InputSpec.from_manifest(manifest).rows(ROWS)  # the run's own preprocessing (prepare-data's functions)
    assert np.allclose(got, _onnx(churn_run / "model.onnx", x), atol=1e-6)

    columns = {c["name"]: c for c in manifest["preprocessing"]["table"]["columns"]}
    features = manifest["features"]
    assert x[1, features.index("tenure_months")] == pytest.approx(columns["tenure_months"]["fill"])  # imputed
    assert not x[1, [i for i, f in enumerate(features) if f.startswith("plan=")]].any()  # unseen: no indicator
    fill = columns["plan"]["fill"]
    assert x[2, features.index(f"plan={fill}")] == 1  # missing category: the most frequent one of train

    encoded = client.post(f"/v2/models/{model.name}/infer", json={  # the encoded input keeps working
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert np.allclose(_probabilities(encoded), got, atol=1e-6)


@pytest.mark.slow
def test_one_tensor_per_column_json_and_as_tritonclient_sends_it(churn) -> None:
    from tritonclient.http import InferInput, InferRequestedOutput
    from tritonclient.http._utils import _get_inference_request

    model, client = churn
    url = f"/v2/models/{model.name}/infer"
    want = _probabilities(client.post(url, json={"parameters": {"rows": ROWS[:1] * 2}}))
    types = {"tenure_months": "INT64", "monthly_charges": "FP32", "plan": "BYTES", "region": "BYTES",
             "support_calls": "INT32", "paperless": "BOOL"}
    tensors = [{"name": c, "shape": [2], "datatype": types[c], "data": [ROWS[0][c]] * 2} for c in CHURN_COLUMNS]
    assert np.allclose(_probabilities(client.post(url, json={"inputs": tensors})), want, atol=1e-6)

    inputs = []  # binary tensor data (tritonclient's default), BYTES in Triton's length-prefixed encoding
    for c in CHURN_COLUMNS:
        tensor = InferInput(c, [2], types[c])
        dtype = {"INT64": np.int64, "FP32": np.float32, "INT32": np.int32, "BOOL": bool, "BYTES": object}[types[c]]
        tensor.set_data_from_numpy(np.array([ROWS[0][c]] * 2, dtype=dtype))
        inputs.append(tensor)
    body, json_size = _get_inference_request(inputs, "", [InferRequestedOutput("probabilities", binary_data=False)],
                                             0, False, False, 0, None, None)
    r = client.post(url, content=body, headers={"Inference-Header-Content-Length": str(json_size)})
    assert np.allclose(_probabilities(r), want, atol=1e-6)


@pytest.mark.slow
def test_documented_table_examples_are_answered_alike(churn) -> None:
    """docs/deploy.md's rows example and its per-column form give the same answers."""
    from tests.cli.test_serve import documented_example

    model, client = churn
    body, _ = documented_example("churn-rows")
    text = (Path(__file__).resolve().parents[3] / "docs" / "deploy.md").read_text()
    columns = json.loads(text.split("as KServe's V2 tabular examples send a DataFrame:", 1)[1]
                         .split("```json\n", 1)[1].split("```", 1)[0])
    url = f"/v2/models/{model.name}/infer"
    by_rows = client.post(url, json=body)
    assert [o["name"] for o in by_rows.json()["outputs"]] == ["label", "probabilities"]
    by_columns = client.post(url, json={**columns, "outputs": body["outputs"]})
    assert np.allclose(_probabilities(by_rows), _probabilities(by_columns), atol=1e-6)
    assert by_rows.json()["outputs"][0]["data"] == by_columns.json()["outputs"][0]["data"]


@pytest.mark.slow
def test_raw_rows_of_concurrent_requests_share_a_batch_and_a_bad_row_fails_only_its_request(
        churn_run: Path, tmp_path: Path) -> None:
    import asyncio

    import httpx

    from bigmodel_cli.serving.payloads import PayloadLog

    model = LoadedModel.load(churn_run / "model.onnx", device="cpu", max_batch_size=16)
    log = PayloadLog(1.0, tmp_path / "payloads.jsonl", model=model.name, version=model.version)
    url = f"/v2/models/{model.name}/infer"
    bodies = [{"parameters": {"rows": [ROWS[i % 3]] * (1 + i % 2)}, "outputs": [{"name": "probabilities"}]}
              for i in range(6)]
    bodies.insert(3, {"parameters": {"rows": [ROWS[0], {**ROWS[1], "support_calls": "many"}]}})

    async def concurrently(app) -> tuple[list, dict]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            answers = await asyncio.gather(*(client.post(url, json=b) for b in bodies))
            stats = (await client.get(f"/v2/models/{model.name}/stats")).json()["model_stats"][0]
        return answers, stats

    answers, stats = asyncio.run(concurrently(create_app(model, max_queue_delay_ms=50, payloads=log)))
    log.close()
    bad = answers.pop(3)
    assert bad.status_code == 400 and "row 2: column 'support_calls' is 'many', not a number" in bad.json()["error"]
    spec = InputSpec.from_manifest(json.loads((churn_run / "preprocessing.json").read_text()))
    for body, answer in zip([b for i, b in enumerate(bodies) if i != 3], answers, strict=True):
        want = _onnx(churn_run / "model.onnx", spec.rows(body["parameters"]["rows"]))
        assert np.allclose(_probabilities(answer), want, atol=1e-6)
    assert stats["execution_count"] < 6 and stats["inference_count"] == 9  # shared batches; the bad request left out
    lines = [json.loads(line) for line in (tmp_path / "payloads.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and lines[0]["inputs"][0]["name"] == "tenure_months"  # the columns as the client sent


TABLE_ERRORS = {
    "missing column": ({"parameters": {"rows": [{k: v for k, v in ROWS[0].items() if k != "region"}]}},
                       "row 1: column 'region' is missing"),
    "extra key": ({"parameters": {"rows": [{**ROWS[0], "plann": "pro"}]}}, "unknown column 'plann'; did you mean"),
    "not a number": ({"parameters": {"rows": [{**ROWS[0], "monthly_charges": "cheap"}]}},
                     "column 'monthly_charges' is 'cheap', not a number"),
    "no rows": ({"parameters": {"rows": []}}, "non-empty list of JSON objects"),
    "row not an object": ({"parameters": {"rows": [[1, 2]]}}, "row 1 is not a JSON object"),
    "rows and tensors": ({"parameters": {"rows": ROWS}, "inputs": [{"name": "plan", "shape": [1], "datatype": "BYTES",
                                                                   "data": ["pro"]}]}, "not both"),
    "too many rows": ({"parameters": {"rows": ROWS * 6}}, "over max_batch_size 16"),
    "unknown tensor": ({"inputs": [{"name": "tenure", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
                       "unknown input 'tenure'"),
    "missing column tensor": ({"inputs": [{"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["pro"]}]},
                              "missing input 'tenure_months'"),
    "column tensor length": ({"inputs": [{"name": c, "shape": [1 + (c == "plan")], "datatype": "BYTES",
                                          "data": [str(ROWS[0][c])] * (1 + (c == "plan"))} for c in CHURN_COLUMNS]},
                             "disagree on the number of rows"),
    "bytes not text": ({"inputs": [{"name": "plan", "shape": [1], "datatype": "BYTES", "data": [3]}]},
                       "row 1 is 3, not a BYTES value"),
    "columns and encoded": ({"inputs": [{"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["pro"]},
                                        {"name": "input", "shape": [1, 12], "datatype": "FP32", "data": [0.0] * 12}]},
                            "not both"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TABLE_ERRORS))
def test_bad_table_inputs_are_400_naming_them(churn, case: str) -> None:
    model, client = churn
    body, message = TABLE_ERRORS[case]
    r = client.post(f"/v2/models/{model.name}/infer", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


# ------------------------------------------------------------------------------------------ images


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory):
    path = image_classifier(tmp_path_factory.mktemp("raw-images") / "img.onnx")
    with TestClient(create_app(LoadedModel.load(path, device="cpu", max_batch_size=8))) as c:
        yield path, c


def _file(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _as_trained(data: bytes) -> np.ndarray:
    """What prepare-data makes of an image file for this model (its own function)."""
    return preprocess.apply_images({"channels": 1, "size": [8, 8]}, [io.BytesIO(data)]).astype(np.float32)


def test_image_metadata_says_pixels_0_255_nchw_and_files(images) -> None:
    _, client = images
    raw = client.get(f"/v2/models/{IMG}").json()["parameters"]["raw_input"]
    assert raw["image"] == {"channels": 1, "height": 8, "width": 8}
    assert "0..255" in raw["range"] and raw["layout"] == "NCHW"
    assert "PNG/JPEG" in raw["forms"]["bytes"] and "base64" in raw["forms"]["bytes"]


def test_png_and_jpeg_bytes_json_and_binary(images) -> None:
    path, client = images
    rng = np.random.default_rng(0)
    grey = _file(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    photo = _file(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8), "JPEG")  # RGB, 16x20: converted and resized
    rgba = _file(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="RGBA")  # on white, as in training
    files = [grey, photo, rgba]
    want = _onnx(path, np.concatenate([_as_trained(f) for f in files]))
    body = {"inputs": [{"name": "input", "shape": [3], "datatype": "BYTES",
                        "data": [base64.b64encode(f).decode() for f in files]}]}
    got = _probabilities(client.post(f"/v2/models/{IMG}/infer", json=body))
    assert np.allclose(got, want, atol=1e-6)

    blob = b"".join(struct.pack("<I", len(f)) + f for f in files)  # Triton's BYTES encoding, raw files
    header = json.dumps({"inputs": [{"name": "input", "shape": [3, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}},
                                     {"name": "label"}]}).encode()
    r = client.post(f"/v2/models/{IMG}/infer", content=header + blob,
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert np.allclose(_probabilities(r), want, atol=1e-6)

    pixels = _as_trained(grey)  # the pixel tensor keeps working
    r = client.post(f"/v2/models/{IMG}/infer", json={"inputs": [{"name": "input", "shape": [1, 1, 8, 8],
                                                                   "datatype": "UINT8",
                                                                   "data": pixels.astype(int).ravel().tolist()}]})
    assert np.allclose(_probabilities(r), want[:1], atol=1e-6)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its pixels are never there)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = b""
    for kind, data in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 16)), (b"IEND", b"")):
        chunks += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunks


IMAGE_ERRORS = {
    "not an image": (["bm90IGFuIGltYWdl"], "image 1 is not an image file PIL can read (cannot identify image file)"),
    "not base64": (["***"], "image 1 is not base64"),
    "huge declared size": ([base64.b64encode(_png_header(5000, 5000)).decode()], "image 1 is 5000x5000 pixels"),
    "a number": ([7], "image 1 must be a base64 string"),
}


@pytest.mark.parametrize("case", list(IMAGE_ERRORS))
def test_bad_image_inputs_are_400_naming_them(images, case: str) -> None:
    _, client = images
    data, message = IMAGE_ERRORS[case]
    r = client.post(f"/v2/models/{IMG}/infer", json={"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                                                   "data": data}]})
    assert r.status_code == 400 and message in r.json()["error"], r.text
