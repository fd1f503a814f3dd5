"""`bigmodel serve` as users run it: a real server on a free loopback port.

Stock `tritonclient[http]` (binary tensors, its default, and JSON) against an image model (the trained
digits run, exported) and a tabular one; 200 concurrent requests of different sizes merged into batches;
SIGTERM while 50 requests are in flight; recipe `serve` section vs flags; usage errors (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tests.unit.serving.tiny_models import CLS, classifier, slow_classifier

KEY = "s3cret-key"


class Server:
    """A `bigmodel serve` process; its stderr lines are collected (banner, access log)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if k != "BIGMODEL_DEBUG"} | {"CI": "1"} | (env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "serve", *args], env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_url()

    def _pump(self) -> None:  # keeps draining stderr so the server never blocks on a full pipe
        for line in self.proc.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def _wait_for_url(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if match:
                return f"127.0.0.1:{match.group(1)}"
        self.proc.kill()
        raise AssertionError(f"no URL line from the server; stderr: {''.join(self.lines)}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.url}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _local(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x.astype(np.float32)}), strict=True))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory):
    path = classifier(tmp_path_factory.mktemp("serve-tabular") / "cls.onnx")
    server = Server(str(path), "--port", "0", "--device", "cpu", "--max-queue-delay-ms", "5",
                    "--max-batch-size", "16")
    yield path, server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def image_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained digits run, exported (the shared run stays untouched)."""
    from bigmodel_cli.export.onnx_export import export_run

    run = tmp_path_factory.mktemp("serve-image") / "run"
    shutil.copytree(digits_run, run)
    export_run(run)
    return run


@pytest.fixture(scope="module")
def image(image_run: Path):
    server = Server(str(image_run), "--port", "0", "--device", "cpu", "--api-key-env", "SERVE_TEST_KEY",
                    env={"SERVE_TEST_KEY": KEY})
    yield image_run / "model.onnx", server
    assert server.stop() == 0


# ------------------------------------------------------------------------------------------ tritonclient


@pytest.mark.parametrize("kind", ["tabular", "image"])
def test_tritonclient_binary_and_json(kind: str, request: pytest.FixtureRequest) -> None:
    import tritonclient.http as httpclient

    path, server = request.getfixturevalue(kind)
    auth = {"Authorization": f"Bearer {KEY}"} if kind == "image" else {}
    name = CLS if kind == "tabular" else "digits-cnn"
    rows = np.random.default_rng(3)
    x = rows.normal(size=(5, 4)) if kind == "tabular" else rows.integers(0, 17, size=(5, 1, 8, 8))
    x = x.astype(np.float32)
    want = _local(path, x)
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(name, headers=dict(auth))  # fresh dicts: infer() writes into its headers
        meta = client.get_model_metadata(name, headers=dict(auth))
        assert meta["name"] == name and meta["inputs"][0]["shape"] == [-1, *x.shape[1:]]
        assert meta["parameters"]["task"] == "classification" and len(meta["parameters"]["class_names"]) >= 3
        assert client.get_model_config(name, headers=dict(auth))["max_batch_size"] >= 1

        binary = httpclient.InferInput("input", list(x.shape), "FP32")
        binary.set_data_from_numpy(x)  # the client's default: binary tensor data, outputs binary too
        result = client.infer(name, [binary], headers=dict(auth), request_id="bin-1")
        assert result.get_response()["id"] == "bin-1"
        assert np.allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-5)
        assert np.allclose(result.as_numpy("logits"), want["logits"], atol=1e-4)

        as_json = httpclient.InferInput("input", list(x.shape), "FP32")
        as_json.set_data_from_numpy(x, binary_data=False)
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False),
                   httpclient.InferRequestedOutput("label", binary_data=False)]
        result = client.infer(name, [as_json], outputs=outputs, headers=dict(auth))
        assert np.allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-5)
        classes = meta["parameters"]["class_names"]
        expected_labels = [classes[i] for i in want["probabilities"].argmax(1)]
        assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == expected_labels

        result = client.infer(name, [binary], outputs=[httpclient.InferRequestedOutput("label")],
                              headers=dict(auth))
        assert [v.decode() for v in result.as_numpy("label")] == expected_labels  # BYTES as binary data
    finally:
        client.close()


def test_api_key_guards_all_but_health(image) -> None:
    _, server = image
    assert server.get("/v2/health/ready")[0] == 200
    assert server.get("/v2/models/digits-cnn")[0] == 401
    assert server.get("/metrics")[0] == 401
    status, body = server.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and b"bigmodel_requests_total" in body


# ------------------------------------------------------------------------------------------ batching


async def _post_all(url: str, bodies: list[tuple[bytes, dict[str, str]]]) -> list[tuple[int, bytes, dict]]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict]:
            async with session.post(f"http://{url}/v2/models/{CLS}/infer", data=body, headers=headers) as r:
                return r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()}

        return await asyncio.gather(*(one(body, headers) for body, headers in bodies))


def _request(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    if not binary:
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
                "outputs": [{"name": "probabilities"}]}
        return json.dumps(body).encode(), {}
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _probabilities(body: bytes, headers: dict) -> np.ndarray:
    size = headers.get("inference-header-content-length")
    if size is None:
        out = json.loads(body)["outputs"][0]
        return np.reshape(out["data"], out["shape"])
    out = json.loads(body[:int(size)])["outputs"][0]
    return np.frombuffer(body[int(size):], np.float32).reshape(out["shape"])


def _metric(server: Server, name: str, labels: str = "") -> float:
    """The value of `name` on the server's /metrics (the first series whose labels contain `labels`)."""
    text = server.get("/metrics")[1].decode()
    match = re.search(rf"^{name}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} {labels} not in /metrics"
    return float(match.group(1))


def test_200_concurrent_requests_each_get_their_rows(tabular) -> None:
    path, server = tabular
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(int(rng.integers(1, 9)), 4)).astype(np.float32) for _ in range(200)]
    runs_before = _metric(server, "bigmodel_batch_requests_count")
    answers = asyncio.run(_post_all(server.url, [_request(x, binary=i % 2 == 0) for i, x in enumerate(inputs)]))
    for x, (status, body, headers) in zip(inputs, answers, strict=True):
        assert status == 200, body
        assert np.allclose(_probabilities(body, headers), _local(path, x)["probabilities"], atol=1e-6)
    runs = _metric(server, "bigmodel_batch_requests_count") - runs_before
    assert runs < 150, f"{runs} session.runs for 200 concurrent requests: batching did not merge them"
    assert _metric(server, "bigmodel_inflight_requests") == 0


# ------------------------------------------------------------------------------------------ shutdown


def test_sigterm_under_load_finishes_in_flight_requests(tmp_path: Path) -> None:
    path = slow_classifier(tmp_path / "slow.onnx", size=800)
    server = Server(str(path), "--port", "0", "--device", "cpu", "--max-batch-size", "1", "--threads", "1",
                    "--grace-seconds", "60", "--model-name", CLS)
    x = np.ones((1, 4), np.float32)
    results: list[tuple[int, bytes, dict]] = []
    client = threading.Thread(target=lambda: results.extend(asyncio.run(_post_all(
        server.url, [_request(x, binary=True)] * 50))))
    try:
        client.start()
        deadline = time.monotonic() + 30
        while (in_flight := _metric(server, "bigmodel_inflight_requests")) + _metric(
                server, "bigmodel_requests_total", 'outcome="success"') < 50:  # until all 50 have reached the server
            assert time.monotonic() < deadline, "the 50 requests never reached the server"
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        assert in_flight >= 40  # ~50 ms per request, one at a time: nearly all still waiting for their turn
        time.sleep(0.2)
        with pytest.raises(OSError), socket.create_connection(tuple(server.url.rsplit(":", 1)), timeout=2):
            pass  # no longer accepting
        client.join(timeout=60)
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.stop()
    assert [status for status, _, _ in results] == [200] * 50
    want = _local(path, x)["probabilities"]
    assert all(np.allclose(_probabilities(body, headers), want, atol=1e-6) for _, body, headers in results)
    access = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert sum(1 for a in access if a["path"].endswith("/infer") and a["status"] == 200) == 50
    assert "server stopped" in server.lines[-1]


# ------------------------------------------------------------------------------------------ settings


def test_recipe_serve_section_then_flags(image_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["serve"] = {**recipe.get("serve", {}), "port": 0, "max_batch_size": 4, "max_body_mb": 0.001}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    server = Server(str(run), "--device", "cpu", "--no-access-log")  # port 0 from the recipe
    try:
        config = json.loads(server.get("/v2/models/digits-cnn/config")[1])
        assert config["max_batch_size"] == 4
        big = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                      "data": [1.0] * 64}], "id": "x" * 2000}).encode()
        request = urllib.request.Request(f"http://{server.url}/v2/models/digits-cnn/infer", data=big)
        with pytest.raises(urllib.error.HTTPError) as too_large:
            urllib.request.urlopen(request, timeout=30)
        assert too_large.value.code == 413 and "limit" in json.loads(too_large.value.read())["error"]
    finally:
        assert server.stop() == 0
    assert not any(line.startswith("{") for line in server.lines)  # --no-access-log

    server = Server(str(run), "--device", "cpu", "--max-batch-size", "8", "--port", "0")
    try:
        assert json.loads(server.get("/v2/models/digits-cnn/config")[1])["max_batch_size"] == 8
    finally:
        assert server.stop() == 0


def _run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    full_env = {k: v for k, v in os.environ.items() if k != "BIGMODEL_DEBUG"} | (env or {})
    proc = subprocess.run([sys.executable, "-m", "bigmodel_cli", "serve", *args], env=full_env,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


USAGE_ERRORS = {
    "missing file": (["/nonexistent.onnx"], "model not found"),
    "run dir without model": (["{tmp}"], "bigmodel export"),
    "not onnx": (["{tmp}/broken.onnx"], "cannot load"),
    "port in use": (["{cls}", "--port", "{busy}"], "address already in use"),
    "unset key": (["{cls}", "--api-key-env", "TEST_SERVE_UNSET_KEY"], "TEST_SERVE_UNSET_KEY"),
    "max queue": (["{cls}", "--max-queue", "0"], "--max-queue 0"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_with_one_line(case: str, tabular, tmp_path: Path) -> None:
    args, message = USAGE_ERRORS[case]
    (tmp_path / "broken.onnx").write_text("garbage")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"tmp": str(tmp_path), "cls": str(tabular[0]), "busy": str(busy.getsockname()[1])}
        code, err = _run_cli(*[a.format(**values) for a in args], env={"TEST_SERVE_UNSET_KEY": ""})
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
