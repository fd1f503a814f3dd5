"""`bigmodel serve` as users run it: a real server on a free loopback port.

Stock `tritonclient[http]` (binary tensors, its default, and JSON) against an image model (the trained
digits run, exported) and a tabular one; 200 concurrent requests of different sizes merged into batches;
SIGTERM while 50 requests are in flight, and with a stalled upload; the connection guards against hostile
clients (raw sockets: slow heads and bodies, endless chunked bodies, idle connections, huge headers,
half-closed sockets); a 20 s load test mixing good, malformed, oversized and stalled requests (slow);
recipe `serve` section vs flags; usage errors (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from tests.unit.serving.tiny_models import CLS, GEN, classifier, generator, slow_classifier

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
    x = rows.normal(size=(5, 4)) if kind == "tabular" else rows.integers(0, 256, size=(5, 1, 8, 8))  # 0-255
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


def test_tritonclient_statistics_and_drift_of_the_exported_digits_model(image) -> None:
    """get_inference_statistics() reads the counts; the export's profile.json makes /metrics compare traffic with
    the validation rows: those rows again are no drift, sklearn's 0-16 pixels sent to this 0-255 model are."""
    import tritonclient.http as httpclient

    path, server = image
    auth = {"Authorization": f"Bearer {KEY}"}
    assert (path.parent / "profile.json").is_file()  # written by `export` beside model.onnx
    val = np.load(path.parent / "reference" / "val_x.npy").astype(np.float32)
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        before = client.get_inference_statistics("digits-cnn", headers=dict(auth))["model_stats"][0]

        def send(x: np.ndarray) -> None:
            for part in (x[i:i + 32] for i in range(0, len(x), 32)):
                tensor = httpclient.InferInput("input", list(part.shape), "FP32")
                tensor.set_data_from_numpy(part)
                client.infer("digits-cnn", [tensor], headers=dict(auth))

        reps = int(np.ceil(600 / len(val)))
        send(np.concatenate([val] * reps))
        with pytest.raises(Exception, match="shape"):  # a refused request is a failure of this model
            wrong = httpclient.InferInput("input", [1, 4], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 4), np.float32))
            client.infer("digits-cnn", [wrong], headers=dict(auth))
        after = client.get_inference_statistics("digits-cnn", "1", headers=dict(auth))["model_stats"][0]
        steady = server.get("/metrics", headers=auth)[1].decode()
        send(np.round(np.concatenate([val] * reps) / 16))  # the README's old mistake: 0-16 pixels
        drifted = server.get("/metrics", headers=auth)[1].decode()
    finally:
        client.close()
    rows = reps * len(val)
    assert after["inference_count"] - before["inference_count"] == rows
    stats, was = after["inference_stats"], before["inference_stats"]
    requests = stats["success"]["count"] - was["success"]["count"]
    assert requests == -(-rows // 32) and stats["fail"]["count"] - was["fail"]["count"] == 1
    assert stats["compute_infer"]["count"] - was["compute_infer"]["count"] == requests
    assert stats["compute_infer"]["ns"] > was["compute_infer"]["ns"]

    def psi(text: str, signal: str) -> float:
        match = re.search(rf'^bigmodel_prediction_drift_psi{{model="digits-cnn",signal="{signal}"}} (\S+)$', text,
                          re.MULTILINE)
        assert match, text
        return float(match.group(1))

    assert psi(steady, "predicted_class") < 0.05
    assert psi(drifted, "predicted_class") > 0.5
    deadline = time.monotonic() + 10  # the warning is on the server's stderr, read by another thread
    while not any("drift: predicted_class PSI" in line for line in server.lines):
        assert time.monotonic() < deadline, "no drift warning on the server's stderr"
        time.sleep(0.1)


def test_tritonclient_calls_a_generator_by_seed_or_z(tmp_path: Path) -> None:
    """What a tritonclient user reads from the metadata is enough to call a conditional generator: a seed (and a
    label) as request parameters, or z and label tensors; PNG bytes or the UINT8 images back."""
    import io

    import tritonclient.http as httpclient
    from PIL import Image
    from tritonclient.utils import InferenceServerException

    path = generator(tmp_path / "gan.onnx", conditional=True, image_shape=(3, 4, 4))
    server = Server(str(path), "--port", "0", "--device", "cpu")
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        meta = client.get_model_metadata(GEN)
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("z", "FP32"), ("label", "INT64")]
        assert "image_png" in [o["name"] for o in meta["outputs"]]
        assert all(i["optional"] for i in client.get_model_config(GEN)["input"])
        latent = meta["parameters"]["generator"]["latent_dim"]

        outputs = [httpclient.InferRequestedOutput("image"), httpclient.InferRequestedOutput("image_png")]
        by_seed = client.infer(GEN, [], outputs=outputs, parameters={"seed": 3, "n": 2, "label": 1})
        z = np.random.default_rng(3).standard_normal((2, latent), dtype=np.float32)  # the documented rule
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = session.run(["image"], {"z": z, "label": np.array([1, 1])})[0]
        assert np.array_equal(by_seed.as_numpy("image"), want)
        pngs = by_seed.as_numpy("image_png")
        decoded = np.stack([np.transpose(np.asarray(Image.open(io.BytesIO(p))), (2, 0, 1)) for p in pngs])
        assert np.array_equal(decoded, want)
        again = client.infer(GEN, [], outputs=outputs, parameters={"seed": 3, "n": 2, "label": 1})
        assert list(again.as_numpy("image_png")) == list(pngs)  # same seed, same bytes

        z_in = httpclient.InferInput("z", [2, latent], "FP32")
        z_in.set_data_from_numpy(z)
        label_in = httpclient.InferInput("label", [2], "INT64")
        label_in.set_data_from_numpy(np.array([1, 1], np.int64))
        assert np.array_equal(client.infer(GEN, [z_in, label_in]).as_numpy("image"), want)

        with pytest.raises(InferenceServerException, match="label 5 is out of range"):
            client.infer(GEN, [], parameters={"seed": 3, "label": 5})
    finally:
        client.close()
        assert server.stop() == 0


def documented_example(name: str) -> tuple[dict, object]:
    """The request body of the `curl ... -d '...'` example marked `<!-- tested: NAME -->` in docs/deploy.md, and the
    answer documented under it (the JSON after `# `), or None when it documents none."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    block = text.split(f"<!-- tested: {name} ", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    body = json.loads(block.split(" -d '", 1)[1].split("'", 1)[0])
    answer = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    return body, json.loads(answer[0]) if answer else None


@pytest.mark.parametrize("example", ["digits-pixels", "digits-png"])
def test_documented_digits_examples_give_the_documented_answer(image, example: str) -> None:
    """docs/deploy.md's curl examples send real inputs (0-255 pixels, a PNG file) to the served digits run."""
    _, server = image
    body, answer = documented_example(example)
    request = urllib.request.Request(f"http://{server.url}/v2/models/digits-cnn/infer", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        doc = json.loads(r.read())
    assert doc["outputs"][0]["data"] == answer == ["0"]


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


# ------------------------------------------------------------------------------------------ hostile clients

INFER_PATH = f"/v2/models/{CLS}/infer"
GOOD = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                               "data": [0.5, -1.0, 2.0, 0.25]}]}).encode()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """A server with a short --request-timeout-s (the keep-alive timeout follows it down)."""
    path = classifier(tmp_path_factory.mktemp("serve-guarded") / "cls.onnx")
    server = Server(str(path), "--port", "0", "--device", "cpu", "--request-timeout-s", "1.5")
    yield path, server
    assert server.stop() == 0


def _connect(server: Server) -> socket.socket:
    host, port = server.url.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _post(body: bytes, *, length: int | None = None, extra: str = "") -> bytes:
    length = len(body) if length is None else length
    return f"POST {INFER_PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n{extra}\r\n".encode() + body


def _until_eof(sock: socket.socket, timeout: float = 8.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout} s; got {b''.join(chunks)[:200]!r}") from None
        if not data:
            break
        chunks.append(data)
    sock.close()
    return b"".join(chunks), time.monotonic()


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """HTTP/1.1 responses with Content-Length, as sent one after the other on one connection."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", len(rest)))
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        raw = rest[size:]
    return out


def test_slow_and_idle_connections_are_answered_and_closed(guarded) -> None:
    _, server = guarded
    sockets = {name: _connect(server) for name in ("head", "body", "chunked", "idle", "keep-alive")}
    started = time.monotonic()
    sockets["head"].sendall(f"POST {INFER_PATH} HTTP/1.1\r\nHost: t\r\nContent-Le".encode())
    sockets["body"].sendall(_post(GOOD)[:-20])
    sockets["chunked"].sendall(f"POST {INFER_PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    sockets["keep-alive"].sendall(_post(GOOD))

    def trickle() -> None:  # a chunked body that never ends: one byte every 0.2 s
        with contextlib.suppress(OSError):
            for _ in range(100):
                sockets["chunked"].sendall(b"1\r\n \r\n")
                time.sleep(0.2)

    threading.Thread(target=trickle, daemon=True).start()
    got = {name: _until_eof(sock) for name, sock in sockets.items()}
    for name, status, words in (("head", 408, "head not received"), ("body", 408, "body not received"),
                                ("chunked", 408, "body not received")):
        (answer,) = _responses(got[name][0])
        assert answer[0] == status and words in json.loads(answer[2])["error"], (name, answer)
        assert answer[1]["connection"] == "close" and 1.4 < got[name][1] - started < 5, name
    assert got["idle"][0] == b"" and got["idle"][1] - started < 5  # opened, never used: closed
    ((status, _, body),) = _responses(got["keep-alive"][0])
    assert status == 200 and json.loads(body)["outputs"]
    assert 1.4 < got["keep-alive"][1] - started < 5  # idle after its answer: closed
    assert server.get("/v2/health/ready")[0] == 200
    def timeouts_logged() -> int:  # the access log reaches us through a reader thread: give it a moment
        return sum(1 for line in list(server.lines) if line.startswith("{") and json.loads(line)["status"] == 408)

    deadline = time.monotonic() + 5
    while timeouts_logged() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert timeouts_logged() >= 2  # the bodies' timeouts are the app's, logged


def test_request_head_over_64_kib_is_431_and_garbage_a_quiet_400(guarded) -> None:
    _, server = guarded
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # TLS hello
        sock = _connect(server)
        sock.sendall(garbage)
        ((status, headers, body),) = _responses(_until_eof(sock)[0])
        assert status == 400 and headers["content-type"] == "application/json" and json.loads(body)["error"]
    assert not [line for line in server.lines if "Invalid HTTP" in line]  # no log line per such request
    ask = "GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    sock = _connect(server)
    sock.sendall(f"{ask}X-Fill: {'x' * 60 * 1024}\r\n\r\n".encode())
    ((status, _, _),) = _responses(_until_eof(sock)[0])
    assert status == 200  # under the limit
    sock = _connect(server)
    sock.sendall(f"{ask}X-Fill: {'x' * 70 * 1024}\r\n\r\n".encode())
    ((status, headers, body),) = _responses(_until_eof(sock)[0])
    assert status == 431 and "over 65536 bytes" in json.loads(body)["error"], body
    assert headers["content-type"] == "application/json"

    sock = _connect(server)  # a header that never ends is refused once past the limit, not buffered
    sock.sendall(f"{ask}X-Fill: ".encode())
    sent = 0
    with contextlib.suppress(OSError):
        while sent < 64 << 20:
            sock.sendall(b"x" * 65536)
            sent += 65536
    assert sent < 32 << 20, f"the server took {sent >> 20} MiB of one header"
    sock.close()
    assert server.get("/v2/health/ready")[0] == 200


def test_half_closed_client_gets_its_answer(guarded) -> None:
    path, server = guarded
    sock = _connect(server)
    sock.sendall(_post(GOOD))
    sock.shutdown(socket.SHUT_WR)  # "that is all I send": the answer must still come
    ((status, _, body),) = _responses(_until_eof(sock)[0])
    assert status == 200, body
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    assert np.allclose(out["probabilities"]["data"], _local(path, x)["probabilities"].ravel(), atol=1e-6)


@pytest.mark.parametrize(("flags", "answered_within"), [
    (["--request-timeout-s", "2", "--grace-seconds", "60"], 2.0),  # its own timeout ends first
    (["--request-timeout-s", "60", "--grace-seconds", "1"], 1.0),  # the grace period ends first
])
def test_sigterm_answers_a_stalled_upload_with_json_503(tmp_path: Path, flags: list[str],
                                                        answered_within: float) -> None:
    path = classifier(tmp_path / "cls.onnx")
    server = Server(str(path), "--port", "0", "--device", "cpu", *flags)
    try:
        sock = _connect(server)
        sock.sendall(_post(GOOD)[:-10])
        time.sleep(0.3)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        raw, closed = _until_eof(sock, timeout=15)
        ((status, headers, body),) = _responses(raw)
        assert status == 503 and headers["content-type"] == "application/json", raw
        assert "shutting down" in json.loads(body)["error"]
        assert server.proc.wait(timeout=15) == 0
        assert closed - signalled < answered_within + 2 and time.monotonic() - signalled < answered_within + 4
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ load

LOAD_SECONDS = 20
LOAD_RSS_GROWTH_MIB = 150  # server RSS over its idle size, at any time during the load
LOAD_GOOD_P99_S = 1.0  # good requests' p99 on 2 shared cores (idle: a few ms)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return int(lines[0].split()[1]), headers, await reader.readexactly(int(headers.get("content-length", "0")))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _hostile_payloads(binary_request: bytes) -> dict[str, list[tuple[bytes, int]]]:
    """(what to send, then: 0 nothing more, n > 0 that many zero bytes of body, -1 chunks past the limit)."""
    length = re.search(rb"Inference-Header-Content-Length: (\d+)", binary_request).group(1)
    return {
        "malformed": [(_post(b'{"inputs": [1, 2'), 0), (_post(GOOD.replace(b"[1, 4]", b"[1, 5]")), 0),
                      (binary_request.replace(b"Length: " + length, b"Length: \xb2"), 0),  # '²' in latin-1
                      (_post(b'{"inputs": [{"name": "input", "data": [' + b"1," * 1_000_000 + b"1]}]}"), 0),
                      (_post(b"\xff\xfe" * 100), 0), (b"NOT HTTP AT ALL\r\n\r\n", 0)],
        "oversized": [(_post(b"", length=5 << 20), 65536),  # declared over --max-body-mb 4
                      (f"POST {INFER_PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode(), -1),
                      (f"GET /v2 HTTP/1.1\r\nHost: t\r\nX-Fill: {'x' * 70_000}\r\n\r\n".encode(), 0)],
        "stalled": [(_post(GOOD)[:-10], 0), (f"POST {INFER_PATH} HTTP/1.1\r\nHost: t\r\nContent-".encode(), 0)],
    }


async def _load(host: str, port: int, until: float, x: np.ndarray, want: np.ndarray) -> dict[str, list]:
    """64 clients until `until`: 40 good (keep-alive, JSON and binary), 10 malformed, 8 oversized, 6 stalling."""
    out: dict[str, list] = {"latency": [], "statuses": [], "errors": []}
    body, headers = _request(x, binary=True)
    good_binary = _post(body, extra=f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}"
                                    f"\r\n")
    good_json = _post(_request(x, binary=False)[0])
    hostile = _hostile_payloads(good_binary)

    async def good(payload: bytes) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < until:
                started = time.perf_counter()
                writer.write(payload)
                status, headers, body = await _read_response(reader)
                out["latency"].append(time.perf_counter() - started)
                out["statuses"].append(("good", status))
                if status != 200 or not np.allclose(_probabilities(body, headers), want, atol=1e-5):
                    out["errors"].append((status, body[:200]))
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            out["errors"].append((type(e).__name__, b""))
        finally:
            writer.close()

    async def once(kind: str, payload: bytes, then: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            if then > 0:
                writer.write(b"\0" * then)
            for _ in range(6 if then < 0 else 0):  # 1 MiB chunks until the server stops it
                writer.write(b"100000\r\n" + b"\0" * (1 << 20) + b"\r\n")
                await writer.drain()
            await writer.drain()
            status, _, _ = await asyncio.wait_for(_read_response(reader), timeout=10)
            out["statuses"].append((kind, status))
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            out["statuses"].append((kind, type(e).__name__))  # a refused upload may be cut off while sending
        finally:
            writer.close()

    async def repeat(kind: str, pause: float) -> None:
        i = 0
        while time.monotonic() < until:
            await once(kind, *hostile[kind][i % len(hostile[kind])])
            i += 1
            await asyncio.sleep(pause)

    await asyncio.gather(*[good(good_json) for _ in range(20)], *[good(good_binary) for _ in range(20)],
                         *[repeat("malformed", 0.05) for _ in range(10)],
                         *[repeat("oversized", 0.2) for _ in range(8)], *[repeat("stalled", 0) for _ in range(6)])
    return out


@pytest.mark.slow
def test_load_of_good_malformed_oversized_and_stalled_clients(tmp_path: Path) -> None:
    """20 s of 64 loopback clients: no 5xx, server RSS within LOAD_RSS_GROWTH_MIB of idle, good requests' p99
    under LOAD_GOOD_P99_S, the server ready and answering afterwards."""
    path = classifier(tmp_path / "cls.onnx")
    server = Server(str(path), "--port", "0", "--device", "cpu", "--request-timeout-s", "2", "--max-body-mb", "4")
    host, port = server.url.rsplit(":", 1)
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    try:
        idle = _rss_mib(server.proc.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mib(server.proc.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            out = asyncio.run(_load(host, int(port), time.monotonic() + LOAD_SECONDS, x,
                                    _local(path, x)["probabilities"]))
        finally:
            done.set()
            sampler.join()
        assert server.get("/v2/health/ready")[0] == 200  # and still answering
        assert asyncio.run(_post_all(server.url, [_request(x, binary=True)]))[0][0] == 200
    finally:
        assert server.stop() == 0
    statuses = out["statuses"]
    by_kind: dict[str, list] = {}
    for kind, status in statuses:
        by_kind.setdefault(kind, []).append(status)
    summary = {kind: sorted(set(s), key=str) for kind, s in by_kind.items()}
    assert not [s for _, s in statuses if isinstance(s, int) and s >= 500], summary
    assert set(by_kind["good"]) == {200} and not out["errors"], out["errors"][:3]
    assert {400} <= set(by_kind["malformed"]) <= {400, 404, 405}, summary
    assert {413, 431} <= set(by_kind["oversized"]) <= {413, 431, "ConnectionResetError", "IncompleteReadError"}
    assert set(by_kind["stalled"]) == {408}, summary
    latency = sorted(out["latency"])
    p99 = latency[int(0.99 * (len(latency) - 1))]
    print(f"\nload: {len(latency)} good requests in {LOAD_SECONDS} s, p50 {1000 * latency[len(latency) // 2]:.1f} ms, "
          f"p99 {1000 * p99:.1f} ms; {len(statuses) - len(latency)} hostile; server RSS {idle:.0f} -> peak "
          f"{peak[0]:.0f} MiB; {summary}")
    assert len(latency) > 1000 and p99 < LOAD_GOOD_P99_S
    assert peak[0] - idle < LOAD_RSS_GROWTH_MIB


# ------------------------------------------------------------------------------------------ settings


def test_recipe_serve_section_then_flags(image_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["serve"] = {**recipe.get("serve", {}), "port": 0, "max_batch_size": 4, "max_body_mb": 0.001,
                       "log_payloads": 1.0}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    payloads = tmp_path / "payloads.jsonl"

    server = Server(str(run), "--device", "cpu", "--no-access-log", "--payload-log", str(payloads))  # port 0: recipe
    try:
        config = json.loads(server.get("/v2/models/digits-cnn/config")[1])
        assert config["max_batch_size"] == 4
        small = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "UINT8",
                                        "data": [9] * 64}], "id": "logged"}).encode()
        request = urllib.request.Request(f"http://{server.url}/v2/models/digits-cnn/infer", data=small)
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
        big = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                      "data": [1.0] * 64}], "id": "x" * 2000}).encode()
        request = urllib.request.Request(f"http://{server.url}/v2/models/digits-cnn/infer", data=big)
        with pytest.raises(urllib.error.HTTPError) as too_large:
            urllib.request.urlopen(request, timeout=30)
        assert too_large.value.code == 413 and "limit" in json.loads(too_large.value.read())["error"]
    finally:
        assert server.stop() == 0
    assert not any(line.startswith("{") for line in server.lines)  # --no-access-log
    logged = [json.loads(line) for line in payloads.read_text().splitlines()]  # serve.log_payloads: 1.0
    assert [(p["id"], p["inputs"][0]["data"][:2]) for p in logged] == [("logged", [9, 9])]

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
    "checkpoint": (["{tmp}/model.pt"], "serve needs an .onnx file or a run directory"),
    "run dir without model": (["{tmp}"], "bigmodel export"),
    "not onnx": (["{tmp}/broken.onnx"], "cannot load"),
    "port in use": (["{cls}", "--port", "{busy}"], "address already in use"),
    "unset key": (["{cls}", "--api-key-env", "TEST_SERVE_UNSET_KEY"], "TEST_SERVE_UNSET_KEY"),
    "max queue": (["{cls}", "--max-queue", "0"], "--max-queue 0"),
    "payload share": (["{cls}", "--log-payloads", "1.5"], "--log-payloads 1.5"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_with_one_line(case: str, tabular, tmp_path: Path) -> None:
    args, message = USAGE_ERRORS[case]
    (tmp_path / "broken.onnx").write_text("garbage")
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 a torch checkpoint")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"tmp": str(tmp_path), "cls": str(tabular[0]), "busy": str(busy.getsockname()[1])}
        code, err = _run_cli(*[a.format(**values) for a in args], env={"TEST_SERVE_UNSET_KEY": ""})
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
