"""Training batches gathered from memory-mapped arrays ahead of the loop, in an order resume can replay.

    batches = Batches(split, epoch_order(seed, epoch, len(split)), global_batch=64, dist=dist, start=0,
                      device=device, augment=augmentation(data), seed=seed, epoch=epoch, workers=0)
    for b, x, y, rows in batches: ...

No process copies a split into its own memory: each batch is gathered from the `.npy` files
(`numpy.load(mmap_mode="r")`), so the page cache holds the data once for every process on the
machine. Each rank takes its share of the same global batch (`N x batch == 1 x N*batch`).

Gathering happens ahead of the loop: in a background thread (`workers: 0`) or in worker
processes (`workers: N`, torch's DataLoader, pinned memory on a GPU). With `workers: 0`, an epoch
whose first batch gathers in under INLINE_S is gathered in the loop's own thread instead: handing a
batch over from the background thread costs about as much. Random augmentation is
seeded per batch from (seed, epoch, batch, rank), so the images a batch sees are the same
whichever process or thread made it, and a resumed run replays them exactly.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

PREFETCH = 2  # batches made ahead of the one the loop is on
# a batch gathered faster than this is gathered in the loop's thread: the background thread's hand-over (a queue
# and the interpreter lock) costs 55 us a batch on a 2-core CPU with no work in the steps, and more when the steps
# compete with it for the lock; gathering 64 rows of 8x8 pixels in line takes 12 us
INLINE_S = 100e-6


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so resume can replay it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).numpy()


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_033 + batch) * 131 + rank


class _Gather:
    """Make batch `b` of the epoch for one rank: (x, y, rows), with x augmented when asked. Picklable."""

    def __init__(self, split, order: np.ndarray, global_batch: int, rank: int, world: int, augment, seeds: tuple):
        self.split, self.order, self.global_batch = split, order, global_batch
        self.rank, self.world, self.augment, self.seeds = rank, world, augment, seeds

    def __call__(self, b: int, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
        chunk = self.order[b * self.global_batch:(b + 1) * self.global_batch]
        positions = np.array_split(chunk, self.world)[self.rank] if self.world > 1 else chunk
        rows = len(positions)
        if not rows:  # a last global batch smaller than the number of ranks: one row, weighted 0
            positions = chunk[:1]
        x, y = self.split.take(positions)
        xb, yb = torch.from_numpy(x), torch.from_numpy(y)
        return (self.augmented(b, xb) if augment else xb), yb, rows

    def augmented(self, b: int, xb: torch.Tensor) -> torch.Tensor:
        """The batch augmented with its own seed; the caller's random state is left as it was."""
        if self.augment is None:
            return xb
        seed, epoch = self.seeds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(seed, epoch, b, self.rank))
            return self.augment(xb)


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, gather: _Gather, start: int, stop: int):
        self.gather, self.start, self.stop = gather, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.gather(self.start + i)


class Batches:
    """Batches `start..n_batches-1` of one epoch, as (b, x, y, rows) with x and y on the device."""

    def __init__(self, split, order: np.ndarray, global_batch: int, dist, start: int, device: torch.device,
                 augment=None, seed: int = 0, epoch: int = 0, workers: int = 0):
        self.n_batches = -(-len(order) // global_batch)
        self.start, self.device, self.workers = start, device, workers
        self.pin = device.type == "cuda"
        self.gather = _Gather(split, order, global_batch, dist.rank, dist.world, augment, (seed, epoch))

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, int]]:
        threaded = self.workers == 0
        source = self._gathered() if threaded else self._processes()
        with contextlib.closing(source) as made:
            for b, (x, y, rows) in enumerate(made, start=self.start):
                if threaded:  # gathered only: torch's random state belongs to this (the loop's) thread
                    x = self.gather.augmented(b, x)
                yield b, x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), rows

    def _gathered(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Gather (not augment) the first batch here, timed; the others here too when it took under INLINE_S,
        else in one background thread."""
        if self.start >= self.n_batches:
            return
        started = time.perf_counter()
        first = self.gather(self.start, augment=False)
        inline = time.perf_counter() - started < INLINE_S
        yield first
        if inline:
            for b in range(self.start + 1, self.n_batches):
                yield self.gather(b, augment=False)
        else:
            yield from self._thread(self.start + 1)

    def _thread(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Gather (not augment) batches `start..` in one background thread, PREFETCH batches ahead."""
        made: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()

        def offer(item) -> bool:
            """Queue `item` unless the loop has stopped listening."""
            while not stop.is_set():
                try:
                    made.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for b in range(start, self.n_batches):
                    item = self.gather(b, augment=False)
                    if self.pin:
                        item = (item[0].pin_memory(), item[1].pin_memory(), item[2])
                    if not offer(item):
                        return
            except BaseException as e:  # handed to the loop, raised there
                offer(e)
                return
            offer(None)

        worker = threading.Thread(target=produce, name="bigmodel-batches", daemon=True)
        worker.start()
        try:
            while (item := made.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)

    def _processes(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        loader = torch.utils.data.DataLoader(
            _Dataset(self.gather, self.start, self.n_batches), batch_size=None, shuffle=False,
            num_workers=self.workers, pin_memory=self.pin, prefetch_factor=PREFETCH)
        yield from loader
