"""`bigmodel benchmark`: every backend measured on the same rows, with the same metric as eval would give."""

import itertools
import time
from pathlib import Path

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
            assert lat["calls"] >= 5 and lat["throughput_per_s"] == pytest.approx(int(size) / lat["p50_ms"] * 1000)
    assert set(report["speedups"]["onnxruntime-int8_vs_fp32"]) == {"1", "4"}
    assert backends["onnxruntime-int8"]["size_bytes"] < backends["onnxruntime-fp32"]["size_bytes"]
    # the model is named, and PyTorch's size is its weights, not the checkpoint with AdamW's two moments
    model = report["model"]
    assert model["name"] == "cnn_small" and model["args"]["width"] == 32 and model["parameters"] > 10_000
    torch_bytes = backends["pytorch"]["size_bytes"]
    assert abs(torch_bytes - 4 * model["parameters"]) < 0.1 * torch_bytes + 16_384
    assert torch_bytes < 0.5 * (digits_run / "checkpoints/best.pt").stat().st_size
    assert abs(torch_bytes - backends["onnxruntime-fp32"]["size_bytes"]) < 0.2 * torch_bytes
    assert any("fp16" in n and "skipped on CPU" in n for n in report["notes"])
    assert report["ort_session"] == {"intra_op_threads": report["threads"], "allow_spinning": True}
    assert all(g["passed"] for g in report["gates"]) and len(report["gates"]) == 3
    text = bench.table(report)
    assert "onnxruntime-int8" in text and "int8 vs fp32" in text and "p99 ms" in text
    assert text.splitlines()[0].startswith(f"{digits_run}: cnn_small (width 32, dropout 0.1; ")
    assert max(len(line) for line in text.splitlines()) <= 100
    report["gates"][0]["passed"] = False
    with pytest.raises(GateFailed, match="pytorch accuracy"):
        bench.check_gates(report)


def _sleeper(name: str, ms: float, size: int) -> bench.Backend:
    def call(batch):
        time.sleep(ms / 1000 * len(batch))
        return np.zeros((len(batch), 2), np.float32)  # always class 0

    return bench.Backend(name, call, size)


def test_two_targets_side_by_side_give_b_over_a_per_batch_size(monkeypatch):
    """A takes 10 ms per row, B 30 ms: B/A is about 3 at every batch size, and the table says so."""
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    monkeypatch.setattr(bench, "MIN_SECONDS", 0.0)
    rows, labels = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    a = bench.Subject("runs/a", "onnx", "classification", {"name": "mlp", "args": {"hidden": [8]}, "parameters": 50},
                      [2], rows, labels, [_sleeper("onnxruntime-fp32", 10, 1000)])
    b = bench.Subject("b.onnx", "onnx", "classification", None, [2], rows, None,
                      [_sleeper("onnxruntime-int8", 30, 250)])
    report = bench._compare(a, b, [1, 2], "cpu", iterations=3, fail_under=None)
    (pair,) = report["comparison"]
    assert (pair["a"], pair["b"]) == ("onnxruntime-fp32", "onnxruntime-int8") and pair["size_ratio_b_over_a"] == 0.25
    for size in ("1", "2"):
        want = report["b"]["backends"]["onnxruntime-int8"]["latency"][size]["p50_ms"] / \
            report["a"]["backends"]["onnxruntime-fp32"]["latency"][size]["p50_ms"]
        assert pair["latency_ratio_b_over_a"][size] == pytest.approx(want) and 2.0 < want < 4.5
    assert pair["metric_a"] == {"accuracy": 0.5} and pair["metric_b"] == {}  # B's rows are not labelled
    text = bench.table(report)
    assert text.splitlines()[0] == "A  runs/a: mlp (hidden [8]; 50 parameters), input 2"
    assert text.splitlines()[1] == "B  b.onnx: a model without bigmodel metadata, input 2"
    assert "onnxruntime-fp32 | onnxruntime-int8" in text and "B/A" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    with pytest.raises(UsageError, match="--fail-under accuracy: not measured for B onnxruntime-int8"):
        bench._compare(a, b, [1], "cpu", iterations=1, fail_under={"accuracy": 0.4})


def test_an_onnx_file_alone_is_timed_on_zeros_and_not_scored(tmp_path, monkeypatch):
    from tests.unit.export.test_metadata_and_names import identity_model

    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    path = identity_model(tmp_path / "plain.onnx")  # no bigmodel metadata: its static input shape [3] is used
    report = bench.benchmark([path], [1, 4], iterations=2)
    (backend,) = report["backends"]
    assert backend == "onnxruntime-fp32" and report["scored"] is False and report["backends"][backend]["metric"] == {}
    assert set(report["backends"][backend]["latency"]) == {"1", "4"} and report["input_shape"] == [3]
    assert any("timed on zeros of its input shape [3], not scored" in n for n in report["notes"])
    text = bench.table(report)
    assert max(len(line) for line in text.splitlines()) <= 100  # the long path's header is wrapped
    assert text.replace("\n    ", " ").splitlines()[0] == f"{path}: a model without bigmodel metadata, input 3"
    with pytest.raises(UsageError, match="--fail-under accuracy: not measured for onnxruntime-fp32"):
        bench.benchmark([path], [1], iterations=1, fail_under={"accuracy": 0.5})


def test_bad_benchmark_requests():
    with pytest.raises(UsageError, match="--batch-sizes '1,x'"):
        bench.parse_batch_sizes("1,x")
    with pytest.raises(UsageError, match="--batch-sizes '0'"):
        bench.parse_batch_sizes("0")
    with pytest.raises(UsageError, match="one or two RUN_DIR"):
        bench.benchmark([Path("a"), Path("b"), Path("c")])
    with pytest.raises(UsageError, match="nope.onnx: no such run directory or ONNX file"):
        bench.benchmark([Path("nope.onnx")])
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
