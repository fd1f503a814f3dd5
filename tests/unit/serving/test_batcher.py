"""The dynamic batcher in-process: rows of concurrent requests merged, each caller given its own rows,
the row limit, the delay rule, the bounded queue (503), models that must not be merged."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bigmodel_cli.serving.batcher import DynamicBatcher
from bigmodel_cli.serving.metrics import ServerMetrics
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.protocol import RequestError
from tests.unit.serving.tiny_models import classifier, save


@pytest.fixture(scope="module")
def cls_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classifier(tmp_path_factory.mktemp("batcher") / "cls.onnx")


def _batcher(path: Path, max_batch_size: int = 16, **kw) -> DynamicBatcher:
    model = LoadedModel.load(path, device="cpu", max_batch_size=max_batch_size)
    return DynamicBatcher(model, ServerMetrics(model.name, max_batch_size), max_batch_size=max_batch_size, **kw)


def _histogram(batcher: DynamicBatcher, name: str) -> tuple[float, float, float]:
    """count, sum and max observed bucket bound of one of the batcher's histograms."""
    samples = {s.name: s for metric in batcher.metrics.registry.collect() if metric.name == name
               for s in metric.samples if s.name != f"{name}_created"}
    count, total = samples[f"{name}_count"].value, samples[f"{name}_sum"].value
    return count, total, total / max(count, 1)


def test_concurrent_requests_are_merged_and_each_gets_its_rows(cls_path: Path) -> None:
    batcher = _batcher(cls_path, max_batch_size=16, max_queue_delay_ms=5)
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(int(rng.integers(1, 9)), 4)).astype(np.float32) for _ in range(200)]
    session = ort.InferenceSession(str(cls_path), providers=["CPUExecutionProvider"])

    async def main() -> list[dict[str, np.ndarray]]:
        try:
            return await asyncio.gather(*(batcher.infer({"input": x}) for x in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for x, got in zip(requests, results, strict=True):
        logits, probabilities = session.run(None, {"input": x})
        assert got["logits"].shape == logits.shape
        assert np.allclose(got["logits"], logits, atol=1e-5) and np.allclose(got["probabilities"], probabilities,
                                                                             atol=1e-6)
    runs, merged, _ = _histogram(batcher, "bigmodel_batch_requests")
    _, rows, mean_rows = _histogram(batcher, "bigmodel_batch_size")
    assert merged == 200 and rows == sum(len(x) for x in requests)
    assert runs < 100 and mean_rows > 8  # really merged: batches at least half full on average
    bound = next(s for m in batcher.metrics.registry.collect() if m.name == "bigmodel_batch_size"
                 for s in m.samples if s.name.endswith("_bucket") and s.labels["le"] == "16.0")
    assert bound.value == runs  # no batch over max_batch_size rows


def test_lone_request_is_not_delayed_but_expected_ones_are_waited_for(cls_path: Path) -> None:
    batcher = _batcher(cls_path, max_queue_delay_ms=1000)
    x = np.ones((1, 4), np.float32)

    async def main() -> tuple[float, float, int]:
        start = time.perf_counter()
        await batcher.infer({"input": x})  # nobody else is on the way: runs at once
        alone = time.perf_counter() - start

        async def late_joiner() -> None:
            with batcher.expecting():  # being received: the batcher waits for it (up to the delay)
                await asyncio.sleep(0.05)
            await batcher.infer({"input": x})

        start = time.perf_counter()
        joiner = asyncio.ensure_future(late_joiner())
        await asyncio.sleep(0)
        await asyncio.gather(batcher.infer({"input": x}), joiner)
        together = time.perf_counter() - start
        await batcher.stop()
        return alone, together, 0

    alone, together, _ = asyncio.run(main())
    assert alone < 0.5
    assert 0.04 < together < 0.9  # waited for the joiner, not for the whole delay
    runs, merged, _ = _histogram(batcher, "bigmodel_batch_requests")
    assert (runs, merged) == (2, 3)


def test_full_queue_answers_503(cls_path: Path) -> None:
    batcher = _batcher(cls_path, max_queue=2, max_queue_delay_ms=0)
    release = threading.Event()
    run = batcher.model.run_batch
    batcher.model.run_batch = lambda feeds: (release.wait(5), run(feeds))[1]  # hold the worker busy
    x = np.ones((1, 4), np.float32)

    async def main() -> list[object]:
        first = asyncio.ensure_future(batcher.infer({"input": x}))  # taken by the worker, blocked
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.infer({"input": x})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError) as refused:
            await batcher.infer({"input": x})
        release.set()
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return [refused.value.status_code, *done]

    status, *done = asyncio.run(main())
    assert status == 503 and len(done) == 3 and all("probabilities" in d for d in done)


def test_model_with_fixed_batch_is_never_merged(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["prediction"])], "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [1, 3])])
    batcher = _batcher(save(graph, tmp_path / "fixed.onnx", task="regression"), max_queue_delay_ms=50)
    assert not batcher.model.batchable and "dynamic_batching" not in batcher.model.config_json()
    xs = [np.full((1, 3), i - 5, np.float32) for i in range(10)]

    async def main() -> list[dict[str, np.ndarray]]:
        out = await asyncio.gather(*(batcher.infer({"input": x}) for x in xs))
        await batcher.stop()
        return out

    for x, got in zip(xs, asyncio.run(main()), strict=True):
        assert np.array_equal(got["prediction"], np.maximum(x, 0))
    assert _histogram(batcher, "bigmodel_batch_requests")[:2] == (10, 10)


def test_inference_failure_reaches_every_caller_of_the_batch(cls_path: Path) -> None:
    batcher = _batcher(cls_path)

    def broken(feeds: dict) -> dict:
        raise RequestError(500, "inference failed: out of memory")

    batcher.model.run_batch = broken

    async def main() -> list[object]:
        out = await asyncio.gather(*(batcher.infer({"input": np.ones((1, 4), np.float32)}) for _ in range(3)),
                                   return_exceptions=True)
        await batcher.stop()
        return out

    errors = asyncio.run(main())
    assert all(isinstance(e, RequestError) and e.status_code == 500 for e in errors)


def test_a_bug_in_a_batch_is_a_500_for_each_caller_and_one_traceback(cls_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    batcher = _batcher(cls_path)

    def broken(feeds: dict) -> dict:
        raise KeyError("a bug")

    batcher.model.run_batch = broken

    async def main() -> list[object]:
        out = await asyncio.gather(*(batcher.infer({"input": np.ones((1, 4), np.float32)}) for _ in range(3)),
                                   return_exceptions=True)
        await batcher.stop()
        return out

    errors = asyncio.run(main())
    assert all(isinstance(e, RequestError) and e.status_code == 500 for e in errors)
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1 and "KeyError: 'a bug'" in err


def test_requests_of_different_row_shapes_are_not_stacked(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["prediction"], keepdims=1)], "dynamic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    batcher = _batcher(save(graph, tmp_path / "dynamic.onnx", task="regression"), max_queue_delay_ms=5)
    assert batcher.model.batchable
    xs = [np.full((1 + i % 3, 2 + i % 2), i, np.float32) for i in range(30)]

    async def main() -> list[dict[str, np.ndarray]]:
        out = await asyncio.gather(*(batcher.infer({"input": x}) for x in xs))
        await batcher.stop()
        return out

    for x, got in zip(xs, asyncio.run(main()), strict=True):
        assert np.array_equal(got["prediction"], x.sum(axis=1, keepdims=True))
    assert _histogram(batcher, "bigmodel_batch_requests")[0] < 30  # still merged where the shapes agree


def test_stop_answers_every_waiting_caller(cls_path: Path) -> None:
    batcher = _batcher(cls_path, max_batch_size=1, max_queue_delay_ms=0)
    release = threading.Event()
    run = batcher.model.run_batch
    batcher.model.run_batch = lambda feeds: (release.wait(5), run(feeds))[1]
    x = np.ones((1, 4), np.float32)

    async def main() -> list[object]:
        callers = [asyncio.ensure_future(batcher.infer({"input": x})) for _ in range(3)]  # 1 computing, 2 queued
        await asyncio.sleep(0.05)
        await batcher.stop()
        release.set()
        return await asyncio.gather(*callers, return_exceptions=True)

    answers = asyncio.run(main())
    assert all(isinstance(a, RequestError) and a.status_code == 503 for a in answers)


def test_full_batch_runs_at_once_while_others_are_still_arriving(cls_path: Path) -> None:
    batcher = _batcher(cls_path, max_batch_size=2, max_queue_delay_ms=2000)
    x = np.ones((1, 4), np.float32)

    async def main() -> float:
        arriving = asyncio.Event()

        async def slow_request() -> None:  # being received all along: a batch that is not full would wait
            with batcher.expecting():
                await arriving.wait()
            await batcher.infer({"input": x})

        slow = asyncio.ensure_future(slow_request())
        await asyncio.sleep(0)
        start = time.perf_counter()
        first = asyncio.ensure_future(batcher.infer({"input": x}))
        await asyncio.sleep(0.05)  # the batcher holds the first row back for the slow request
        await asyncio.gather(first, batcher.infer({"input": x}))  # the second fills the batch: it runs now
        elapsed = time.perf_counter() - start
        arriving.set()
        await slow
        await batcher.stop()
        return elapsed

    assert asyncio.run(main()) < 1.0  # not the 2 s delay
    runs, merged, _ = _histogram(batcher, "bigmodel_batch_requests")
    assert (runs, merged) == (2, 3)
