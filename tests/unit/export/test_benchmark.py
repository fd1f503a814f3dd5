"""`bigmodel benchmark`: every backend measured on the same rows, with the same metric as eval would give."""

import itertools

import numpy as np
import pytest

from bigmodel_cli.errors import GateFailed, UsageError
from bigmodel_cli.export import benchmark as bench


def test_benchmark_measures_every_backend_side_by_side(digits_run):
    report = bench.benchmark_run(digits_run, [1, 4], iterations=3, fail_under={"accuracy": 0.5})
    backends = report["backends"]
    assert list(backends) == ["pytorch", "onnxruntime-fp32", "onnxruntime-int8"]
    # the same network three ways: fp32 ONNX gives exactly PyTorch's accuracy, int8 within a point
    acc = {name: b["metric"]["accuracy"] for name, b in backends.items()}
    assert acc["onnxruntime-fp32"] == acc["pytorch"] > 0.8
    assert abs(acc["onnxruntime-int8"] - acc["pytorch"]) <= 0.01
    for b in backends.values():
        for size in ("1", "4"):
            lat = b["latency"][size]
            assert 0 < lat["p50_ms"] <= lat["p99_ms"] and lat["calls"] >= 5 and lat["throughput_per_s"] > 0
    assert set(report["speedups"]["onnxruntime-int8_vs_fp32"]) == {"1", "4"}
    assert backends["onnxruntime-int8"]["size_bytes"] < backends["onnxruntime-fp32"]["size_bytes"]
    assert any("fp16" in n and "skipped on CPU" in n for n in report["notes"])
    assert report["ort_session"] == {"intra_op_threads": report["threads"], "allow_spinning": True}
    assert all(g["passed"] for g in report["gates"]) and len(report["gates"]) == 3
    text = bench.table(report)
    assert "onnxruntime-int8" in text and "int8 vs fp32" in text and "p99 ms" in text
    report["gates"][0]["passed"] = False
    with pytest.raises(GateFailed, match="pytorch accuracy"):
        bench.check_gates(report)


def test_bad_benchmark_requests():
    with pytest.raises(UsageError, match="--batch-sizes '1,x'"):
        bench.parse_batch_sizes("1,x")
    with pytest.raises(UsageError, match="--batch-sizes '0'"):
        bench.parse_batch_sizes("0")
    assert bench.parse_batch_sizes("1, 8,64") == [1, 8, 64]


def test_backends_are_timed_in_turns_on_the_same_batch(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    monkeypatch.setattr(bench, "MIN_SECONDS", 0.0)
    calls: list[tuple[str, int]] = []

    def backend(name):
        return bench.Backend(name, lambda batch: calls.append((name, len(batch))), 0)

    rows = np.zeros((3, 2), np.float32)
    result = bench._measure([backend("a"), backend("b")], rows, [1, 4], iterations=6)
    assert set(result) == {"a", "b"} and set(result["a"]) == {"1", "4"}
    assert all(result[n][s]["calls"] >= 6 for n in "ab" for s in ("1", "4"))
    order = [name for name, _ in calls]
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches == 2 * (2 * bench.ROUNDS - 1) + 1  # a,b,a,b,a,b per batch size
    assert {size for _, size in calls} == {1, 4}
