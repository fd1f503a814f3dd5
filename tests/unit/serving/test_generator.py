"""Serving generators (issue 15) in-process: z sent or drawn from a seed by the export's rule, labels as inputs or
parameters, UINT8 images and PNG bytes (JSON base64 and binary), the metadata and config that describe them, the
bad requests (each a 400 naming what is wrong), and restoration models as plain tensors.

Models: tests/unit/serving/tiny_models.py `generator` / `restorer` (onnx.helper, the documented metadata written
with export.metadata's writer). The real server with tritonclient is tested in tests/cli/test_serve.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import warnings
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from PIL import Image

from bigmodel_cli.errors import UsageError
from bigmodel_cli.export import metadata
from bigmodel_cli.serving.app import create_app
from bigmodel_cli.serving.model import LoadedModel
from tests.unit.serving.tiny_models import GEN, RESTORE, generator, restorer

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

INFER = f"/v2/models/{GEN}/infer"


def rule(seed: int, n: int, latent_dim: int = 8) -> np.ndarray:
    """The seed -> z rule of docs/generative.md, written out here (not the server's code)."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generators")
    return {"plain": generator(root / "gan.onnx"), "cond": generator(root / "cgan.onnx", conditional=True),
            "rgb": generator(root / "rgb.onnx", image_shape=(3, 5, 6)), "restore": restorer(root / "denoise.onnx"),
            "restore_fp32": restorer(root / "denoise_fp32.onnx", dtype=TensorProto.FLOAT)}


@pytest.fixture(scope="module")
def plain(paths: dict[str, Path]):
    with TestClient(create_app(LoadedModel.load(paths["plain"], device="cpu", max_batch_size=16))) as c:
        yield c


@pytest.fixture(scope="module")
def cond(paths: dict[str, Path]):
    with TestClient(create_app(LoadedModel.load(paths["cond"], device="cpu", max_batch_size=16))) as c:
        yield c


def _local(path: Path, z: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"z": z} if label is None else {"z": z, "label": label.astype(np.int64)}
    return session.run(["image"], feeds)[0]


def _image(doc: dict) -> np.ndarray:
    out = next(o for o in doc["outputs"] if o["name"] == "image")
    assert out["datatype"] == "UINT8"
    return np.asarray(out["data"], np.uint8).reshape(out["shape"])


def _pngs(doc: dict) -> list[bytes]:
    out = next(o for o in doc["outputs"] if o["name"] == "image_png")
    assert out["datatype"] == "BYTES" and out["parameters"] == {"content_type": "base64"}
    return [base64.b64decode(item) for item in out["data"]]


def _decode_png(data: bytes) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(data)))
    return image[None] if image.ndim == 2 else np.transpose(image, (2, 0, 1))


# ------------------------------------------------------------------------------------------ what a client reads


def test_metadata_and_config_describe_z_seed_label_and_png(cond: TestClient) -> None:
    meta = cond.get(f"/v2/models/{GEN}").json()
    assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 8]},
                              {"name": "label", "datatype": "INT64", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 1, 4, 4]},
                               {"name": "image_png", "datatype": "BYTES", "shape": [-1]}]
    params = meta["parameters"]
    assert params["task"] == "generation" and params["class_names"] == ["zero", "one", "two"]
    described = params["generator"]
    assert described["latent_dim"] == 8 and described["conditional"] is True
    assert "default_rng(seed).standard_normal((n, latent_dim), dtype=numpy.float32)" in described["z"]
    assert "'seed'" in described["z"] and "'label'" in described["label"] and "0..2" in described["label"]
    config = cond.get(f"/v2/models/{GEN}/config").json()
    assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
        ("z", "TYPE_FP32", [8], True), ("label", "TYPE_INT64", [], True)]
    assert [o["name"] for o in config["output"]] == ["image", "image_png"]
    assert json.loads(config["parameters"]["generator"]["string_value"]) == described


# ------------------------------------------------------------------------------------------ seed, z, label


def test_seed_draws_z_by_the_export_rule(plain: TestClient, paths: dict[str, Path]) -> None:
    r = plain.post(INFER, json={"inputs": [], "parameters": {"seed": 7, "n": 3}})
    assert r.status_code == 200, r.text
    images = _image(r.json())
    assert images.shape == (3, 1, 4, 4)
    assert np.array_equal(images, _local(paths["plain"], rule(7, 3)))
    one = _image(plain.post(INFER, json={"parameters": {"seed": 7}}).json())  # no inputs at all; n defaults to 1
    assert np.array_equal(one, images[:1])  # row i of a seed does not depend on n
    other = _image(plain.post(INFER, json={"inputs": [], "parameters": {"seed": 8}}).json())
    assert not np.array_equal(other, one)


def test_z_sent_by_the_client_json_and_binary(plain: TestClient, paths: dict[str, Path]) -> None:
    z = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    doc = plain.post(INFER, json={"inputs": [{"name": "z", "shape": [2, 8], "datatype": "FP32",
                                              "data": z.ravel().tolist()}]}).json()
    assert np.array_equal(_image(doc), _local(paths["plain"], z))
    header = json.dumps({"inputs": [{"name": "z", "shape": [2, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": z.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    r = plain.post(INFER, content=header + z.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))})
    size = int(r.headers["Inference-Header-Content-Length"])
    assert json.loads(r.content[:size])["outputs"][0]["datatype"] == "UINT8"
    assert np.array_equal(np.frombuffer(r.content[size:], np.uint8).reshape(2, 1, 4, 4), _local(paths["plain"], z))


def test_conditional_label_as_parameter_list_or_input(cond: TestClient, paths: dict[str, Path]) -> None:
    z = rule(3, 4)
    one = cond.post(INFER, json={"parameters": {"seed": 3, "n": 4, "label": 2}}).json()
    assert np.array_equal(_image(one), _local(paths["cond"], z, np.full(4, 2)))
    listed = cond.post(INFER, json={"parameters": {"seed": 3, "label": [0, 1, 2, 1]}}).json()  # n = 4 from the list
    assert np.array_equal(_image(listed), _local(paths["cond"], z, np.array([0, 1, 2, 1])))
    tensor = cond.post(INFER, json={"inputs": [{"name": "label", "shape": [4], "datatype": "INT64",
                                                "data": [0, 1, 2, 1]}], "parameters": {"seed": 3}}).json()
    assert np.array_equal(_image(tensor), _image(listed))
    assert not np.array_equal(_image(one), _image(listed))


BAD = {
    "z too wide": ({"inputs": [{"name": "z", "shape": [1, 9], "datatype": "FP32", "data": [0.0] * 9}],
                    "parameters": {"label": 0}}, "input 'z': shape [1, 9]"),
    "z not finite": ({"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP64",
                                  "data": [0.0] * 7 + [1e300]}], "parameters": {"label": 0}}, "'z'"),
    "no z nor seed": ({"inputs": [], "parameters": {"label": 0}}, "missing input 'z'"),
    "z and seed": ({"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}],
                    "parameters": {"seed": 1, "label": 0}}, "not both"),
    "label missing": ({"parameters": {"seed": 1}}, "missing 'label'"),
    "label out of range": ({"parameters": {"seed": 1, "label": 3}}, "label 3 is out of range: classes are 0..2"),
    "label beyond int64": ({"parameters": {"seed": 1, "label": 2**70}}, f"label {2**70} is out of range"),
    "label list beyond int64": ({"parameters": {"seed": 1, "label": [0, -2**70]}}, "is out of range"),
    "label tensor out of range": ({"inputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [-1]}],
                                   "parameters": {"seed": 1}}, "label -1 is out of range"),
    "label and parameter": ({"inputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [1]}],
                             "parameters": {"seed": 1, "label": 1}}, "not both"),
    "label list length": ({"parameters": {"seed": 1, "n": 2, "label": [1, 2, 0]}}, "3 classes for 2 images"),
    "label not an int": ({"parameters": {"seed": 1, "label": "one"}}, "parameter 'label' must be a class index"),
    "label rows": ({"inputs": [{"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 1]}],
                    "parameters": {"seed": 1, "n": 3}}, "'label' has 2 rows, z has 3"),
    "negative seed": ({"parameters": {"seed": -1, "label": 0}}, "parameter 'seed' must be an integer"),
    "seed too large": ({"parameters": {"seed": 2**64, "label": 0}}, "parameter 'seed' must be an integer"),
    "seed not an int": ({"parameters": {"seed": "7", "label": 0}}, "parameter 'seed' must be an integer"),
    "seed a bool": ({"parameters": {"seed": True, "label": 0}}, "parameter 'seed' must be an integer"),
    "n too large": ({"parameters": {"seed": 1, "n": 17, "label": 0}}, "parameter 'n' must be an integer from 1"),
    "n without seed": ({"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}],
                        "parameters": {"n": 2, "label": 0}}, "'n' goes with 'seed'"),
    "unknown output": ({"parameters": {"seed": 1, "label": 0}, "outputs": [{"name": "label"}]}, "unknown output"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_generator_requests_are_400_naming_the_fault(cond: TestClient, case: str) -> None:
    body, message = BAD[case]
    r = cond.post(INFER, json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_label_given_to_an_unconditional_generator(plain: TestClient) -> None:
    r = plain.post(INFER, json={"parameters": {"seed": 1, "label": 0}})
    assert r.status_code == 400 and "not conditional" in r.json()["error"]
    r = plain.post(INFER, json={"inputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [0]}],
                                "parameters": {"seed": 1}})
    assert r.status_code == 400 and "unknown input 'label'" in r.json()["error"]


# ------------------------------------------------------------------------------------------ PNG


def test_same_seed_same_png_bytes_alone_or_batched_with_others(paths: dict[str, Path]) -> None:
    """Byte-identical PNGs for one seed on every call, whether its rows ran alone or merged with other requests."""
    model = LoadedModel.load(paths["rgb"], device="cpu", max_batch_size=16)
    body = {"parameters": {"seed": 11, "n": 2}, "outputs": [{"name": "image_png"}, {"name": "image"}]}
    with TestClient(create_app(model, max_queue_delay_ms=50)) as c:
        first = c.post(INFER, json=body).json()
        again = c.post(INFER, json=body).json()
    pngs = _pngs(first)
    assert pngs == _pngs(again)
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    image = _image(first)
    assert image.shape == (2, 3, 5, 6)
    assert np.array_equal(np.stack([_decode_png(p) for p in pngs]), image)  # the PNG holds exactly the pixels

    async def concurrently() -> list[dict]:  # the seed's request merged into batches with others
        app = create_app(LoadedModel.load(paths["rgb"], device="cpu", max_batch_size=16), max_queue_delay_ms=50)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            others = [{"parameters": {"seed": s, "n": 3}} for s in range(5)]
            answers = await asyncio.gather(*(client.post(INFER, json=b) for b in [*others, body, *others]))
            stats = (await client.get(f"/v2/models/{GEN}/stats")).json()["model_stats"][0]
        return [a.json() for a in answers], stats

    merged, stats = asyncio.run(concurrently())
    assert stats["execution_count"] < 11  # the 11 requests did share batches
    assert _pngs(merged[5]) == pngs


def test_png_as_binary_bytes_tensor(plain: TestClient, paths: dict[str, Path]) -> None:
    """tritonclient's default: binary outputs; BYTES as a 4-byte length and the raw PNG bytes per image."""
    r = plain.post(INFER, json={"parameters": {"seed": 5, "n": 2, "binary_data_output": True},
                                "outputs": [{"name": "image_png"}]})
    size = int(r.headers["Inference-Header-Content-Length"])
    doc, blob = json.loads(r.content[:size]), r.content[size:]
    assert doc["outputs"] == [{"name": "image_png", "datatype": "BYTES", "shape": [2],
                               "parameters": {"binary_data_size": len(blob)}}]
    images, offset = [], 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset:offset + 4], "little")
        images.append(_decode_png(blob[offset + 4:offset + 4 + length]))
        offset += 4 + length
    assert np.array_equal(np.stack(images), _local(paths["plain"], rule(5, 2)))


# ------------------------------------------------------------------------------------------ restoration, load


def test_restoration_model_is_served_as_plain_tensors(paths: dict[str, Path]) -> None:
    model = LoadedModel.load(paths["restore"], device="cpu", max_batch_size=8)
    x = np.random.default_rng(2).integers(0, 256, size=(2, 1, 4, 4)).astype(np.uint8)
    with TestClient(create_app(model)) as c:
        meta = c.get(f"/v2/models/{RESTORE}").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 4, 4]}]
        assert "generator" not in meta["parameters"]
        r = c.post(f"/v2/models/{RESTORE}/infer", json={
            "inputs": [{"name": "input", "shape": [2, 1, 4, 4], "datatype": "UINT8", "data": x.ravel().tolist()}],
            "outputs": [{"name": "image"}, {"name": "image_png"}]})
        missing = c.post(f"/v2/models/{RESTORE}/infer", json={"inputs": [], "parameters": {"seed": 1}})
    assert r.status_code == 200, r.text
    want = (x.astype(np.float32) * 0.5 + 10).astype(np.uint8)
    assert np.array_equal(_image(r.json()), want)
    assert np.array_equal(np.stack([_decode_png(p) for p in _pngs(r.json())]), want)
    assert missing.status_code == 400  # no seed for a model that is not a generator


def test_restoration_model_of_unclipped_noise_takes_fp32_pixels(paths: dict[str, Path]) -> None:
    model = LoadedModel.load(paths["restore_fp32"], device="cpu", max_batch_size=8)
    x = np.random.default_rng(3).uniform(-20, 480, size=(2, 1, 4, 4)).astype(np.float32)  # beyond 0..255
    with TestClient(create_app(model)) as c:
        meta = c.get(f"/v2/models/{RESTORE}").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
        r = c.post(f"/v2/models/{RESTORE}/infer", json={
            "inputs": [{"name": "input", "shape": [2, 1, 4, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "image"}, {"name": "image_png"}]})
        photo = c.post(f"/v2/models/{RESTORE}/infer", json={  # 8-bit pixels are pixels too: cast to FP32
            "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "UINT8", "data": [200] * 16}]})
    assert r.status_code == 200, r.text
    want = np.floor(x * 0.5 + 10).astype(np.uint8)
    assert np.array_equal(_image(r.json()), want)
    assert np.array_equal(np.stack([_decode_png(p) for p in _pngs(r.json())]), want)
    assert photo.status_code == 200 and (_image(photo.json()) == 110).all()


def test_generator_whose_metadata_contradicts_its_graph_is_refused(paths: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "wrong.onnx"
    path.write_bytes(paths["plain"].read_bytes())
    props = dict(metadata.read(path).raw)
    metadata.write(path, {**props, "latent_dim": "16"})
    with pytest.raises(UsageError, match="latent_dim 16 does not match the input 'z'"):
        LoadedModel.load(path, device="cpu")
    metadata.write(path, {**props, "conditional": "true"})
    with pytest.raises(UsageError, match="conditional=true"):
        LoadedModel.load(path, device="cpu")
