"""The worker's batch delivery without a broker or Redis: a fake producer, fake item statistics and a
fake Faust stream record what happens, in order. The brokers acknowledge a batch's outputs (dead
letters, groups), then its changelog records; then its item counts are written; only then is the
input acknowledged, while the next batch was fetched meanwhile (at most two in flight). A failed
delivery, offsets never delivered though read again, and a stall exit the worker through the injected
``exit``, before anything of the batch is acknowledged."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from feature_store.connection import RedisEndpoint
from streams.contract.schemas import Candidate, RankingEvent, encode
from streams.kafka.batch_producer import partition_of
from streams.worker.app import BATCH_FAILED_EXIT, InputGap, StreamsConfig, StreamsWorker
from streams.worker.tables import BoundedRocksDBOptions
from streams.worker.watchdog import STALLED_EXIT

PREFIX = "t."


@dataclasses.dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any = ()
    refcount: int = 1  # the stream's reference, taken when the consumer handed it the message

    def incref(self) -> None:
        self.refcount += 1

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclasses.dataclass
class Event:
    message: Message


class Exited(Exception):
    """What the injected exit raises: ``os._exit`` never returns either."""


class Log(list[str]):
    def exit(self, code: int) -> None:
        self.append(f"exit {code}")
        raise Exited(code)


class Producer:
    def __init__(self, log: Log, fail: bool | str = False) -> None:
        self.log, self.fail = log, fail  # "changelog": the outputs are taken, the changelog records not
        self.offsets: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        pass

    async def deliver(self, records: Sequence[tuple[str, int | None, bytes | None, bytes | None]]
                      ) -> dict[tuple[str, int], int]:
        await asyncio.sleep(0)  # the brokers take their time
        if self.fail and records and (self.fail is True or records[0][0].endswith("-changelog")):
            raise ConnectionError("broker down")
        if records:
            self.log.append("acked " + ",".join(sorted({topic for topic, *_ in records})))
        for topic, partition, *_ in records:  # the offset of each partition's last record, from 100 on
            self.offsets[topic, partition or 0] = self.offsets.get((topic, partition or 0), 99) + 1
        return {tp: self.offsets[tp] for tp in {(topic, partition or 0) for topic, partition, *_ in records}}


class Features:
    """The join's feature reads and the item statistics, without Redis."""

    def __init__(self, log: Log) -> None:
        self.log, self.counted = log, 0

    def count(self, event: Any, dwell_threshold_ms: int, topic: str, partition: int, offset: int) -> None:
        self.counted += 1

    def set_history(self, user_id: str, history: list[str]) -> None:
        pass

    def flush(self) -> None:
        pass

    async def read_groups(self, requests: Sequence[tuple[Sequence[str], int]]) -> list[list[dict[str, float]]]:
        return [[{} for _ in ids] for ids, _ in requests]

    async def write_counts(self, waiting: Callable[[], None] | None = None) -> None:
        await asyncio.sleep(0)
        self.log.append("counts written")


class SlowCounts(Features):
    """Item counts that take Redis a while to store: the worker joins the next batch meanwhile."""

    async def write_counts(self, waiting: Callable[[], None] | None = None) -> None:
        self.log.append("counts writing")
        for _ in range(20):
            await asyncio.sleep(0)
        self.log.append("counts written")


class Lag:
    """The worker's input lag, without a consumer: nothing behind; ``gap``, raised at the next batch."""

    topics = frozenset({f"{PREFIX}ranking", f"{PREFIX}exposure"})

    def __init__(self) -> None:
        self.gap: InputGap | None = None

    async def took(self, messages: Sequence[Message]) -> list[Message]:
        if self.gap is not None:
            raise self.gap
        return list(messages)

    def __call__(self, topic: str, partition: int) -> bool:
        return False

    def restart_clocks(self) -> None:
        pass

    async def stuck(self, stall_s: float) -> set[TP]:
        return set()

    async def refetch_idle(self, idle_s: float) -> None:
        pass

    def reassigned(self, partitions: Any) -> None:
        pass


def make_worker(tmp_path: Path, log: Log, *, fail: bool | str = False, stall_s: float = 30.0,
                store: str = "rocksdb://", features: type[Features] = Features) -> tuple[StreamsWorker, Lag]:
    lag = Lag()
    cfg = StreamsConfig(bootstrap="127.0.0.1:1", redis=RedisEndpoint("redis://127.0.0.1:1"), redis_prefix="t:",
                        topic_prefix=PREFIX, data_dir=tmp_path, partitions=2, stall_s=stall_s, store=store)
    worker = StreamsWorker(cfg, producer=Producer(log, fail), features=features(log), lag=lag,  # type: ignore[arg-type]
                           exit=log.exit)
    return worker, lag


class Stream:
    """Faust's acknowledgement: an offset is committable once its message's last reference is released."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def ack(self, event: Event) -> bool:
        event.message.refcount -= 1
        assert event.message.refcount >= 0
        if event.message.refcount == 0:
            self.log.append(f"input acked {event.message.offset}")
        return event.message.refcount == 0


async def batches(stream: Stream, *batches: list[Event]) -> AsyncIterator[list[Event]]:
    """As Faust's ``take_events``: a batch is fetched when asked for, and its events released when the
    next batch is asked for."""
    for batch in batches:
        await asyncio.sleep(0)  # the fetch takes its time
        stream.log.append("fetched " + ",".join(str(e.message.offset) for e in batch))
        yield batch
        for event in batch:
            await stream.ack(event)


def run(worker: StreamsWorker, log: Log, *events: list[Event]) -> None:
    stream = Stream(log)
    asyncio.run(worker.assemble_batches(batches(stream, *events), stream.ack))


def ranking(offset: int, rid: str) -> Event:
    value = encode(RankingEvent(rid, "u1", int(time.time() * 1000), [Candidate("i1", "hot", 0, 0.9, 0, 0.8, "video")]))
    return Event(Message(f"{PREFIX}ranking", partition_of(rid.encode(), 2), offset, rid.encode(), value))


def garbage(offset: int) -> Event:
    return Event(Message(f"{PREFIX}ranking", 0, offset, b"bad", b"{not json"))


def test_outputs_then_changelogs_then_counts_then_the_input_ack(tmp_path: Path) -> None:
    log = Log()
    worker, _ = make_worker(tmp_path, log)
    changelogs = ",".join(sorted(f"{worker.app.conf.id}-{t}-changelog" for t in ("pending", "rankings")))
    run(worker, log, [garbage(0), ranking(1, "r1")], [ranking(2, "r2")], [ranking(3, "r3")])
    assert log == [
        "fetched 0,1",
        "fetched 2",  # while the first batch is joined and delivered
        f"acked {PREFIX}dlq", f"acked {changelogs}", "counts written", "input acked 0", "input acked 1",
        "fetched 3",  # two batches in flight at most: the third waits for the first's acknowledgement
        f"acked {changelogs}", "counts written", "input acked 2",  # no output: the changes alone
        f"acked {changelogs}", "counts written", "input acked 3",
    ]


def test_the_next_batch_is_joined_while_the_counts_are_written_after_the_tables_are_stored(tmp_path: Path) -> None:
    """Batch N+1 is joined and delivered while batch N's item counts are written, never before batch N's
    changelog records were acknowledged and its changes stored (the join reads the tables as N left them);
    each batch's input is acknowledged only after its own counts; a third batch waits for the first's
    acknowledgement (at most three held: counting, joining, fetched)."""
    log = Log()
    worker, _ = make_worker(tmp_path, log, features=SlowCounts)
    changelogs = ",".join(sorted(f"{worker.app.conf.id}-{t}-changelog" for t in ("pending", "rankings")))
    run(worker, log, [ranking(0, "r1")], [garbage(1)], [ranking(2, "r3")])
    assert log.index(f"acked {changelogs}") < log.index(f"acked {PREFIX}dlq") < log.index("counts written")
    assert log.index("counts written") < log.index("input acked 0")  # the first batch's own counts first
    second_counts = [n for n, line in enumerate(log) if line == "counts written"][1]
    assert second_counts < log.index("input acked 1")
    assert log.index("input acked 0") < len(log) - 1 - log[::-1].index(f"acked {changelogs}")  # third batch
    assert [line for line in log if line.startswith("input acked")] == [f"input acked {n}" for n in range(3)]


def test_a_batchs_changes_reach_the_local_store_with_their_changelog_offset_after_the_delivery(tmp_path: Path) -> None:
    """RocksDB: the pending state and ranking of each request, and each partition's changelog offset (Faust's
    persisted offset, where a restart on this state resumes the changelog), written once the changelog has them;
    a changelog delivery that fails leaves the store as it was (a killed worker's state is never ahead)."""
    log = Log()
    worker, _ = make_worker(tmp_path, log)
    run(worker, log, [ranking(0, "r1"), ranking(1, "r2")], [ranking(2, "r3")])
    pending = worker.app.tables["pending"]
    stored = {rid: pending.data._get_bucket_for_key(pending.data._encode_key(rid)) for rid in ("r1", "r2", "r3")}
    assert all(found is not None for found in stored.values())
    topic = pending.changelog_topic.get_topic_name()
    assert {p: pending.data.persisted_offset(TP(topic, p)) for p in (0, 1)} == {
        p: worker.producer.offsets[topic, p] for p in (0, 1)}  # type: ignore[attr-defined]
    assert (tmp_path / "v1" / "tables" / "pending-0.db").is_dir()  # under the worker's data dir
    assert all(isinstance(t.data.rocksdb_options, BoundedRocksDBOptions) for t in worker.app.tables.values())
    again = Log()
    failing, _ = make_worker(tmp_path / "2", again, fail="changelog")
    with pytest.raises(Exited):
        run(failing, again, [ranking(0, "r1")])
    rankings = failing.app.tables["rankings"]
    assert rankings.data._get_bucket_for_key(rankings.data._encode_key("r1")) is None
    assert again[-1] == f"exit {BATCH_FAILED_EXIT}" and not any(line.startswith("input acked") for line in again)


def test_the_memory_store_keeps_the_same_order(tmp_path: Path) -> None:
    log = Log()
    worker, _ = make_worker(tmp_path, log, store="memory://")
    run(worker, log, [ranking(0, "r1")])
    assert log[-2:] == ["counts written", "input acked 0"]
    assert worker.app.tables["pending"].data["r1"]["ranking"] is True


def test_a_failed_delivery_exits_before_the_counts_and_the_ack(tmp_path: Path) -> None:
    log = Log()
    worker, _ = make_worker(tmp_path, log, fail=True)
    with pytest.raises(Exited):
        run(worker, log, [garbage(0)], [garbage(1)])
    assert log == ["fetched 0", "fetched 1", f"exit {BATCH_FAILED_EXIT}"]  # nothing acknowledged


def test_offsets_never_delivered_though_read_again_exit_before_the_batch_is_joined(tmp_path: Path) -> None:
    log = Log()
    worker, lag = make_worker(tmp_path, log)
    lag.gap = InputGap(TP(f"{PREFIX}ranking", 0), 0, 4)
    with pytest.raises(Exited):
        run(worker, log, [garbage(5)])
    assert log == ["fetched 5", f"exit {BATCH_FAILED_EXIT}"]


def test_a_stall_exits(tmp_path: Path) -> None:
    log = Log()
    worker, _ = make_worker(tmp_path, log, stall_s=0.01)
    asyncio.run(worker.check_progress())  # beaten at start: no stall
    assert log == []
    time.sleep(0.15)  # past stall_s x RECOVERY_GRACE: the tables never recovered here
    with pytest.raises(Exited):
        asyncio.run(worker.check_progress())
    assert log == [f"exit {STALLED_EXIT}"]


def test_the_stall_clock_starts_when_the_tables_have_recovered(tmp_path: Path) -> None:
    """Start-up (connecting, the group's assignment, the tables' recovery) is not a stall: a worker whose
    recovery ended after more than ``stall_s`` gets ``stall_s`` from then for its first batch."""
    log = Log()
    worker, _ = make_worker(tmp_path, log, stall_s=0.05)
    time.sleep(0.1)  # longer than stall_s, within stall_s x RECOVERY_GRACE: still recovering
    asyncio.run(worker.check_progress())
    worker.app.tables.recovery.completed.set()
    asyncio.run(worker.check_progress())  # recovered just now
    assert log == []
    time.sleep(0.1)  # then no batch for longer than stall_s
    with pytest.raises(Exited):
        asyncio.run(worker.check_progress())
    assert log == [f"exit {STALLED_EXIT}"]


def test_a_join_longer_than_the_stall_timeout_is_progress_not_a_stall(tmp_path: Path) -> None:
    """A batch whose join holds the event loop past ``stall_s`` (a big batch of a backlog) has made progress:
    the stall check that runs while its delivery waits on the brokers (Faust's timer) finds none."""
    log = Log()
    worker, _ = make_worker(tmp_path, log, stall_s=0.05)
    worker.app.tables.recovery.completed.set()
    asyncio.run(worker.check_progress())  # recovered: the clock starts
    process, deliver = worker.joiner.process, worker.producer.deliver

    async def slow_join(messages: Sequence[Any]) -> None:
        time.sleep(0.1)  # longer than stall_s, holding the loop
        await process(messages)

    async def checked_delivery(records: Sequence[Any]) -> dict[tuple[str, int], int]:
        await worker.check_progress()
        return await deliver(records)

    worker.joiner.process, worker.producer.deliver = slow_join, checked_delivery  # type: ignore[method-assign]
    run(worker, log, [ranking(1, "r1")])
    assert f"exit {STALLED_EXIT}" not in log and log[-1] == "input acked 1"
