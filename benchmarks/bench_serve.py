"""`bigmodel serve` against the in-process limit and a hand-written FastAPI endpoint, on loopback.

    make bench            # or: .venv/bin/python benchmarks/bench_serve.py [WIDTH...]
    .venv/bin/python benchmarks/bench_serve.py --hostile [WIDTH]     # 63 MB JSON bodies: memory, others' latency
    .venv/bin/python benchmarks/bench_serve.py --monitoring          # issue 18: monitoring on vs off, concurrency 32
    .venv/bin/python benchmarks/bench_serve.py --generator           # issue 15: a small generator at batch 1, PNG
    .venv/bin/python benchmarks/bench_serve.py --raw                 # issue 19: raw rows / PNG bytes vs encoded

Model: `cnn_small` on 3x32x32 images (random weights, normalisation and softmax inside, as `bigmodel
export` writes it), built into a temporary folder, at the widths given (default both): width 8 (5.8 MFLOP
per image, ~20,000 images/s in-process at batch 32 on idle cores) and width 32 (87 MFLOP, what the shipped
image recipes use; compute-bound on 2 cores). Every table names the width it measures. In the same run:

- the limit: onnxruntime called in-process at batch 32 and batch 1 (samples/s);
- `bigmodel serve` (dynamic batching), one image per request, binary tensors and JSON;
- the naive endpoint of benchmarks/naive_serve.py (FastAPI, one session.run per request), binary tensors
  (`np.frombuffer` on the body) and JSON: each encoding is compared with the same encoding.

An aiohttp closed-loop load generator (this process, same cores as the servers) sends a bounded
number of requests at concurrency 32 and 1 after a warm-up. Where the time goes: latency from the
server's /metrics (queue wait, batch compute), the tensors' decode + encode cost, and CPU per request
read from /proc (server event loop, server threads, load generator), which other jobs on the cores
disturb far less than req/s does. Goals (issue 8, like with like since issue 13): at concurrency 32, each
encoding at least 3x the naive endpoint's req/s in the same encoding with a lower p99; at concurrency 1 a
p50 no worse than the naive endpoint's in the same encoding.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = [3, 32, 32]
MODEL = "cnn-small-bench"
REQUESTS = {32: 2100, 1: 450}  # per server and scenario, split over ROUNDS interleaved rounds
ROUNDS = 3
MONITOR_ROUNDS = 9  # --monitoring: rounds of 3 settings, each first in turn
MONITOR_REQUESTS = 6300  # --monitoring: per setting (CPU time is read in 10 ms ticks: ~2 s of it per setting)
RAW_ROUNDS = 6  # --raw: rounds of every request form
WARMUP = 100


# ---------------------------------------------------------------------------------------------- model


def build_model(folder: Path, width: int = 8) -> Path:
    """cnn_small(3x32x32, 10 classes, `width` channels in the first stage) with input normalisation and
    softmax, exported to ONNX."""
    import onnx
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bigmodel_cli.data.transform import Normalize
    from bigmodel_cli.export.module import Exportable
    from bigmodel_cli.models import create_model

    torch.manual_seed(0)
    net = create_model("cnn_small", num_classes=10, input_shape=SHAPE, width=width)
    with FlopCounterMode(display=False) as flops:
        net.eval()(torch.zeros(1, *SHAPE))
    print(f"model: {flops.get_total_flops() / 1e6:.1f} MFLOP per image")
    module = Exportable(Normalize(1 / 255, [0.5] * 3, [0.25] * 3, "channel"), net, "classification").eval()
    path = folder / "model.onnx"
    torch.onnx.export(module, (torch.zeros(1, *SHAPE),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits", "probabilities"], opset_version=18,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}})
    model = onnx.load(str(path))
    for key, value in {"task": "classification", "recipe": MODEL, "input_shape": json.dumps(SHAPE),
                       "input_kind": "image", "class_names": json.dumps([f"class{i}" for i in range(10)])}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def in_process(path: Path, batch: int, seconds: float = 2.0) -> tuple[float, float]:
    """Samples/s of session.run at `batch`, with the session options `bigmodel serve` uses, and the CPU
    microseconds per sample (all threads; unlike samples/s, not lowered by other processes on the cores)."""
    from bigmodel_cli.serving.model import LoadedModel

    model = LoadedModel.load(path, device="cpu", max_batch_size=batch)
    x = {"input": np.random.default_rng(0).integers(0, 256, [batch, *SHAPE]).astype(np.float32)}
    for _ in range(20):
        model.run_batch(x)
    runs, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        model.run_batch(x)
        runs += 1
    return runs * batch / (time.perf_counter() - start), (time.process_time() - cpu) / (runs * batch) * 1e6


# ---------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_bigmodel(path: Path, log: Path, args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`bigmodel serve` with its defaults (access log on, to a file) and `args`; its URL from the banner line."""
    env = {**os.environ, "CI": "1"}
    with log.open("w") as err:
        extra = os.environ.get("BENCH_SERVE_ARGS", "").split()  # e.g. "--max-queue-delay-ms 5" to try settings
        proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "serve", str(path), "--port", "0",
                                 "--device", "cpu", *extra, *args], stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        match = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return proc, f"http://127.0.0.1:{match.group(1)}"
        if proc.poll() is not None:
            raise SystemExit(f"bigmodel serve exited: {log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("bigmodel serve did not start")


def start_naive(path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "naive_serve.py"), str(path), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("naive server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------------------------- load


def json_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "probabilities"}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """As tritonclient sends it by default: binary input, all outputs binary."""
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def probabilities(body: bytes, header_length: str | None) -> np.ndarray:
    """The client's side of the work: decode the answer into numpy."""
    if header_length is None:
        doc = json.loads(body)
        out = next(o for o in doc["outputs"] if o["name"] == "probabilities")
        return np.asarray(out["data"], np.float32).reshape(out["shape"])
    size = int(header_length)
    doc, offset = json.loads(body[:size]), size
    for out in doc["outputs"]:
        n = out["parameters"]["binary_data_size"]
        if out["name"] == "probabilities":
            return np.frombuffer(body[offset:offset + n], np.float32).reshape(out["shape"])
        offset += n
    raise ValueError("no probabilities in the answer")


async def _load(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int, expected: np.ndarray,
                total: int, warmup: int) -> tuple[list[float], float, int]:
    """Latencies of `total` requests sent by `concurrency` closed-loop clients, the elapsed time, errors."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    position = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            body, headers = requests[i % len(requests)]
            start = time.perf_counter()
            async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body, headers=headers) as r:
                content = await r.read()
                if r.status != 200:
                    errors += 1
                    return
                got = probabilities(content, r.headers.get("Inference-Header-Content-Length"))
            latencies.append(time.perf_counter() - start)
            if not np.allclose(got, expected[i % len(expected)], atol=1e-4):
                errors += 1

        async def worker(count: int) -> None:
            nonlocal position
            while position < count:
                i = position
                position += 1
                await one(i)

        await asyncio.gather(*(worker(warmup) for _ in range(concurrency)))
        latencies.clear()
        position = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker(total) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, elapsed, errors


def load(url: str, requests, concurrency: int, expected: np.ndarray, total: int,
         warmup: int = 0) -> tuple[list[float], float, int]:
    return asyncio.run(_load(url, requests, concurrency, expected, total, warmup))


def summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    latencies = sorted(latencies)
    return {"req_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))], "errors": errors,
            "mean_ms": 1000 * statistics.fmean(latencies)}


def metrics(url: str) -> dict[str, float]:
    """Sums and counts of the server's histograms (`bigmodel_*_sum` / `_count`)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"(bigmodel_\w+_(?:sum|count))\{[^}]*\} (\S+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a server process: its main thread (the event loop) and the rest
    (onnxruntime's threads, the batcher's worker, thread pools, ended threads too); empty without /proc."""

    def seconds(stat: str) -> float:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        process, loop = seconds(f"/proc/{pid}/stat"), seconds(f"/proc/{pid}/task/{pid}/stat")
    except (OSError, AttributeError, ValueError):
        return {}
    return {"loop": loop, "threads": process - loop}


# ---------------------------------------------------------------------------------------------- report


def codec_costs(path: Path, x: np.ndarray) -> dict[str, float]:
    """CPU microseconds of server-side decode + encode of one request, JSON vs binary (in this process)."""
    from bigmodel_cli.serving.model import LoadedModel
    from bigmodel_cli.serving.protocol import decode_infer_request, encode_infer_response

    model = LoadedModel.load(path, device="cpu", max_batch_size=32)
    results = model.run_batch({"input": x})
    costs = {}
    for name, (body, headers) in {"json": json_request(x), "binary": binary_request(x)}.items():
        header = headers.get("Inference-Header-Content-Length")
        start, n = time.process_time(), 300  # CPU time: what it takes from the cores, whatever else runs
        for _ in range(n):
            request = decode_infer_request(body, model.signature, header)
            encode_infer_response(model.name, model.version, request, results)
        costs[name] = (time.process_time() - start) / n * 1e6
    return costs


def main() -> None:
    if sys.argv[1:2] == ["--hostile"]:
        hostile(int(sys.argv[2]) if len(sys.argv) > 2 else 8)
        return
    if sys.argv[1:2] == ["--monitoring"]:
        monitoring()
        return
    if sys.argv[1:2] == ["--generator"]:
        generator_latency()
        return
    if sys.argv[1:2] == ["--raw"]:
        raw_inputs()
        return
    widths = [int(w) for w in sys.argv[1:]] or [8, 32]
    for width in widths:
        print(f"\n=== cnn_small width={width} on 3x32x32, one image per request")
        bench(width)


def bench(width: int) -> None:
    """Servers side by side; rounds interleaved (ours, naive, ours, ...) so that both see the same
    background load on a shared machine; latencies pooled over the rounds."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, [64, 1, *SHAPE]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp), width)
        import onnxruntime as ort

        reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        expected = np.stack([reference.run(["probabilities"], {"input": x})[0] for x in images])
        first = {batch: in_process(path, batch) for batch in (32, 1)}

        bodies = {"binary": [binary_request(x) for x in images], "json": [json_request(x) for x in images]}
        ours, ours_url = start_bigmodel(path, Path(tmp) / "serve.log")
        naive, naive_url = start_naive(path)
        entries = [("bigmodel binary", ours_url, "binary"), ("naive fastapi binary", naive_url, "binary"),
                   ("bigmodel json", ours_url, "json"), ("naive fastapi json", naive_url, "json")]
        pooled: dict[tuple[str, int], list] = {}
        breakdown: dict[tuple[str, int], dict[str, float]] = {}
        try:
            for concurrency in (32, 1):
                for _name, url, encoding in entries:  # warm-up: connections, first-call costs
                    load(url, bodies[encoding], concurrency, expected, WARMUP)
                for _ in range(ROUNDS):
                    for name, url, encoding in entries:
                        pid = ours.pid if url == ours_url else naive.pid
                        before = metrics(url) if url == ours_url else {}
                        cpu_before, client_before = cpu_seconds(pid), time.process_time()
                        lat, elapsed, errors = load(url, bodies[encoding], concurrency, expected,
                                                    REQUESTS[concurrency] // ROUNDS)
                        cpu_after = cpu_seconds(pid)
                        cpu_after["client"] = time.process_time() - client_before
                        run = pooled.setdefault((name, concurrency), [[], 0.0, 0])
                        run[0] += lat
                        run[1] += elapsed
                        run[2] += errors
                        after = metrics(url) if url == ours_url else {}
                        after.update({f"cpu_{k}": v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()})
                        after["requests"] = REQUESTS[concurrency] // ROUNDS
                        _accumulate(breakdown.setdefault((name, concurrency), {}), after, before)
        finally:
            stop(ours)
            stop(naive)
        last = {batch: in_process(path, batch) for batch in (32, 1)}
        limit = {batch: max(first[batch][0], last[batch][0]) for batch in (32, 1)}  # best of before/after
        compute_us = min(first[32][1], last[32][1])
        costs = codec_costs(path, images[0])
    print(f"in-process onnxruntime, cnn_small w={width}: {limit[32]:,.0f} samples/s at batch 32, {limit[1]:,.0f} at "
          f"batch 1 (best of before and after the servers ran)")
    results = {key: summary(*run) for key, run in pooled.items()}
    report(results, {key: _means(b) for key, b in breakdown.items()}, limit, costs, compute_us, width)


def _accumulate(total: dict[str, float], after: dict[str, float], before: dict[str, float]) -> None:
    for name in after:
        total[name] = total.get(name, 0.0) + delta(after, before, name)


def _means(totals: dict[str, float]) -> dict[str, float]:
    requests = max(totals.get("bigmodel_request_duration_seconds_count", 0.0), 1)
    batches = max(totals.get("bigmodel_compute_duration_seconds_count", 0.0), 1)
    sent = max(totals.get("requests", 0.0), 1)
    return {
        **{f"{k[4:]}_us": 1e6 * v / sent for k, v in totals.items() if k.startswith("cpu_")},
        "server_ms": 1000 * totals.get("bigmodel_request_duration_seconds_sum", 0.0) / requests,
        "queue_ms": 1000 * totals.get("bigmodel_queue_duration_seconds_sum", 0.0) / requests,
        "compute_ms": 1000 * totals.get("bigmodel_compute_duration_seconds_sum", 0.0) / batches,
        "rows": totals.get("bigmodel_batch_size_sum", 0.0) / batches,
    }


def report(results, breakdown, limit, costs, compute_us: float, width: int) -> None:
    model = f"cnn_small w={width}"
    print(f"\n{'server, ' + model:<24} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'of limit':>9} "
          f"{'errors':>6}")
    for (name, concurrency), r in results.items():
        frac = r["req_s"] / limit[32 if concurrency == 32 else 1]
        print(f"{name:<24} {concurrency:>4} {r['req_s']:>8,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{frac:>8.0%} {r['errors']:>6.0f}")
    print(f"\nwhere the time goes ({model}, bigmodel serve, means per request; from its /metrics):")
    for (name, concurrency), b in breakdown.items():
        if "server_ms" not in b or not b.get("rows"):
            continue
        client = results[name, concurrency]["mean_ms"]
        print(f"  {name:<16} c={concurrency:<3} client latency {client:6.2f} ms = server {b['server_ms']:5.2f} ms "
              f"(queue wait {b['queue_ms']:5.2f}, one batch of {b['rows']:4.1f} rows computes in "
              f"{b['compute_ms']:5.2f}) + HTTP/event loop/client {client - b['server_ms']:5.2f} ms")
    print(f"  request decode+encode, 3x32x32 image: JSON {costs['json']:.0f} us, binary {costs['binary']:.0f} us "
          f"(CPU the event loop spends per request on the tensors alone)")
    print(f"\ngoals, {model}, each encoding against the naive endpoint in the same encoding:")
    for encoding in ("binary", "json"):
        ours, naive = results[f"bigmodel {encoding}", 32], results[f"naive fastapi {encoding}", 32]
        speedup = ours["req_s"] / naive["req_s"]
        met32 = speedup >= 3 and ours["p99_ms"] < naive["p99_ms"]
        print(f"  c=32 {encoding:<6}: >= 3x naive req/s with lower p99 -> {'met' if met32 else 'NOT met'} "
              f"({speedup:.1f}x, p99 {ours['p99_ms']:.1f} vs {naive['p99_ms']:.1f} ms)")
        ours1, naive1 = results[f"bigmodel {encoding}", 1], results[f"naive fastapi {encoding}", 1]
        met1 = ours1["p50_ms"] <= naive1["p50_ms"]
        print(f"  c=1  {encoding:<6}: p50 no worse than naive -> {'met' if met1 else 'NOT met'} "
              f"({ours1['p50_ms']:.2f} vs {naive1['p50_ms']:.2f} ms)")

    cpu_report(breakdown, costs, compute_us, model)


def cpu_report(breakdown, costs, compute_us: float, model: str) -> None:
    """CPU microseconds per request: server event loop, server threads, the load generator; what they add up
    to against the cores (the throughput ceiling if nothing else ran) and the share the event loop spends
    on HTTP (everything but the tensors' decode + encode)."""
    if not any("loop_us" in b for b in breakdown.values()):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"\nCPU per request, us ({model}; user+system, all {cores} cores; onnxruntime in-process at batch 32: "
          f"{compute_us:.0f} us per image):")
    print(f"  {'server':<22} {'conc':>4} {'event loop':>10} {'no codec':>8} {'threads':>8} {'client':>7} "
          f"{'sum':>6} {'cores/sum':>10}")
    for (name, concurrency), b in breakdown.items():
        loop, total = b.get("loop_us", 0), b.get("loop_us", 0) + b.get("threads_us", 0) + b.get("client_us", 0)
        rest = f"{loop - costs['binary' if 'binary' in name else 'json']:.0f}" if name.startswith("bigmodel") else "-"
        print(f"  {name:<22} {concurrency:>4} {loop:>10.0f} {rest:>8} {b.get('threads_us', 0):>8.0f} "
              f"{b.get('client_us', 0):>7.0f} {total:>6.0f} {cores * 1e6 / max(total, 1):>8,.0f}/s")
    print("  event loop: the server's main thread (HTTP parsing and writing, routing, tensor decode + encode, "
          "batching, metrics, access log);\n  no codec: the event loop without the decode + encode measured above "
          "(HTTP and the server's own bookkeeping); threads: onnxruntime and worker threads;\n  client: this "
          "load generator; cores/sum: the req/s these costs allow when nothing else runs on the cores")


# ---------------------------------------------------------------------------------------------- hostile bodies


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_json_body(megabytes: float = 63.0) -> bytes:
    """A V2 JSON request for one 3x32x32 image whose `data` holds ~`megabytes` MB of small integers ("1,")."""
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0]}]})
    before, after = head.encode().split(b"[0]")
    count = int(megabytes * 1e6) // 2
    return before + b"[" + b"1," * count + b"1]" + after


def hostile(width: int = 8) -> None:
    """`bigmodel serve` (defaults) while one, then four, ~63 MB JSON bodies of small integers arrive at once:
    the server's RSS (peak while they are handled, and 3 s after) and the latency a probe client sees meanwhile
    (one binary 3x32x32 request every 10 ms on its own connection, for as long as the uploads take and 2 s at
least).

        .venv/bin/python benchmarks/bench_serve.py --hostile [WIDTH]
    """
    import http.client
    import threading

    body = big_json_body()
    x = np.random.default_rng(0).integers(0, 256, [1, *SHAPE]).astype(np.float32)
    probe_body, probe_headers = binary_request(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp), width)
        proc, url = start_bigmodel(path, Path(tmp) / "serve.log")
        host, port = url.removeprefix("http://").split(":")
        infer = f"/v2/models/{MODEL}/infer"

        def probe(done: threading.Event, latencies: list[float], statuses: list[int]) -> None:
            connection = http.client.HTTPConnection(host, int(port), timeout=120)
            while not done.is_set():
                start = time.perf_counter()
                connection.request("POST", infer, body=probe_body, headers=probe_headers)
                response = connection.getresponse()
                response.read()
                latencies.append(time.perf_counter() - start)
                statuses.append(response.status)
                time.sleep(0.01)
            connection.close()

        def upload(results: list) -> None:
            connection = http.client.HTTPConnection(host, int(port), timeout=300)
            start = time.perf_counter()
            try:
                connection.request("POST", infer, body=body)
                response = connection.getresponse()
                text = response.read()[:100]
                results.append((response.status, time.perf_counter() - start, text))
            except OSError as e:
                results.append((type(e).__name__, time.perf_counter() - start, b""))
            finally:
                connection.close()

        try:
            warm: list[float] = []
            done = threading.Event()
            thread = threading.Thread(target=probe, args=(done, warm, []))
            thread.start()
            time.sleep(2)
            done.set()
            thread.join()
            print(f"model cnn_small width={width}; body {len(body) / 1e6:.1f} MB of JSON small integers; probe p50 "
                  f"idle {1000 * statistics.median(warm):.2f} ms")
            print(f"{'bodies':>6} {'RSS before':>10} {'peak':>8} {'3 s after':>9} {'answers':>20} {'upload s':>8} "
                  f"{'probe p50':>9} {'p99':>8} {'max ms':>8} {'probe 5xx':>9}")
            for n in (1, 4):
                before = rss_mib(proc.pid)
                latencies: list[float] = []
                statuses: list[int] = []
                results: list = []
                done = threading.Event()
                prober = threading.Thread(target=probe, args=(done, latencies, statuses))
                uploads = [threading.Thread(target=upload, args=(results,)) for _ in range(n)]
                prober.start()
                for t in uploads:
                    t.start()
                peak, started = before, time.monotonic()
                while any(t.is_alive() for t in uploads) or time.monotonic() - started < 2:  # probe 2 s at least
                    peak = max(peak, rss_mib(proc.pid))
                    time.sleep(0.02)
                done.set()
                prober.join()
                time.sleep(3)
                after = rss_mib(proc.pid)
                lat = sorted(latencies)
                answers = ",".join(str(r[0]) for r in results)
                print(f"{n:>6} {before:>9.0f}M {peak:>7.0f}M {after:>8.0f}M {answers:>20} "
                      f"{max(r[1] for r in results):>8.1f} {1000 * statistics.median(lat):>9.2f} "
                      f"{1000 * lat[int(0.99 * (len(lat) - 1))]:>8.1f} {1000 * lat[-1]:>8.1f} "
                      f"{sum(s >= 500 for s in statuses):>9}")
                for status, _, text in results[:1]:
                    print(f"       first answer: {status} {text.decode(errors='replace')}")
        finally:
            stop(proc)


# ---------------------------------------------------------------------------------------------- monitoring


def build_tabular(folder: Path, features: int = 30) -> Path:
    """A tabular classifier as `bigmodel export` writes one for breast-cancer-mlp: 30 features, a 64-unit hidden
    layer, 2 classes (onnx.helper, random weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), name)
             for name, shape in (("W1", (features, 64)), ("W2", (64, 2)))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tabular", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    for key, value in {"task": "classification", "recipe": MODEL, "input_shape": json.dumps([features]),
                       "input_kind": "tabular", "class_names": json.dumps(["benign", "malignant"])}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def monitor_cost(path: Path, x: np.ndarray, profile: dict, rows: int = 8) -> float:
    """CPU microseconds `Monitor.observe` takes for one batch of `rows` rows (in this process)."""
    from bigmodel_cli.serving import monitor as monitors
    from bigmodel_cli.serving.model import LoadedModel

    model = LoadedModel.load(path, device="cpu", max_batch_size=32)
    monitor = monitors.for_model(model, profile, drift_threshold=float("inf"))  # no warnings: same rows again
    feeds = {"input": np.ascontiguousarray(x[:rows])}
    outputs = model.run_batch(feeds)
    n = 2000
    start = time.process_time()
    for _ in range(n):
        monitor.observe(feeds, outputs)
    return (time.process_time() - start) / n * 1e6


def payload_cost(path: Path, x: np.ndarray, share: float = 0.01, n: int = 20000) -> float:
    """CPU microseconds per request of sampling `share` of the requests into a payload log (this process, the
    writer thread included), for one-row requests of `x`."""
    from bigmodel_cli.serving.model import LoadedModel
    from bigmodel_cli.serving.payloads import PayloadLog

    model = LoadedModel.load(path, device="cpu", max_batch_size=32)
    feeds = {"input": np.ascontiguousarray(x[:1])}
    outputs = model.run_batch(feeds)
    with tempfile.TemporaryDirectory() as tmp:
        log = PayloadLog(share, Path(tmp) / "p.jsonl", model=model.name, version="1", seed=0)
        start = time.process_time()
        for _ in range(n):
            if log.sampled():
                log.log(None, {}, feeds, outputs)
        log.close()
        return (time.process_time() - start) / n * 1e6


def monitoring() -> None:
    """`bigmodel serve` with monitoring on (prediction metrics, drift against a profile beside the model), on with
    1 % of the payloads logged, and off (--no-monitoring), side by side at concurrency 32, binary tensors; rounds
    interleaved so that all three see the same background load, with three fresh servers each round. Models:
    cnn_small w=8 (image classifier: class and confidence drift) and a 30-feature tabular MLP (feature summaries
    and 30 feature PSIs besides)."""
    from bigmodel_cli.export import profile as reference

    rng = np.random.default_rng(0)
    for kind in ("image", "tabular"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if kind == "image":
                path = build_model(folder, 8)
                inputs = rng.integers(0, 256, [600, *SHAPE]).astype(np.float32)
                title = "cnn_small w=8, 3x32x32"
            else:
                path = build_tabular(folder)
                inputs = rng.normal(size=(600, 30)).astype(np.float32)
                title = "tabular MLP 30-64-2"
            profile = reference.build(path, inputs[:500], "classification",
                                      feature_names=[f"x{i}" for i in range(30)] if kind == "tabular" else None)
            (folder / "profile.json").write_text(json.dumps(profile))
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            requests_x = inputs[500:564]
            expected = np.stack([session.run(["probabilities"], {"input": x[None]})[0] for x in requests_x])
            bodies = [binary_request(x[None]) for x in requests_x]
            configs = {"off": ("--no-monitoring",), "on": (),
                       "on + payloads 1%": ("--log-payloads", "0.01", "--payload-log", str(folder / "p.jsonl"))}
            pooled: dict[str, list] = {name: [[], 0.0, 0] for name in configs}
            cpu: dict[str, dict[str, float]] = {name: {} for name in configs}
            per_round: dict[str, list[float]] = {name: [] for name in configs}  # req/s of each round
            for turn in range(MONITOR_ROUNDS):  # fresh servers each round: no setting keeps a lucky process
                names = list(configs)
                names = names[turn % 3:] + names[:turn % 3]  # each setting first in turn
                servers = {}
                try:
                    for name in names:
                        servers[name] = start_bigmodel(path, folder / f"serve-{name[:3]}.log", configs[name])
                        load(servers[name][1], bodies, 32, expected, WARMUP)
                    for name in names:
                        proc, url = servers[name]
                        before = cpu_seconds(proc.pid)
                        lat, elapsed, errors = load(url, bodies, 32, expected, MONITOR_REQUESTS // MONITOR_ROUNDS)
                        after = cpu_seconds(proc.pid)
                        run = pooled[name]
                        run[0] += lat
                        run[1] += elapsed
                        run[2] += errors
                        per_round[name].append(len(lat) / elapsed)
                        for k in after:
                            cpu[name][k] = cpu[name].get(k, 0.0) + after[k] - before.get(k, 0.0)
                    if turn == MONITOR_ROUNDS - 1:
                        metrics_text = urllib.request.urlopen(f"{servers['on'][1]}/metrics", timeout=10).read().decode()
                finally:
                    for proc, _ in servers.values():
                        stop(proc)
            observe_us = monitor_cost(path, inputs, profile)
            payload_us = payload_cost(path, inputs)
        sent = MONITOR_ROUNDS * (MONITOR_REQUESTS // MONITOR_ROUNDS)
        print(f"\n{title}: bigmodel serve, binary tensors, concurrency 32, {sent} requests per setting in "
              f"{MONITOR_ROUNDS} "
              f"interleaved rounds (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(f"  {'monitoring':<18} {'req/s':>8} {'vs off':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'CPU us/request: loop':>21} {'threads':>8} {'sum':>6} {'vs off':>7}")
        off = summary(*pooled["off"])
        off_cpu = sum(cpu["off"].values()) / sent * 1e6
        for name in configs:
            r = summary(*pooled[name])
            total = sum(cpu[name].values()) / sent * 1e6
            print(f"  {name:<18} {r['req_s']:>8,.0f} {r['req_s'] / off['req_s']:>6.1%} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['errors']:>6.0f} {cpu[name].get('loop', 0) / sent * 1e6:>21.0f} "
                  f"{cpu[name].get('threads', 0) / sent * 1e6:>8.0f} {total:>6.0f} {total / off_cpu:>6.1%}")
        drift = [line for line in metrics_text.splitlines() if line.startswith("bigmodel_prediction_drift_psi")]
        print(f"  in-process: Monitor.observe {observe_us:.1f} us CPU per batch of 8 rows; payload log at 1 % "
              f"{payload_us:.1f} us per request; the 'on' server's "
              f"/metrics: {len(drift)} prediction PSI gauges, "
              f"{metrics_text.count('bigmodel_feature_drift_psi{')} feature PSI gauges")
        extra = sum(cpu["on"].values()) / max(sum(cpu["off"].values()), 1e-9) - 1
        rounds = [a / b for a, b in zip(per_round["on"], per_round["off"], strict=True)]
        ratio = statistics.median(rounds)
        print(f"  on/off req/s of each round (adjacent in time): {', '.join(f'{r:.2f}' for r in rounds)}; "
              f"median {ratio:.3f}")
        print(f"  goal (issue 18): monitoring costs at most 3 % of throughput at concurrency 32 -> by server CPU per "
              f"request (steady under load) {'met' if extra <= 0.03 else 'NOT met'} ({extra:+.1%}); by req/s "
              f"{'met' if ratio >= 0.97 else 'NOT met'} (median round {ratio:.1%} of off; req/s swings by tens of % "
              f"when other jobs share the cores)")


# ---------------------------------------------------------------------------------------------- generator

GEN_LATENT = 8  # digits-dcgan's z


def build_generator(folder: Path, latent_dim: int = GEN_LATENT, width: int = 32) -> Path:
    """A DCGAN-style generator the size of digits-dcgan's (z 8 -> 4x4x64 -> transposed conv -> 8x8x32 -> 8x8x1,
    uint8 out: models/gan.py's Generator at width 32) with random weights, exported with the generative contract's
    inputs, output and metadata."""
    import torch
    from torch import nn

    from bigmodel_cli.export import metadata

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project = nn.Sequential(nn.Linear(latent_dim, 2 * width * 16), nn.BatchNorm1d(2 * width * 16),
                                         nn.ReLU())
            self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, 1, 3, padding=1), nn.Tanh())

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = self.up(self.project(z).reshape(-1, 2 * width, 4, 4))
            return torch.round((x + 1) * 127.5).to(torch.uint8)

    torch.manual_seed(0)
    net = Generator().eval()
    path = folder / "gan.onnx"
    torch.onnx.export(net, (torch.zeros(2, latent_dim),), str(path), dynamo=False, input_names=["z"],
                      output_names=["image"], opset_version=18, dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}})
    metadata.write(path, {"task": "generation", "recipe": MODEL, "latent_dim": str(latent_dim),
                          "conditional": "false", "class_names": json.dumps([str(i) for i in range(10)]),
                          "input_shape": json.dumps([latent_dim]), "image_shape": json.dumps([1, 8, 8]),
                          "input_kind": "latent", "output_dtype": "uint8"})
    return path


def generator_latency() -> None:
    """Batch-1 latency of a small generator through `bigmodel serve` at concurrency 1: a seed asking for PNG (JSON,
    base64), a seed asking for binary PNG bytes, z sent as binary asking for the UINT8 image; and whether a seed's
    PNG bytes are the same on every call and on a second server process."""
    import http.client

    with tempfile.TemporaryDirectory() as tmp:
        path = build_generator(Path(tmp))
        servers = [start_bigmodel(path, Path(tmp) / f"serve-{i}.log") for i in range(2)]
        z = np.random.default_rng(0).standard_normal((1, GEN_LATENT), dtype=np.float32)
        header = json.dumps({"inputs": [{"name": "z", "shape": [1, GEN_LATENT], "datatype": "FP32",
                                         "parameters": {"binary_data_size": z.nbytes}}],
                             "parameters": {"binary_data_output": True}}).encode()
        requests = {
            "seed -> PNG (JSON base64)": (lambda i: json.dumps({"parameters": {"seed": i},
                                                                "outputs": [{"name": "image_png"}]}).encode(), {}),
            "seed -> PNG (binary)": (lambda i: json.dumps({"parameters": {"seed": i, "binary_data_output": True},
                                                           "outputs": [{"name": "image_png"}]}).encode(), {}),
            "z (binary) -> UINT8 image": (lambda i: header + z.tobytes(),
                                          {"Inference-Header-Content-Length": str(len(header))}),
        }
        try:
            host, port = servers[0][1].removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            print(f"small generator (z {GEN_LATENT} -> 1x8x8 uint8, DCGAN-style, width 32: digits-dcgan's), "
                  f"bigmodel serve, concurrency 1, one image per request (load average {os.getloadavg()[0]:.1f} "
                  f"on {os.cpu_count()} cores)")
            print(f"  {'request':<28} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}")
            for name, (make, headers) in requests.items():
                latencies = []
                for i in range(WARMUP + 600):
                    body = make(i % 50)
                    start = time.perf_counter()
                    connection.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    if response.status != 200:
                        raise SystemExit(f"{name}: {response.status}")
                    if i >= WARMUP:
                        latencies.append(time.perf_counter() - start)
                lat = sorted(latencies)
                print(f"  {name:<28} {1000 * statistics.median(lat):>7.2f} {1000 * lat[int(0.9 * len(lat))]:>7.2f} "
                      f"{1000 * lat[int(0.99 * (len(lat) - 1))]:>7.2f}")
            connection.close()

            def pngs(url: str) -> list[str]:
                out = []
                for seed in range(10):
                    body = json.dumps({"parameters": {"seed": seed, "n": 4}, "outputs": [{"name": "image_png"}]})
                    request = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=body.encode())
                    out += json.loads(urllib.request.urlopen(request, timeout=30).read())["outputs"][0]["data"]
                return out

            first, again, other = pngs(servers[0][1]), pngs(servers[0][1]), pngs(servers[1][1])
            print(f"  same seed, byte-identical PNG: {'yes' if first == again else 'NO'} on a second call, "
                  f"{'yes' if first == other else 'NO'} on a second server process (10 seeds x 4 images)")
        finally:
            for proc, _ in servers:
                stop(proc)


# ---------------------------------------------------------------------------------------------- raw inputs


def churn_run(folder: Path) -> Path:
    """tabular-csv trained (5 epochs) and exported on benchmarks/recipe_data.py's churn table (2,000 rows)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from recipe_data import churn

    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.training.loop import fit

    source = churn(folder / "churn.csv", 2000)
    recipe = resolve("tabular-csv", {"data.prepared": str(folder / "data"), "data.source": str(source),
                                     "data.target": "churned", "data.drop": ["customer_id"]}, ["train.epochs=5"])
    console.quiet(True)
    prepare(recipe)
    fit(recipe, folder / "run")
    export_run(folder / "run")
    console.quiet(False)
    return folder / "run"


def _tensor_body(tensors: list[dict], outputs: bool = True) -> tuple[bytes, dict[str, str]]:
    doc: dict = {"inputs": tensors}
    if outputs:
        doc["outputs"] = [{"name": "probabilities"}]
    return json.dumps(doc).encode(), {}


def _binary_body(tensors: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": n, "shape": shape, "datatype": t, "parameters": {"binary_data_size":
                                                                                          len(raw)}}
                                    for n, t, shape, raw in tensors],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(raw for *_, raw in tensors), {"Inference-Header-Content-Length": str(len(header))}


def _bytes_element(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def raw_inputs() -> None:
    """Raw inputs against the pre-encoded request, each in the same encoding, at concurrency 1 (p50) and 32
    (req/s): one 3x32x32 image as PNG bytes vs its pixels (cnn_small w=8), one churn row as a JSON object or a
    tensor per column vs its 12 encoded features (tabular-csv trained on benchmarks/recipe_data.py's churn table).
    Rounds interleaved; goal (issue 19): raw at most 1.5x the pre-encoded p50 at concurrency 1."""
    import base64
    import csv as csv_module
    import io

    from PIL import Image

    from bigmodel_cli.data.raw_inputs import InputSpec

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image_path = build_model(folder, 8)
        run = churn_run(folder / "churn")
        images = rng.integers(0, 256, [32, 32, 32, 3]).astype(np.uint8)
        pngs = []
        for im in images:
            buffer = io.BytesIO()
            Image.fromarray(im).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        pixels = [np.transpose(im, (2, 0, 1))[None].astype(np.float32) for im in images]
        with (folder / "churn" / "churn.csv").open() as f:
            table = list(csv_module.DictReader(f))[:32]
        spec = InputSpec.from_manifest(json.loads((run / "preprocessing.json").read_text()))
        columns = spec.columns()
        rows = [{c: _typed(r[c]) for c in columns} for r in table]
        encoded = [spec.rows([row]) for row in rows]

        def column_tensors(row: dict) -> list[dict]:
            return [{"name": c, "shape": [1], "datatype": "BYTES" if isinstance(row[c], str) else
                     "BOOL" if isinstance(row[c], bool) else "FP64", "data": [row[c]]} for c in columns]

        scenarios = {
            "image": (image_path, [
                ("pixels, binary FP32", [_binary_body([("input", "FP32", [1, *SHAPE], x.tobytes())]) for x in pixels]),
                ("PNG bytes, binary", [_binary_body([("input", "BYTES", [1], _bytes_element(p))]) for p in pngs]),
                ("pixels, JSON", [json_request(x) for x in pixels]),
                ("PNG, JSON base64", [_tensor_body([{"name": "input", "shape": [1], "datatype": "BYTES",
                                                     "data": [base64.b64encode(p).decode()]}]) for p in pngs]),
            ]),
            "table": (run / "model.onnx", [
                ("encoded, JSON FP32", [_tensor_body([{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                                       "data": x.ravel().tolist()}]) for x in encoded]),
                ("row object, JSON", [(json.dumps({"parameters": {"rows": [row]},
                                                   "outputs": [{"name": "probabilities"}]}).encode(), {})
                                      for row in rows]),
                ("column tensors, JSON", [_tensor_body(column_tensors(row)) for row in rows]),
            ]),
        }
        for kind, (path, entries) in scenarios.items():
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            inputs = pixels if kind == "image" else encoded
            expected = np.stack([session.run(["probabilities"], {"input": x.astype(np.float32)})[0] for x in inputs])
            proc, url = start_bigmodel(path, folder / f"serve-{kind}.log", ("--model-name", MODEL, "--no-access-log"))
            pooled: dict[tuple[str, int], list] = {}
            cpu: dict[tuple[str, int], float] = {}
            try:
                for _name, bodies in entries:
                    load(url, bodies, 1, expected, WARMUP)
                for concurrency in (1, 32):
                    count = {1: 300, 32: 1200}[concurrency]
                    for _ in range(RAW_ROUNDS):
                        for name, bodies in entries:
                            before = sum(cpu_seconds(proc.pid).values())
                            lat, elapsed, errors = load(url, bodies, concurrency, expected, count // RAW_ROUNDS)
                            cpu[name, concurrency] = cpu.get((name, concurrency), 0.0) + \
                                sum(cpu_seconds(proc.pid).values()) - before
                            run_ = pooled.setdefault((name, concurrency), [[], 0.0, 0])
                            run_[0] += lat
                            run_[1] += elapsed
                            run_[2] += errors
            finally:
                stop(proc)
            title = "cnn_small w=8, one 3x32x32 image" if kind == "image" else "tabular-csv churn MLP, one row"
            print(f"\n{title} per request (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            print(f"  {'request':<24} {'c=1 p50 ms':>10} {'vs encoded':>10} {'c=1 CPU us':>10} {'c=32 req/s':>10} "
                  f"{'c=32 p99 ms':>11} {'errors':>6}")
            base = {}
            for name, _ in entries:
                one, many = summary(*pooled[name, 1]), summary(*pooled[name, 32])
                encoding = "JSON" if "JSON" in name else "binary"
                base.setdefault(encoding, one["p50_ms"])
                ratio = one["p50_ms"] / base[encoding]
                sent = RAW_ROUNDS * (300 // RAW_ROUNDS)
                print(f"  {name:<24} {one['p50_ms']:>10.2f} {ratio:>9.2f}x {cpu[name, 1] / sent * 1e6:>10.0f} "
                      f"{many['req_s']:>10,.0f} {many['p99_ms']:>11.1f} {one['errors'] + many['errors']:>6.0f}")
        print("\n  vs encoded: p50 over the pre-encoded request's in the same encoding (binary with binary, JSON with "
              "JSON); goal (issue 19) at most 1.5x.\n  c=1 CPU us: the server's CPU per request (steadier than "
              "latency when other jobs share the cores)")


def _typed(text: str):
    """A CSV cell as a JSON client would send it: a number, true/false, null for empty, else the text."""
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


if __name__ == "__main__":
    main()
