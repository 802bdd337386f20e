"""The learner's fetcher with a stand-in consumer: ordering, the bound, commits and errors (no Kafka)."""

from __future__ import annotations

import threading
import time
from collections import namedtuple

import pytest
from kafka.errors import KafkaError

from learner.fetcher import Fetched, Fetcher

Part = namedtuple("Part", "partition")
Record = namedtuple("Record", "offset value")


class FakeConsumer:
    """Serves ``records`` offsets of partition 0, at most ``max_records`` per poll; records the
    thread of every call."""

    def __init__(self, records: int, fail_after: int | None = None, commit_fails: bool = False) -> None:
        self.next, self.end, self.fail_after, self.commit_fails = 0, records, fail_after, commit_fails
        self.committed: list[dict] = []
        self.threads: set[str] = set()
        self.closed = False

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        self.threads.add(threading.current_thread().name)
        if self.fail_after is not None and self.next >= self.fail_after:
            raise KafkaError("broken")
        if self.next >= self.end:
            time.sleep(timeout_ms / 1000)
            return {}
        batch = [Record(o, str(o).encode()) for o in range(self.next, min(self.end, self.next + max_records))]
        self.next += len(batch)
        return {Part(0): batch}

    def commit(self, offsets: dict) -> None:
        self.threads.add(threading.current_thread().name)
        if self.commit_fails:
            raise KafkaError("coordinator unavailable")
        self.committed.append(offsets)

    def close(self) -> None:
        self.closed = True


def _decode(raw: bytes) -> int | None:
    value = int(raw)
    return None if value % 5 == 0 else value


def _take_all(fetcher: Fetcher, count: int) -> list[Fetched]:
    taken: list[Fetched] = []
    deadline = time.monotonic() + 10
    while len(taken) < count and time.monotonic() < deadline:
        taken += fetcher.take(7, timeout_s=0.1)
    return taken


def test_every_record_is_taken_once_in_order_and_never_more_than_the_bound_ahead():
    consumer = FakeConsumer(100)
    fetcher = Fetcher(consumer, _decode, buffer_records=10)
    fetcher.start()
    time.sleep(0.3)
    assert consumer.next == 10  # polled up to the bound, then waits for a take
    taken = _take_all(fetcher, 100)
    fetcher.close()
    assert [f.offset for f in taken] == list(range(100))
    assert [f.value for f in taken] == [None if o % 5 == 0 else o for o in range(100)]
    assert all(len(fetcher.take(7, timeout_s=0)) == 0 for _ in range(2))
    assert consumer.threads == {"hap-fetch"} and consumer.closed


def test_a_take_returns_at_most_its_cap_and_waits_only_when_nothing_is_buffered():
    fetcher = Fetcher(FakeConsumer(3), _decode, buffer_records=10)
    fetcher.start()
    time.sleep(0.2)  # all three buffered
    assert [f.offset for f in fetcher.take(2, timeout_s=1)] == [0, 1]
    assert [f.offset for f in fetcher.take(2, timeout_s=1)] == [2]
    started = time.monotonic()
    assert fetcher.take(7, timeout_s=0.2) == []
    assert time.monotonic() - started >= 0.19
    fetcher.close()


def test_offsets_are_committed_on_the_fetch_thread_and_the_last_pending_at_close():
    consumer = FakeConsumer(0)
    fetcher = Fetcher(consumer, _decode, buffer_records=10, poll_ms=20)
    fetcher.start()
    fetcher.commit({"p0": 5})
    deadline = time.monotonic() + 5
    while not consumer.committed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert consumer.committed == [{"p0": 5}] and consumer.threads == {"hap-fetch"}
    fetcher.close()
    assert consumer.committed == [{"p0": 5}]


def test_a_commit_pending_at_close_is_committed_before_the_consumer_closes():
    consumer = FakeConsumer(0)
    fetcher = Fetcher(consumer, _decode, buffer_records=10, poll_ms=500)
    fetcher.start()
    time.sleep(0.05)  # the thread is inside a poll
    fetcher.commit({"p0": 7})
    fetcher.close()
    assert consumer.committed == [{"p0": 7}] and consumer.closed


def test_a_failed_commit_is_logged_and_fetching_goes_on(caplog):
    consumer = FakeConsumer(20, commit_fails=True)
    fetcher = Fetcher(consumer, _decode, buffer_records=5)
    fetcher.start()
    fetcher.commit({"p0": 1})
    assert len(_take_all(fetcher, 20)) == 20
    fetcher.close()
    assert "offset commit skipped" in caplog.text


def test_a_consumer_error_is_raised_by_take_after_the_records_before_it():
    fetcher = Fetcher(FakeConsumer(100, fail_after=4), _decode, buffer_records=4)
    fetcher.start()
    time.sleep(0.2)
    assert [f.offset for f in fetcher.take(10, timeout_s=1)] == [0, 1, 2, 3]
    with pytest.raises(KafkaError, match="broken"):
        fetcher.take(10, timeout_s=1)
    fetcher.close()
