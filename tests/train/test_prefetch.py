"""EpochPrefetch: the next epoch's batches are read ahead in a thread, in order, errors kept."""

from __future__ import annotations

import threading
import time

import pytest

from gfpipe.train.worker import EpochPrefetch


def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_reading_starts_before_iteration_stays_bounded_and_keeps_order():
    produced: list[int] = []

    def batches():
        for i in range(20):
            produced.append(i)
            yield i

    prefetch = EpochPrefetch(batches(), depth=3)
    _wait_for(lambda: len(produced) >= 4)  # read ahead before anyone asked
    time.sleep(0.05)
    assert len(produced) == 4  # 3 queued + 1 waiting to be put: bounded by depth
    assert list(prefetch) == list(range(20))


def test_an_error_while_reading_is_raised_where_the_batch_is_taken():
    def batches():
        yield 1
        yield 2
        raise OSError("shard unreadable")

    taken = []
    with pytest.raises(OSError, match="shard unreadable"):
        for item in EpochPrefetch(batches()):
            taken.append(item)
    assert taken == [1, 2]


def test_an_empty_epoch_ends_at_once():
    assert list(EpochPrefetch(iter(()))) == []
    _wait_for(lambda: not any(t.name == "gfpipe-epoch-prefetch" for t in threading.enumerate()))
