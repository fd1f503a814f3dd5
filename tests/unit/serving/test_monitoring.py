"""Monitoring a served model, in-process: Triton's statistics extension (checked against Triton's own protobuf
schema), prediction metrics, drift against the export's reference profile (PSI gauges and warnings), sampled
payload logging; and the profile `bigmodel export` writes for a trained tabular run.

The real server with tritonclient's `get_inference_statistics()` is tested in tests/cli/test_serve.py.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bigmodel_cli.errors import UsageError
from bigmodel_cli.export import profile as reference
from bigmodel_cli.serving import monitor as monitors
from bigmodel_cli.serving.app import create_app
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.payloads import PayloadLog
from tests.unit.serving.tiny_models import CLS, REG, classifier, regressor

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

FEATURES = ["w", "x", "y", "z"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitor-models")
    return {"cls": classifier(root / "cls.onnx"), "reg": regressor(root / "reg.onnx")}


@pytest.fixture(scope="module")
def cls_profile(models: dict[str, Path]) -> dict:
    val = np.random.default_rng(0).normal(size=(400, 4)).astype(np.float32)
    return reference.build(models["cls"], val, "classification", ["a", "b", "c"], FEATURES)


def _infer(client: TestClient, x: np.ndarray, name: str = CLS, **extra) -> dict:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}
    r = client.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _metrics(client: TestClient) -> dict[str, float]:
    """'name{labels}' -> value of every sample on /metrics."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _series(metrics: dict[str, float], name: str) -> dict[str, float]:
    """label value of `name`'s samples -> value (the label other than model), e.g. feature -> PSI."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
            labels.pop("model", None)
            out[next(iter(labels.values()), "")] = value
    return out


# ------------------------------------------------------------------------------------------ statistics


def test_stats_in_tritons_schema_count_successes_failures_and_phases(models: dict[str, Path]) -> None:
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2

    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=8)
    with TestClient(create_app(model)) as client:
        rng = np.random.default_rng(1)
        for rows in (2, 3, 1):
            _infer(client, rng.normal(size=(rows, 4)).astype(np.float32))
        bad = client.post(f"/v2/models/{CLS}/infer", json={"inputs": [{"name": "input", "shape": [1, 5],
                                                                       "datatype": "FP32", "data": [0.0] * 5}]})
        assert bad.status_code == 400
        assert client.post("/v2/models/other/infer", json={}).status_code == 404  # not this model's failure

        doc = client.get(f"/v2/models/{CLS}/stats").json()
        assert client.get(f"/v2/models/{CLS}/versions/1/stats").json()["model_stats"][0]["inference_count"] == 6
        assert client.get("/v2/models/stats").json()["model_stats"][0]["name"] == CLS
        assert client.get("/v2/models/other/stats").status_code == 404
        assert client.get(f"/v2/models/{CLS}/versions/2/stats").status_code == 404

    parsed = json_format.ParseDict(doc, service_pb2.ModelStatisticsResponse())  # Triton's schema, no unknown field
    assert len(parsed.model_stats) == 1
    stats = doc["model_stats"][0]
    assert (stats["name"], stats["version"]) == (CLS, "1")
    phases = stats["inference_stats"]
    assert phases["success"]["count"] == 3 and phases["fail"]["count"] == 1
    assert stats["inference_count"] == 6 and 1 <= stats["execution_count"] <= 3
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] == 3, phase
    assert phases["compute_infer"]["ns"] > 0 and phases["compute_input"]["ns"] > 0
    inside = sum(phases[p]["ns"] for p in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert phases["success"]["ns"] >= inside  # a request's phases happen within its time in the server
    batches = stats["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == stats["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == 6
    assert stats["last_inference"] > 1.7e12  # milliseconds since the epoch


# ------------------------------------------------------------------------------------------ predictions


def test_predicted_classes_and_confidence_are_what_the_model_answered(models: dict[str, Path]) -> None:
    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=32)
    x = np.random.default_rng(2).normal(size=(64, 4)).astype(np.float32)
    session = ort.InferenceSession(str(models["cls"]), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"input": x})[0]
    with TestClient(create_app(model)) as client:
        for part in np.split(x, 4):
            _infer(client, part)
        metrics = _metrics(client)
    counts = _series(metrics, "bigmodel_predicted_class_total")
    want = np.bincount(probabilities.argmax(1), minlength=3)
    assert counts == {"a": want[0], "b": want[1], "c": want[2]}
    assert metrics[f'bigmodel_confidence_count{{model="{CLS}"}}'] == 64
    assert metrics[f'bigmodel_confidence_sum{{model="{CLS}"}}'] == pytest.approx(probabilities.max(1).sum(), rel=1e-5)
    below_half = (probabilities.max(1) <= 0.5).sum()
    assert metrics[f'bigmodel_confidence_bucket{{le="0.5",model="{CLS}"}}'] == below_half
    means = _series(metrics, "bigmodel_input_feature_mean")
    assert list(means) == ["f0", "f1", "f2", "f3"]  # no profile: features by position
    assert means["f2"] == pytest.approx(x[:, 2].mean(), abs=1e-5)
    assert not _series(metrics, "bigmodel_feature_drift_psi")  # nothing to compare with


def test_drift_psi_gauges_and_one_warning_per_feature_that_drifts(models: dict[str, Path], cls_profile: dict,
                                                                  capsys: pytest.CaptureFixture) -> None:
    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=32)
    rng = np.random.default_rng(3)
    with TestClient(create_app(model, profile=cls_profile, drift_threshold=0.2)) as client:
        for _ in range(20):  # 640 rows like the validation rows
            _infer(client, rng.normal(size=(32, 4)).astype(np.float32))
        steady = _metrics(client)
        assert capsys.readouterr().err == ""
        for _ in range(20):  # 640 rows where feature x moved by 3 standard deviations
            x = rng.normal(size=(32, 4)).astype(np.float32)
            x[:, 1] += 3
            _infer(client, x)
        drifted = _metrics(client)
    assert steady[f'bigmodel_drift_window_rows{{model="{CLS}"}}'] == 640
    before, after = _series(steady, "bigmodel_feature_drift_psi"), _series(drifted, "bigmodel_feature_drift_psi")
    assert set(before) == set(FEATURES) and max(before.values()) < 0.1
    assert after["x"] > 1.0 and max(after[f] for f in ("w", "y", "z")) < 0.1
    assert set(_series(drifted, "bigmodel_prediction_drift_psi")) == {"predicted_class", "confidence"}
    err = capsys.readouterr().err
    assert err.count("drift: feature x PSI") == 1  # once, not every check
    assert "feature w" not in err and "feature y" not in err and "serve.drift_threshold 0.2" in err


def test_drift_is_checked_as_batches_run_without_a_scrape(models: dict[str, Path], cls_profile: dict,
                                                          capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitors, "CHECK_INTERVAL_S", 0.0)  # checked every 100 rows, not at most once a second
    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=32)
    monitor = monitors.for_model(model, cls_profile)
    x = np.random.default_rng(8).normal(size=(640, 4)).astype(np.float32)
    x[:, 3] -= 4
    for part in np.split(x, 20):
        monitor.observe({"input": part}, model.run_batch({"input": part}))
    err = capsys.readouterr().err
    assert err.count("drift: feature z PSI") == 1 and "feature w" not in err


def test_regression_histogram_uses_the_profile_deciles(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(4)
    val = rng.normal(size=(300, 2, 3)).astype(np.float32)
    profile = reference.build(models["reg"], val, "regression")
    assert len(profile["prediction"]["cuts"]) == 9 and "features" not in profile  # [2, 3] inputs: not a table
    model = LoadedModel.load(models["reg"], device="cpu", max_batch_size=32)
    with TestClient(create_app(model, profile=profile)) as client:
        for _ in range(20):
            _infer(client, rng.normal(size=(32, 2, 3)).astype(np.float32), name=REG)
        metrics = _metrics(client)
    buckets = [k for k in metrics if k.startswith("bigmodel_prediction_bucket")]
    assert len(buckets) == 10 and metrics[f'bigmodel_prediction_count{{model="{REG}"}}'] == 640
    assert _series(metrics, "bigmodel_prediction_drift_psi")["prediction"] < 0.1


def test_monitoring_off_and_a_profile_of_another_model(models: dict[str, Path], cls_profile: dict,
                                                       capsys: pytest.CaptureFixture) -> None:
    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=32)
    x = np.random.default_rng(5).normal(size=(8, 4)).astype(np.float32)
    with TestClient(create_app(model, monitoring=False, profile=cls_profile)) as client:
        _infer(client, x)
        text = client.get("/metrics").text
        assert client.get(f"/v2/models/{CLS}/stats").json()["model_stats"][0]["inference_count"] == 8
    assert "bigmodel_predicted_class" not in text and "drift" not in text

    stale = {**cls_profile, "model_sha256": "0" * 64}
    with TestClient(create_app(model, profile=stale)) as client:
        _infer(client, x)
        metrics = _metrics(client)
    assert "another model file" in capsys.readouterr().err
    assert _series(metrics, "bigmodel_predicted_class_total") and not _series(metrics, "bigmodel_feature_drift_psi")


def test_profile_binning_and_psi() -> None:
    cuts = np.array([0.0, 1.0])
    assert reference.bins(np.array([-1.0, 0.0, 0.5, 1.0, 7.0]), cuts).tolist() == [0, 1, 1, 2, 2]
    matrix = reference.padded_cuts([[0.0, 1.0], [5.0]])
    assert reference.bin_counts(np.array([[0.5, 4.0], [2.0, 6.0]]), matrix).tolist() == [[0, 1, 1], [1, 1, 0]]
    assert reference.psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert reference.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5))
    assert reference.profile_path(Path("r/model.onnx")) == Path("r/profile.json")
    assert reference.profile_path(Path("r/model.int8.onnx")) == Path("r/profile.int8.json")
    assert reference.profile_path(Path("r/digits.onnx")) == Path("r/digits.profile.json")


# ------------------------------------------------------------------------------------------ payloads


def test_sampled_payload_log_has_tensors_and_no_credentials(models: dict[str, Path], tmp_path: Path) -> None:
    model = LoadedModel.load(models["cls"], device="cpu", max_batch_size=8)
    log = tmp_path / "payloads.jsonl"
    payloads = PayloadLog(1.0, log, model=model.name, version=model.version)
    x = np.random.default_rng(6).normal(size=(2, 4)).astype(np.float32)
    key = {"Authorization": "Bearer k3y-that-must-not-be-logged"}
    with TestClient(create_app(model, api_key="k3y-that-must-not-be-logged", payloads=payloads), headers=key) as c:
        answer = _infer(c, x, id="req-7", outputs=[{"name": "probabilities"}, {"name": "label"}])
        assert c.post(f"/v2/models/{CLS}/infer", json={"inputs": []}).status_code == 400  # refused: not logged
    text = log.read_text()  # the app's shutdown wrote what was queued
    assert "k3y" not in text and "Bearer" not in text and "127.0.0.1" not in text and "testclient" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["id"] == "req-7" and line["model"] == CLS
    assert np.allclose(line["inputs"][0]["data"], x.ravel()) and line["inputs"][0]["shape"] == [2, 4]
    assert [o["name"] for o in line["outputs"]] == ["probabilities", "label"]
    assert line["outputs"][1]["data"] == answer["outputs"][1]["data"]

    sampled = PayloadLog(0.1, tmp_path / "sampled.jsonl", model="m", version="1", seed=0)
    assert 50 < sum(sampled.sampled() for _ in range(1000)) < 150
    sampled.close()
    with pytest.raises(UsageError, match="--payload-log"):
        PayloadLog(0.5, tmp_path / "no" / "such" / "dir.jsonl", model="m", version="1")


# ------------------------------------------------------------------------------------------ a trained table run


@pytest.mark.slow  # the churn run trains and exports (about 20 s on 2 busy cores; shared with test_raw_inputs)
def test_export_writes_the_profile_serve_compares_with(churn_run: Path, capsys: pytest.CaptureFixture) -> None:
    from bigmodel_cli.run import load_run, rows

    run = load_run(churn_run)
    profile = reference.read(churn_run / "profile.json")
    val, _ = rows(run, "val")
    features = run.manifest["features"]
    assert profile["task"] == "classification" and profile["rows"] == len(val) and profile["split"] == "val"
    assert profile["model_sha256"] == reference.file_sha256(churn_run / "model.onnx")
    assert profile["predicted_class"]["names"] == run.manifest["classes"]
    assert sum(profile["predicted_class"]["shares"]) == pytest.approx(1.0)
    assert sum(profile["confidence"]["shares"]) == pytest.approx(1.0)
    assert profile["features"]["names"] == features and "plan=pro" in features
    first = np.asarray(val[:, 0], np.float64)
    assert profile["features"]["cuts"][0] == pytest.approx(np.unique(np.quantile(first, reference.DECILES)).tolist())

    model = LoadedModel.load(churn_run / "model.onnx", device="cpu", max_batch_size=64)
    monitor = monitors.for_model(model, profile)
    assert monitor.features == features
    x = np.asarray(val, np.float32)
    shifted = x.copy()
    shifted[:, 1] *= 100  # monthly charges in cents
    with TestClient(create_app(model, profile=profile)) as client:
        for _ in range(600 // len(x) + 1):
            for i in range(0, len(x), 32):
                _infer(client, x[i:i + 32], name=model.name)
        steady = _series(_metrics(client), "bigmodel_feature_drift_psi")
        assert capsys.readouterr().err == ""
        for _ in range(1000 // len(x) + 1):
            for i in range(0, len(x), 32):
                _infer(client, shifted[i:i + 32], name=model.name)
        drifted = _series(_metrics(client), "bigmodel_feature_drift_psi")
    assert max(steady.values()) < 0.05  # the validation rows again: no drift
    assert drifted["monthly_charges"] > 1.0 and drifted["tenure_months"] < 0.05
    assert "drift: feature monthly_charges PSI" in capsys.readouterr().err
