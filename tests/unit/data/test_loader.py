"""The training loader (`data.loader.Batches`, `loader_workers: 0`): batches gathered in the loop's thread when
they are cheap, else by a background thread ahead of the loop; the same batches either way."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from bigmodel_cli.data import loader
from bigmodel_cli.data.loader import Batches, epoch_order
from bigmodel_cli.tasks.base import Split
from bigmodel_cli.training.distributed import Dist

ROWS, BATCH = 103, 16  # 7 batches, the last one of 7 rows


@pytest.fixture()
def split():
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (ROWS, 1, 4, 4), dtype=np.uint8), np.arange(ROWS, dtype=np.int64))


def flip(x: torch.Tensor) -> torch.Tensor:
    """A random augmentation: flips a random half of the batch (uses torch's random state)."""
    chosen = torch.rand(len(x)) < 0.5
    return torch.where(chosen[:, None, None, None], x.flip(-1), x)


def batches(split, inline_s: float, monkeypatch, start: int = 0, augment=None) -> list:
    monkeypatch.setattr(loader, "INLINE_S", inline_s)
    made = Batches(split, epoch_order(3, 1, len(split)), BATCH, Dist(), start, torch.device("cpu"),
                   augment=augment, seed=3, epoch=1)
    return [(b, x.clone(), y.clone(), rows) for b, x, y, rows in made]


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bigmodel-batches"]


@pytest.mark.parametrize("start", [0, 4])
def test_in_line_and_threaded_gathering_give_the_same_batches(split, monkeypatch, start):
    inline = batches(split, float("inf"), monkeypatch, start, augment=flip)
    threaded = batches(split, 0.0, monkeypatch, start, augment=flip)
    order = epoch_order(3, 1, ROWS)
    assert [b for b, *_ in inline] == list(range(start, 7))
    assert sum(rows for *_, rows in inline) == ROWS - start * BATCH
    for (b, x, y, rows), (b2, x2, y2, rows2) in zip(inline, threaded, strict=True):
        assert (b, rows) == (b2, rows2) and torch.equal(x, x2) and torch.equal(y, y2)
        assert y.tolist() == order[b * BATCH:(b + 1) * BATCH].tolist()  # the epoch's order, batch by batch
    unflipped = batches(split, float("inf"), monkeypatch, start)
    assert any(not torch.equal(x, x2) for (_, x, *_), (_, x2, *_) in zip(inline, unflipped, strict=True))


def test_a_slow_gather_moves_to_the_background_thread_and_a_fast_one_stays_in_line(split, monkeypatch):
    seen, gather = [], loader._Gather.__call__
    monkeypatch.setattr(loader, "INLINE_S", 0.02)  # wide of both, so that a busy machine cannot change the choice
    for delay in (0.0, 0.05):

        def timed(self, b, augment=True, delay=delay):
            if delay:
                time.sleep(delay)
            return gather(self, b, augment)

        monkeypatch.setattr(loader._Gather, "__call__", timed)
        made = Batches(split, epoch_order(0, 0, ROWS), BATCH, Dist(), 0, torch.device("cpu"))
        counts = [len(workers()) for _ in made]
        seen.append((counts[0], max(counts)))
    assert seen == [(0, 0), (0, 1)]  # the first batch is gathered in line either way
    time.sleep(0.2)
    assert not workers()


def test_an_error_in_the_thread_is_raised_in_the_loop_and_the_thread_ends(split, monkeypatch):
    gather = loader._Gather.__call__

    def failing(self, b, augment=True):
        if b == 3:
            raise OSError("disk gone")
        return gather(self, b, augment)

    monkeypatch.setattr(loader._Gather, "__call__", failing)
    monkeypatch.setattr(loader, "INLINE_S", 0.0)
    got = []
    with pytest.raises(OSError, match="disk gone"):
        for b, *_ in Batches(split, epoch_order(0, 0, ROWS), BATCH, Dist(), 0, torch.device("cpu")):
            got.append(b)
    assert got == [0, 1, 2]
    time.sleep(0.2)
    assert not workers()


def test_leaving_the_loop_early_stops_the_thread(split, monkeypatch):
    monkeypatch.setattr(loader, "INLINE_S", 0.0)
    for b, *_ in Batches(split, epoch_order(0, 0, ROWS), 4, Dist(), 0, torch.device("cpu")):  # 26 batches
        if b == 2:
            break
    deadline = time.monotonic() + 2
    while workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not workers()
