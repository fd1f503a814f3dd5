"""Dynamic batching: concurrent requests' rows stacked into one `session.run`, each caller given its own rows.

    bigmodel serve runs/digits-cnn --max-batch-size 32 --max-queue-delay-ms 2 --max-queue 1024

One asyncio task owns the queue. When a request is queued it takes every queued request that fits in
`max_batch_size` rows and runs them as one batch in a worker thread (the event loop keeps answering
HTTP meanwhile, and what arrives during a run forms the next batch). Before running a batch that is not
full it waits for more rows, at most `max_queue_delay_ms` after the oldest request was queued, and only
while other requests are being decoded (`expecting()`, entered once a body has fully arrived): a lone
request is never delayed for company that is not coming, nor for an upload that has stalled. The queue
holds at most `max_queue` requests; the next one is refused with 503 so that a load balancer can retry
elsewhere.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigmodel_cli.console import console
from bigmodel_cli.serving.metrics import ServerMetrics
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.protocol import RequestError
from bigmodel_cli.serving.stats import ModelStats, RequestTiming


@dataclass
class _Job:
    inputs: dict[str, np.ndarray]  # empty for raw table rows (`table`), prepared with their batch
    rows: int
    future: asyncio.Future
    enqueued: float  # loop.time()
    timing: RequestTiming | None = None
    table: Any = None  # raw.TableRows
    row_shapes: tuple = ()  # jobs stack into one batch only when every input's shape past the batch dimension agrees


class DynamicBatcher:
    """Queue requests, run them in merged batches, hand each caller its rows of every output."""

    def __init__(self, model: LoadedModel, metrics: ServerMetrics, *, max_batch_size: int = 32,
                 max_queue_delay_ms: float = 2.0, max_queue: int = 1024, stats: ModelStats | None = None,
                 monitor: Any = None) -> None:
        self.model = model
        self.metrics = metrics
        self.stats = stats
        self.monitor = monitor  # `monitor.Monitor`: sees every batch's inputs and outputs in the worker thread
        self.max_rows = max_batch_size
        self.delay = max_queue_delay_ms / 1000
        self.max_queue = max_queue
        self.merge = model.batchable
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._arriving = 0  # requests being decoded: they may join the next batch
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._wakeup = asyncio.Event()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around decoding a received request: the batcher may wait for it to join the batch."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if not self._arriving:  # the only change of `_arriving` that a waiting batch acts on
                self._wakeup.set()

    async def infer(self, inputs: dict[str, np.ndarray], timing: RequestTiming | None = None,
                    table: Any = None) -> dict[str, np.ndarray]:
        """This request's rows of every model output, computed in a batch with whatever else is queued; `timing`
        is given the request's queue wait and its batch's durations. `table` (raw.TableRows, with `inputs` empty):
        raw table rows, prepared together with the other raw rows of the batch in the worker thread."""
        loop = asyncio.get_running_loop()
        self._ensure_running(loop)
        if len(self._queue) >= self.max_queue:
            raise RequestError(503, f"server overloaded: {len(self._queue)} requests already queued "
                                    f"(--max-queue {self.max_queue}); retry later")
        if table is not None:
            raw = self.model.raw
            job = _Job(inputs, table.rows, loop.create_future(), loop.time(), timing, table,
                       ((raw.name, (raw.width,)),))
        else:
            job = _Job(inputs, next(iter(inputs.values())).shape[0], loop.create_future(), loop.time(), timing,
                       row_shapes=tuple((name, a.shape[1:]) for name, a in inputs.items()))
        self._queue.append(job)
        self._queued_rows += job.rows
        self.metrics.queued.set(len(self._queue))
        if len(self._queue) == 1 or self._queued_rows >= self.max_rows:  # the batcher idles, or a batch is full
            self._wakeup.set()
        return await job.future

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="bigmodel-infer")
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._serve_queue(), name="bigmodel-batcher")

    async def stop(self) -> None:
        """End the batching task; requests still queued get 503 (graceful shutdown waits for them first)."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail(list(self._queue), RequestError(503, "server is shutting down"))
        self._queue.clear()
        self._queued_rows = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _serve_queue(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_more(loop)
            batch = self._take()
            if batch:
                await self._run(batch, loop)

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until the batch is full, the delay has passed, or no other request is on its way."""
        if not self.merge:
            return
        deadline = self._queue[0].enqueued + self.delay
        while self._queued_rows < self.max_rows and self._arriving > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            timer = loop.call_later(remaining, self._wakeup.set)  # cheaper than wait_for's task per wait
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _take(self) -> list[_Job]:
        """The oldest queued request and the queued ones that stack with it, up to the row limit.

        Requests whose rows have another shape (a dynamic dimension past the batch) stay queued, in order,
        for a later batch.
        """
        batch: list[_Job] = []
        rows = 0
        left: deque[_Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():  # the caller went away (disconnected) while queued
                self._queued_rows -= job.rows
                continue
            if batch and (not self.merge or rows + job.rows > self.max_rows):
                self._queue.appendleft(job)
                break
            if batch and job.row_shapes != batch[0].row_shapes:
                left.append(job)
                continue
            self._queued_rows -= job.rows
            batch.append(job)
            rows += job.rows
        self._queue.extendleft(reversed(left))
        self.metrics.queued.set(len(self._queue))
        return batch

    async def _run(self, batch: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        start = loop.time()
        for job in batch:
            self.metrics.queue_duration.observe(start - job.enqueued)
        try:
            outputs, stack_s, infer_s, faults = await loop.run_in_executor(self._executor, self._compute, batch)
        except asyncio.CancelledError:  # stop() while a batch computes: its callers must not wait forever
            self._fail(batch, RequestError(503, "server is shutting down"))
            raise
        except Exception as e:  # noqa: BLE001  (handed to every caller of this batch)
            if not isinstance(e, RequestError):  # a bug: its traceback once, each caller a 500
                trace = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
                console.print(f"error: batch of {len(batch)} requests: server error\n{trace}", markup=False,
                              highlight=False)
                e = RequestError(500, f"inference failed: {type(e).__name__}")
            self._fail(batch, e)
            return
        split = time.perf_counter()
        offset = 0
        for job, fault in zip(batch, faults, strict=True):
            if fault is not None:  # its raw rows could not be prepared: not part of the batch that ran
                if not job.future.done():
                    job.future.set_exception(RequestError(400, fault))
                continue
            if not job.future.done():
                job.future.set_result({name: value[offset:offset + job.rows] for name, value in outputs.items()})
                if job.timing is not None:
                    job.timing.queue_s, job.timing.stack_s, job.timing.infer_s = start - job.enqueued, stack_s, infer_s
            offset += job.rows
        if self.stats is not None and offset:  # (none when every request's raw rows were refused: nothing ran)
            self.stats.batch(offset, stack_s, infer_s, time.perf_counter() - split)

    @staticmethod
    def _fail(batch: list[_Job], error: RequestError) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)

    def _compute(self, jobs: list[_Job]) -> tuple[dict[str, np.ndarray], float, float, list[str | None]]:
        """Prepare raw rows, stack, run, time (in the worker thread): the outputs, the seconds preparing and stacking
        took and running took, and each job's fault (raw rows that could not be prepared: that job is left out).
        The monitor (predictions, drift) then sees the batch, in this thread, off the event loop."""
        stacking = time.perf_counter()
        faults: list[str | None] = [None] * len(jobs)
        inputs = [job.inputs for job in jobs]
        tables = [i for i, job in enumerate(jobs) if job.table is not None]
        if tables:
            raw = self.model.raw
            x, errors = raw.encode([jobs[i].table for i in tables])
            offset = 0
            for i, error in zip(tables, errors, strict=True):
                rows = jobs[i].table.rows
                faults[i] = error
                if error is None:
                    inputs[i] = {raw.name: x[offset:offset + rows]}
                offset += rows
            inputs = [one for one, fault in zip(inputs, faults, strict=True) if fault is None]
            if not inputs:
                return {}, time.perf_counter() - stacking, 0.0, faults
        if len(inputs) == 1:
            feeds = inputs[0]
        else:
            feeds = {name: np.concatenate([one[name] for one in inputs]) for name in inputs[0]}
        started = time.perf_counter()
        outputs = self.model.run_batch(feeds)
        infer_s = time.perf_counter() - started
        self.metrics.compute_duration.observe(infer_s)
        self.metrics.batch_size.observe(next(iter(feeds.values())).shape[0])
        self.metrics.batch_requests.observe(len(inputs))
        if self.monitor is not None:
            self.monitor.observe(feeds, outputs)
        return outputs, started - stacking, infer_s, faults
