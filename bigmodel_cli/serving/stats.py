"""Triton's statistics extension: per-model request counts and cumulative durations, as `GET .../stats` answers.

    curl localhost:8000/v2/models/digits-cnn/stats
    tritonclient.http.InferenceServerClient("localhost:8000").get_inference_statistics("digits-cnn")

The document is Triton's `ModelStatisticsResponse` in its JSON form (every duration in nanoseconds, cumulative
since the server started):

    {"model_stats": [{"name": "digits-cnn", "version": "1", "last_inference": 1764500000123,  # ms since epoch
      "inference_count": 1230,           # rows inferred (a request of 4 rows counts 4)
      "execution_count": 310,            # session.run calls (batches)
      "inference_stats": {
        "success": {"count", "ns"},      # requests answered 200: from the first byte read to the answer
        "fail": {"count", "ns"},         # infer requests for this model answered otherwise (4xx, 5xx)
        "queue": {"count", "ns"},        # waiting for their batch to start
        "compute_input": {"count", "ns"},   # decoding the request into numpy, and stacking the batch
        "compute_infer": {"count", "ns"},   # session.run of the request's batch
        "compute_output": {"count", "ns"},  # slicing the request's rows out of the batch and encoding the answer
        "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
      "response_stats": {},
      "batch_stats": [{"batch_size": 8, "compute_input": {"count", "ns"}, "compute_infer": ..., "compute_output": ...}],
      "memory_usage": []}]}

As in Triton, each request is charged the whole time of the batch it ran in (queue and compute_* counts are
successful requests); `batch_stats` counts executions per batch size. Updated on the event loop only (the
batcher hands its batch timings back there), so no lock is needed.
"""

from __future__ import annotations

import time
from typing import Any


class Duration:
    """A count and a cumulative duration in nanoseconds."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class RequestTiming:
    """One request's phases, in seconds: filled by the server (decode, encode) and the batcher (the rest)."""

    __slots__ = ("decode_s", "queue_s", "stack_s", "infer_s", "encode_s")

    def __init__(self) -> None:
        self.decode_s = self.queue_s = self.stack_s = self.infer_s = self.encode_s = 0.0


class _BatchStats:
    __slots__ = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.compute_input, self.compute_infer, self.compute_output = Duration(), Duration(), Duration()


class ModelStats:
    """The statistics of the served model (one name, one version)."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.success, self.fail, self.queue = Duration(), Duration(), Duration()
        self.compute_input, self.compute_infer, self.compute_output = Duration(), Duration(), Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._batches: dict[int, _BatchStats] = {}

    def batch(self, rows: int, stack_s: float, infer_s: float, split_s: float) -> None:
        """One execution of `rows` rows: stacking its inputs, session.run, slicing the outputs."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        stats = self._batches.get(rows)
        if stats is None:
            stats = self._batches[rows] = _BatchStats()
        stats.compute_input.add(stack_s)
        stats.compute_infer.add(infer_s)
        stats.compute_output.add(split_s)

    def request(self, total_s: float, timing: RequestTiming) -> None:
        """One request answered 200, with its phases."""
        self.success.add(total_s)
        self.queue.add(timing.queue_s)
        self.compute_input.add(timing.decode_s + timing.stack_s)
        self.compute_infer.add(timing.infer_s)
        self.compute_output.add(timing.encode_s)

    def failed(self, total_s: float) -> None:
        self.fail.add(total_s)

    def json(self) -> dict[str, Any]:
        """This model's entry of `model_stats`."""
        zero = Duration().json()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(), "fail": self.fail.json(), "queue": self.queue.json(),
                "compute_input": self.compute_input.json(), "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(), "cache_hit": zero, "cache_miss": zero,
            },
            "response_stats": {},
            "batch_stats": [
                {"batch_size": rows, "compute_input": s.compute_input.json(), "compute_infer": s.compute_infer.json(),
                 "compute_output": s.compute_output.json()}
                for rows, s in sorted(self._batches.items())
            ],
            "memory_usage": [],
        }
