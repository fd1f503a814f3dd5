"""A text model's input served two ways: token ids (INT32/INT64) and raw strings (BYTES, JSON or Triton's binary
encoding), both decoded to ids [N, max_length] padded with pad_id; every malformed one is a 400 with one message.

    pytest tests/unit/serving/test_text_inputs.py

Model: a tiny bag-of-embeddings classifier (onnx.helper, no torch) whose export metadata carries a `tokenizers`
vocabulary fitted here with prepare-data's own `fit_text`, as `bigmodel export` writes it.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from starlette.exceptions import StarletteDeprecationWarning
from tritonclient.utils import serialize_byte_tensor

from bigmodel_cli.config.schema import TextSection
from bigmodel_cli.data.preprocess import apply_text, fit_text
from bigmodel_cli.errors import UsageError
from bigmodel_cli.serving.app import create_app
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.protocol import RequestError, decode_infer_request
from tests.unit.serving.tiny_models import save

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NAME = "tiny-text"
MAX_LENGTH = 6
TRAIN = ["a great film", "a dull film", "great acting and a great story", "dull story, dull acting", "fine film"]
TEXTS = ["A GREAT story", "dull", "", "unknown words only", "great great great great great great great great"]


def text_model(path: Path, spec: dict, *, dtype: int = TensorProto.INT64, metadata: object = "spec") -> Path:
    """ids [batch, sequence] -> embedding rows summed (row 0, the padding, is zero) -> logits -> softmax.

    Its `text_preprocessing` metadata is `spec` (by default), `metadata`, or none when `metadata` is None."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(spec["vocab_size"], 4)).astype(np.float32)
    table[spec["pad_id"]] = 0.0
    nodes = [helper.make_node("Gather", ["E", "ids"], ["embedded"], axis=0),
             helper.make_node("ReduceSum", ["embedded", "axis1"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32),
                                                                          "W"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    if dtype != TensorProto.INT64:
        nodes.insert(0, helper.make_node("Cast", ["input"], ["ids"], to=TensorProto.INT64))
    else:
        nodes.insert(0, helper.make_node("Identity", ["input"], ["ids"]))
    inputs = [helper.make_tensor_value_info("input", dtype, ["batch", "sequence"])]
    graph = helper.make_graph(nodes, "tiny_text", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
                              initializer=inits)
    text = {} if metadata is None else {"text_preprocessing": spec if metadata == "spec" else metadata}
    return save(graph, path, task="classification", class_names=["neg", "pos"], input_shape=[MAX_LENGTH],
                recipe=NAME, **text)


@pytest.fixture(scope="module")
def spec() -> dict:
    return fit_text(TRAIN, TextSection(tokenizer="word", vocab_size=100, max_length=MAX_LENGTH))


@pytest.fixture(scope="module")
def model_path(spec: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_model(tmp_path_factory.mktemp("text") / "text.onnx", spec)


@pytest.fixture(scope="module")
def model(model_path: Path) -> LoadedModel:
    return LoadedModel.load(model_path, device="cpu", max_batch_size=8)


def _ids(spec: dict, texts: list[str]) -> np.ndarray:
    return apply_text(spec, texts).astype(np.int64)


def _decode(model: LoadedModel, tensor: dict, binary: bytes = b"") -> np.ndarray:
    header = json.dumps({"inputs": [{"name": "input", **tensor}]}).encode()
    request = decode_infer_request(header + binary, model.signature, str(len(header)) if binary else None)
    return request.inputs["input"]


# ------------------------------------------------------------------------------------------ decoding


def test_strings_json_and_binary_become_padded_ids(model: LoadedModel, spec: dict) -> None:
    want = _ids(spec, TEXTS)
    assert want.shape == (len(TEXTS), MAX_LENGTH) and want[1, 1:].tolist() == [0] * (MAX_LENGTH - 1)
    flat = _decode(model, {"shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS})
    nested = _decode(model, {"shape": [len(TEXTS), 1], "datatype": "BYTES", "data": [[t] for t in TEXTS]})
    raw = serialize_byte_tensor(np.array(TEXTS, dtype=object)).item()  # what tritonclient sends
    binary = _decode(model, {"shape": [len(TEXTS)], "datatype": "BYTES",
                             "parameters": {"binary_data_size": len(raw)}}, raw)
    for got in (flat, nested, binary):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_token_ids_any_integer_type_padded_to_max_length(model: LoadedModel, spec: dict) -> None:
    ids = _ids(spec, TEXTS[:3])
    short = ids[:, :3]
    for datatype, dtype in (("INT32", np.int32), ("INT64", np.int64), ("UINT8", np.uint8)):
        got = _decode(model, {"shape": [3, 3], "datatype": datatype, "data": short.tolist()})
        assert got.dtype == np.int64 and got.shape == (3, MAX_LENGTH)
        np.testing.assert_array_equal(got[:, :3], short)
        assert (got[:, 3:] == spec["pad_id"]).all()
        raw = short.astype(dtype).tobytes()
        binary = _decode(model, {"shape": [3, 3], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}},
                         raw)
        np.testing.assert_array_equal(binary, got)
    full = _decode(model, {"shape": [3, MAX_LENGTH], "datatype": "INT64", "data": ids.ravel().tolist()})
    np.testing.assert_array_equal(full, ids)


def _binary_bytes(raw: bytes, shape: list[int]) -> tuple[dict, bytes]:
    return {"shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}, raw


def _one(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


BAD = {
    "not utf-8": (_binary_bytes(_one(b"\xff\xfegood"), [1]), "not valid UTF-8"),
    "cut in the length": (_binary_bytes(b"\x03\x00", [1]), "cut off"),
    "runs past the size": (_binary_bytes(b"\x09\x00\x00\x00abc", [1]), "runs past"),
    "more strings than shape": (_binary_bytes(_one(b"a") + _one(b"b"), [1]), "more than the 1 strings"),
    "fewer strings than shape": (_binary_bytes(_one(b"a"), [2]), "holds 1 strings, shape needs 2"),
    "size over body": (({"shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 50}}, _one(b"a")),
                       "only 5 bytes"),
    "size not an int": (({"shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": "5"}}, _one(b"a")),
                        "binary_data_size must be"),
    "shape [N, 2]": (({"shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}, b""), "shape [N] or [N, 1]"),
    "shape [N, 1, 1]": (({"shape": [1, 1, 1], "datatype": "BYTES", "data": ["a"]}, b""), "shape [N] or [N, 1]"),
    "shape not a list": (({"shape": 1, "datatype": "BYTES", "data": ["a"]}, b""), "shape [N] or [N, 1]"),
    "zero strings": (({"shape": [0], "datatype": "BYTES", "data": []}, b""), "at least 1"),
    "too many strings": (({"shape": [9], "datatype": "BYTES", "data": ["a"] * 9}, b""), "over max_batch_size 8"),
    "count mismatch": (({"shape": [2], "datatype": "BYTES", "data": ["a", "b", "c"]}, b""), "has 3 strings"),
    "number in strings": (({"shape": [2], "datatype": "BYTES", "data": ["a", 7]}, b""), "only strings"),
    "data not a list": (({"shape": [1], "datatype": "BYTES", "data": "a"}, b""), "list of strings"),
    "lone surrogate": (({"shape": [1], "datatype": "BYTES", "data": ["\ud800"]}, b""), "not valid Unicode"),
    "id over vocabulary": (({"shape": [1, 2], "datatype": "INT64", "data": [1, 100000]}, b""), "outside the vocab"),
    "negative id": (({"shape": [1, 2], "datatype": "INT32", "data": [-1, 2]}, b""), "outside the vocabulary"),
    "longer than max_length": (({"shape": [1, MAX_LENGTH + 1], "datatype": "INT64", "data": [2] * (MAX_LENGTH + 1)},
                                b""), f"1 to {MAX_LENGTH}"),
    "zero length": (({"shape": [1, 0], "datatype": "INT64", "data": []}, b""), f"1 to {MAX_LENGTH}"),
    "floats for ids": (({"shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}, b""), "send INT32 or INT64"),
    "bool": (({"shape": [1, 2], "datatype": "BOOL", "data": [True, False]}, b""), "not supported"),
    "ids rank 1": (({"shape": [2], "datatype": "INT64", "data": [1, 2]}, b""), "does not match"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_text_inputs_are_400_with_one_message(model: LoadedModel, case: str) -> None:
    (tensor, binary), message = BAD[case]
    with pytest.raises(RequestError) as refused:
        _decode(model, tensor, binary)
    assert refused.value.status_code == 400 and message in refused.value.message, refused.value.message
    assert "\n" not in refused.value.message


@settings(max_examples=80, deadline=None)
@given(shape=st.lists(st.integers(-1, 3), max_size=3), datatype=st.sampled_from(["BYTES", "INT64", "INT8", "FP16"]),
       data=st.lists(st.text(max_size=6) | st.integers(-5, 200) | st.binary(max_size=3).map(repr), max_size=7),
       raw=st.none() | st.binary(max_size=24))
def test_fuzz_text_decoding_never_fails_otherwise(model: LoadedModel, shape: list[int], datatype: str, data: list,
                                                  raw: bytes | None) -> None:
    tensor = {"shape": shape, "datatype": datatype}
    tensor |= {"data": data} if raw is None else {"parameters": {"binary_data_size": len(raw)}}
    try:
        ids = _decode(model, tensor, raw or b"")
    except RequestError as e:
        assert e.status_code == 400
    else:
        assert ids.dtype == np.int64 and ids.shape[1:] == (MAX_LENGTH,) and ids.min() >= 0


@pytest.fixture(scope="module")
def text_client(model: LoadedModel):
    with TestClient(create_app(model)) as client:
        yield client


@st.composite
def _text_requests(draw: st.DrawFn, form: str) -> tuple[bytes, dict[str, str]]:
    """Strings as JSON BYTES or Triton's binary BYTES (lengths right or off), or token ids, through the app."""
    texts = draw(st.lists(st.text(max_size=12) | st.sampled_from(TRAIN), min_size=1, max_size=9))
    shape = draw(st.sampled_from([[len(texts)]] * 6 + [[len(texts), 1]] * 2 + [[len(texts), 2], [len(texts) + 1]]))
    if form == "json":
        data = draw(st.sampled_from([texts, [[t] for t in texts], texts + [1]]))
        body = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "BYTES", "data": data}]})
        return body.encode(), {}
    if form == "ids":
        length = draw(st.sampled_from(list(range(1, MAX_LENGTH + 1)) * 3 + [0, MAX_LENGTH + 1]))
        value = st.integers(0, 9) | st.sampled_from([-1, 10**6]) if draw(st.integers(0, 3)) == 0 else st.integers(0, 9)
        row = st.lists(value, min_size=length, max_size=length)
        ids = draw(st.lists(row, min_size=1, max_size=8 if draw(st.integers(0, 3)) else 9))
        body = json.dumps({"inputs": [{"name": "input", "shape": [len(ids), length], "datatype": "INT64",
                                       "data": ids}]})
        return body.encode(), {}
    raw = b"".join(struct.pack("<I", len(t.encode("utf-8", "surrogatepass"))) + t.encode("utf-8", "surrogatepass")
                   for t in texts)
    raw = draw(st.sampled_from([raw] * 8 + [raw[:-1], raw + b"\0", b"\xff\xff\xff\x7f" + raw]))
    size = draw(st.sampled_from([len(raw)] * 8 + [len(raw) + 2, max(len(raw) - 3, 0)]))
    header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "BYTES",
                                     "parameters": {"binary_data_size": size}}],
                         "outputs": [{"name": "label"}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


TEXT_FUZZ_OK: dict[str, int] = {}


@pytest.mark.parametrize("form", ["json", "binary", "ids"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_text_infer_through_the_app_never_5xx(text_client: TestClient, form: str, data: st.DataObject) -> None:
    body, headers = data.draw(_text_requests(form))
    r = text_client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text, body[:200])  # a 500 is a server bug
    if r.status_code == 200:
        TEXT_FUZZ_OK[form] = TEXT_FUZZ_OK.get(form, 0) + 1
    else:
        assert r.status_code == 400 and r.json()["error"]


def test_text_fuzz_reached_every_form() -> None:
    assert all(TEXT_FUZZ_OK.get(form, 0) >= 5 for form in ("json", "binary", "ids")), TEXT_FUZZ_OK


# ------------------------------------------------------------------------------------------ the model and the app


def test_float_model_still_refuses_strings_and_bad_metadata_is_a_usage_error(tmp_path: Path, spec: dict) -> None:
    from tests.unit.serving.tiny_models import classifier

    floats = LoadedModel.load(classifier(tmp_path / "cls.onnx"), device="cpu")
    assert floats.text is None
    with pytest.raises(RequestError, match="BYTES is not supported"):
        decode_infer_request(json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                                     "data": ["a"]}]}).encode(), floats.signature)
    broken = text_model(tmp_path / "broken.onnx", spec, metadata={"max_length": 3})
    with pytest.raises(UsageError, match="text_preprocessing"):
        LoadedModel.load(broken, device="cpu")


def test_int32_model_takes_ids_and_strings(tmp_path: Path, spec: dict) -> None:
    int32 = LoadedModel.load(text_model(tmp_path / "int32.onnx", spec, dtype=TensorProto.INT32), device="cpu")
    got = _decode(int32, {"shape": [2], "datatype": "BYTES", "data": TEXTS[:2]})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _ids(spec, TEXTS[:2]))


def test_integer_model_without_tokenizer_takes_ids_only(tmp_path: Path, spec: dict) -> None:
    plain = LoadedModel.load(text_model(tmp_path / "plain.onnx", spec, dtype=TensorProto.INT32, metadata=None),
                             device="cpu")
    assert plain.text is None and "text_input" not in plain.metadata_json()["parameters"]
    got = _decode(plain, {"shape": [1, 2], "datatype": "INT64", "data": [3, 4]})
    assert got.dtype == np.int32 and got.tolist() == [[3, 4]]  # not padded: no max_length known
    with pytest.raises(RequestError, match="out of range for the model's INT32"):
        _decode(plain, {"shape": [1, 1], "datatype": "INT64", "data": [2**40]})
    with pytest.raises(RequestError, match="BYTES is not supported.*integer ids"):
        _decode(plain, {"shape": [1], "datatype": "BYTES", "data": ["a"]})


def test_app_metadata_and_infer_both_forms(model: LoadedModel, model_path: Path, spec: dict) -> None:
    ids = _ids(spec, TEXTS)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": ids})[1]
    expected_short = session.run(None, {"input": ids[:, :4]})[1]  # unpadded: the server pads, same answer
    with TestClient(create_app(model)) as client:
        meta = client.get(f"/v2/models/{NAME}").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "INT64", "shape": [-1, -1]}]  # the real tensor
        text = meta["parameters"]["text_input"]
        assert text["strings"]["datatype"] == "BYTES" and text["token_ids"] == {
            "datatype": "INT64", "shape": [-1, -1], "max_length": MAX_LENGTH, "vocab_size": spec["vocab_size"],
            "pad_id": 0}
        config = client.get(f"/v2/models/{NAME}/config").json()
        assert json.loads(config["parameters"]["text_input"]["string_value"]) == text

        url = f"/v2/models/{NAME}/infer"
        strings = client.post(url, json={"inputs": [{"name": "input", "shape": [len(TEXTS)], "datatype": "BYTES",
                                                     "data": TEXTS}], "outputs": [{"name": "probabilities"}]})
        short = client.post(url, json={"inputs": [{"name": "input", "shape": [len(TEXTS), 4], "datatype": "INT32",
                                                   "data": ids[:, :4].tolist()}]})
        raw = serialize_byte_tensor(np.array(TEXTS, dtype=object)).item()
        header = json.dumps({"inputs": [{"name": "input", "shape": [len(TEXTS)], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "outputs": [{"name": "probabilities"}, {"name": "label"}]}).encode()
        binary = client.post(url, content=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
        bad = client.post(url, content=header + raw[:-1] + b"\xff",
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert strings.status_code == 200 and binary.status_code == 200, (strings.text, binary.text)
    np.testing.assert_allclose(np.array(strings.json()["outputs"][0]["data"]).reshape(expected.shape), expected,
                               rtol=1e-6)
    probabilities, label = binary.json()["outputs"]
    np.testing.assert_allclose(np.array(probabilities["data"]).reshape(expected.shape), expected, rtol=1e-6)
    assert label["data"] == [["neg", "pos"][i] for i in expected.argmax(axis=1)]
    assert short.status_code == 200, short.text
    np.testing.assert_allclose(np.array(short.json()["outputs"][1]["data"]).reshape(expected.shape), expected_short,
                               rtol=1e-6)
    assert bad.status_code == 400 and "not valid UTF-8" in bad.json()["error"]


def test_strings_and_short_ids_are_merged_into_one_batch(model: LoadedModel, model_path: Path, spec: dict) -> None:
    import asyncio

    from bigmodel_cli.serving.batcher import DynamicBatcher
    from bigmodel_cli.serving.metrics import ServerMetrics

    assert model.batchable
    ids = _ids(spec, TEXTS[:2])
    strings = _decode(model, {"shape": [3], "datatype": "BYTES", "data": TEXTS[2:]})
    short = _decode(model, {"shape": [2, 2], "datatype": "INT64", "data": ids[:, :2].tolist()})
    batcher = DynamicBatcher(model, ServerMetrics(model.name, 8), max_batch_size=8, max_queue_delay_ms=50)

    async def main() -> list[dict[str, np.ndarray]]:
        try:
            return await asyncio.gather(batcher.infer({"input": strings}), batcher.infer({"input": short}))
        finally:
            await batcher.stop()

    got_strings, got_short = asyncio.run(main())
    runs = next(s.value for m in batcher.metrics.registry.collect() if m.name == "bigmodel_batch_requests"
                for s in m.samples if s.name.endswith("_count"))
    assert runs == 1  # one session.run for both requests: same padded shape
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got_strings["probabilities"], session.run(None, {"input": _ids(spec, TEXTS[2:])})[1],
                               rtol=1e-6)
    np.testing.assert_allclose(got_short["probabilities"], session.run(None, {"input": ids[:, :2]})[1], rtol=1e-6)
