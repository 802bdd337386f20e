"""The streams worker's view of its input partitions, over a fake consumer: behind or not, stuck or
not, and records past offsets never delivered left out and read again."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree
from prometheus_client import REGISTRY

from streams.worker import app as app_module
from streams.worker.app import InputGap, InputLag, refuse_gap_acks

RANKING, EXPOSURE = TP("hap.ranking", 0), TP("hap.exposure", 0)


class Consumer:
    """What :class:`InputLag` reads of Faust's consumer: assignment, end offsets, positions."""

    def __init__(self) -> None:
        self.ends: dict[TP, int | None] = {RANKING: None, EXPOSURE: None}
        self.positions: dict[TP, int] = {RANKING: 0, EXPOSURE: 0}
        self.starts: dict[TP, int] = {RANKING: 0, EXPOSURE: 0}  # log start offsets
        self._read_offset: dict[TP, int | None] = {}
        # Faust's commit bookkeeping (what its _add_gap and _new_offset use): the offsets it resumed from
        self._committed_offset: dict[TP, int | None] = collections.defaultdict(lambda: None)
        self._gap: dict[TP, IntervalTree] = collections.defaultdict(IntervalTree)
        self._acked: dict[TP, list[int]] = collections.defaultdict(list)
        self._acked_index: dict[TP, set[int]] = collections.defaultdict(set)
        self.group_commits: dict[TP, int] = {}  # what the group's coordinator holds
        self.seeks: list[tuple[TP, int]] = []  # where the partitions were read again from
        self._unacked_messages: set[Message] = set()
        self._thread = self  # Faust's consumer thread: it calls the aiokafka consumer's methods
        self._fetcher = Fetcher()  # the aiokafka consumer's (self, as its thread)
        self.paused: set[TP] = set()  # partitions Faust no longer asks for
        self._buffered_partitions: set[TP] = set()  # held back by Faust's flow control (its stream's buffer full)
        self.on_thread = False  # in a call on that thread (call_thread)

    def _ensure_consumer(self) -> Consumer:
        return self

    def _get_active_partitions(self) -> set[TP]:
        """The partitions Faust asks aiokafka for (all assigned but the paused ones)."""
        return self.assignment() - self.paused

    async def call_thread(self, method: Any, *args: Any) -> Any:
        self.on_thread = True
        try:
            return method(*args)
        finally:
            self.on_thread = False

    def committed(self, tp: TP) -> int | None:
        return self.group_commits.get(tp)

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        return {tp: self.starts[tp] for tp in partitions}

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        assert tp in self.ends, "Partition is not assigned"
        return self.ends[tp]

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    def seek(self, tp: TP, offset: int) -> None:
        """aiokafka's seek, through Faust's consumer thread: called from the event loop's thread, it raced the
        fetcher's drain of the partition (``KeyError`` in ``fetched_records``: Faust's fetcher crashed)."""
        assert self.on_thread, "seek on the consumer's thread, where aiokafka's fetcher runs"
        self.seeks.append((tp, offset))


@dataclasses.dataclass
class Fetcher:
    """aiokafka's fetcher: per partition, the fetched records not handed out yet."""

    _records: dict[TP, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class App:
    consumer: Consumer
    log: Any = dataclasses.field(default_factory=lambda: logging.getLogger("test"))


@dataclasses.dataclass(eq=False)
class Message:
    tp: TP
    offset: int
    acked: bool = False  # Faust's flag: set, its acknowledgement is a no-op


def took(lag: InputLag, messages: list[Message]) -> list[tuple[TP, int]]:
    """The (partition, offset) of the records the join takes."""
    return [(m.tp, m.offset) for m in asyncio.run(lag.took(messages))]


def left_out(tp: TP, *offsets: int) -> list[Message]:
    return [Message(tp, offset) for offset in offsets]


def retention_lost(tp: TP) -> float:
    return REGISTRY.get_sample_value("hap_streams_retention_lost_total",
                                     {"topic": tp.topic, "partition": str(tp.partition)}) or 0.0


def test_behind_means_records_wait_that_the_join_has_not_taken():
    consumer = Consumer()
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    assert lag("hap.ranking", 0)  # not fetched yet: behind
    assert not lag("hap.ranking", 7)  # not assigned here
    consumer.ends[RANKING], consumer._read_offset[RANKING] = 10, 10  # committed at the end: caught up
    consumer._committed_offset[RANKING] = 10
    assert not lag("hap.ranking", 0)
    consumer.ends[RANKING] = 12
    assert lag("hap.ranking", 0)
    took(lag, [Message(RANKING, 10), Message(RANKING, 11)])
    assert not lag("hap.ranking", 0)


def test_a_partition_behind_that_the_consumer_does_not_fetch_is_stuck_after_stall_s():
    consumer = Consumer()
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    consumer.ends[EXPOSURE], consumer.positions[EXPOSURE] = 500, 500  # fetched to its end
    consumer._committed_offset[EXPOSURE] = 499
    took(lag, [Message(EXPOSURE, 499)])
    consumer.ends[RANKING], consumer.positions[RANKING] = 80, 40  # 40 records never fetched
    assert asyncio.run(lag.stuck(0.05)) == []  # its clock starts now
    asyncio.run(asyncio.sleep(0.1))
    assert asyncio.run(lag.stuck(0.05)) == [RANKING]
    consumer.positions[RANKING] = 80  # fetched (a trailing marker the join never sees): not stuck
    assert asyncio.run(lag.stuck(0.05)) == []
    consumer.positions[RANKING], consumer._committed_offset[RANKING] = 40, 40
    took(lag, [Message(RANKING, 40)])  # it moves: not stuck
    assert asyncio.run(lag.stuck(0.05)) == []


def test_records_past_offsets_never_delivered_are_left_out_and_the_partition_read_again():
    """Faust delivers 9 after 6 in a partition the worker kept: 9 is left out, never acknowledged,
    and the partition is read again from 7; the copies read again are taken. A partition that moved
    to another worker and back resumes where that one committed: no gap."""
    consumer = Consumer()
    consumer._committed_offset.update({EXPOSURE: 5, RANKING: 2})  # where Faust resumes each
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    assert took(lag, [Message(EXPOSURE, 5), Message(EXPOSURE, 6), Message(RANKING, 2)]) == [
        (EXPOSURE, 5), (EXPOSURE, 6), (RANKING, 2)]
    past = left_out(EXPOSURE, 9, 10)
    assert took(lag, [*past, Message(RANKING, 3)]) == [(RANKING, 3)]
    assert consumer.seeks == [(EXPOSURE, 7)]  # once, not per record left out
    assert all(m.acked for m in past)  # Faust's own acknowledgement of them does nothing: no commit passes 7
    assert took(lag, [Message(EXPOSURE, 7), Message(EXPOSURE, 8), Message(EXPOSURE, 9)]) == [
        (EXPOSURE, 7), (EXPOSURE, 8), (EXPOSURE, 9)]
    lag.reassigned({RANKING})  # the exposure partition moved to another worker, the ranking one stayed
    lag.reassigned({RANKING, EXPOSURE})  # and back, committed up to 30 by the other: where it resumes is no gap
    consumer._committed_offset[EXPOSURE] = 30
    assert took(lag, [Message(EXPOSURE, 30)]) == [(EXPOSURE, 30)]
    assert took(lag, [Message(RANKING, 9)]) == []  # kept all along: a gap, rebalances or not
    assert consumer.seeks[-1] == (RANKING, 4)
    ticks = TP("hap.streams-ticks", 0)
    assert took(lag, [Message(ticks, 1), Message(ticks, 7)]) == [(ticks, 1), (ticks, 7)]  # not a join input


def test_a_partition_whose_records_never_come_back_ends_the_worker_after_the_attempts(monkeypatch):
    """Read again REFETCH_ATTEMPTS times (at most once per REFETCH_AFTER_S), the expected record never
    arriving: InputGap, on which the worker replaces itself."""
    monkeypatch.setattr(app_module, "REFETCH_AFTER_S", 0.0)
    consumer = Consumer()
    consumer._committed_offset[RANKING] = 3
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    for _ in range(app_module.REFETCH_ATTEMPTS):
        assert took(lag, [Message(RANKING, 8)]) == []
    assert consumer.seeks == [(RANKING, 3)] * app_module.REFETCH_ATTEMPTS
    with pytest.raises(InputGap) as gap:
        took(lag, [Message(RANKING, 8)])
    assert (gap.value.tp, gap.value.first, gap.value.last) == (RANKING, 3, 7)
    assert took(lag, [Message(RANKING, 3)]) == [(RANKING, 3)]  # it arrived: the count starts again
    assert took(lag, [Message(RANKING, 5)]) == [] and consumer.seeks[-1] == (RANKING, 4)


def test_faust_never_acknowledges_offsets_it_did_not_deliver_on_the_joins_inputs():
    refuse_gap_acks(frozenset({"hap.ranking"}))

    @dataclasses.dataclass
    class Gaps:  # the state of Faust's consumer that its gap bookkeeping uses
        _committed_offset: dict = dataclasses.field(default_factory=lambda: {RANKING: 10, TP("hap.items", 0): 10})
        _gap: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(IntervalTree))

    gaps = Gaps()
    asyncio.run(FaustConsumer._add_gap(gaps, RANKING, 11, 20))
    asyncio.run(FaustConsumer._add_gap(gaps, TP("hap.items", 0), 11, 20))
    assert not gaps._gap[RANKING] and gaps._gap[TP("hap.items", 0)]  # other topics keep Faust's behaviour


def test_a_partition_resumed_below_its_log_start_counts_what_retention_deleted_and_commits_again():
    """The worker was down past the input's retention: Faust resumes from a committed offset (10)
    below the log start (50) and the consumer reads from 50. The 40 deleted offsets are counted and
    acknowledged for Faust, so its next commit passes them (before: refused as a gap, the partition
    never committed again, its acknowledged offsets piled up, every restart replayed it all)."""
    refuse_gap_acks(frozenset({"hap.ranking", "hap.exposure"}))
    consumer = Consumer()
    consumer._committed_offset[RANKING], consumer.starts[RANKING] = 10, 50
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    lost = retention_lost(RANKING)
    assert took(lag, [Message(RANKING, 50), Message(RANKING, 51)]) == [(RANKING, 50), (RANKING, 51)]
    assert retention_lost(RANKING) - lost == 40
    consumer._acked[RANKING] = [50, 51]  # the batch, acknowledged
    assert FaustConsumer._new_offset(consumer, RANKING) == 52  # Faust commits again, past the deleted offsets


def test_records_that_exist_but_were_not_delivered_at_the_start_of_an_assignment_are_read_again():
    """One record (offset 10) left out at the start of an assignment, though retention kept it: the
    partition is read again from it (before: not seen, and Faust's commit passes a single missing
    offset silently). Where retention deleted some, the partition is read from the log start."""
    consumer = Consumer()
    consumer._committed_offset[EXPOSURE] = 10
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    assert took(lag, [Message(EXPOSURE, 11)]) == [] and consumer.seeks == [(EXPOSURE, 10)]
    consumer._committed_offset[RANKING], consumer.starts[RANKING] = 3, 5  # 3 and 4 deleted, 5 and 6 kept
    lost = retention_lost(RANKING)
    assert took(lag, [Message(RANKING, 7)]) == [] and consumer.seeks[-1] == (RANKING, 5)
    assert retention_lost(RANKING) - lost == 2
    fresh = InputLag(App(Consumer()), ["hap.ranking", "hap.exposure"])  # nothing committed: from the log start
    fresh.reassigned({RANKING})
    assert took(fresh, [Message(RANKING, 0)]) == [(RANKING, 0)] and took(fresh, [Message(RANKING, 1)]) == [(RANKING, 1)]


def test_a_restart_before_faust_copied_the_groups_commit_resumes_there_and_is_no_skip():
    """After a SIGKILL the replacement's first records arrived before Faust's seek had copied the group's
    commit (its ``_committed_offset`` empty): the lag asks the coordinator, and offsets below the commit
    are no skip; past it they are read again."""
    consumer = Consumer()
    consumer.group_commits.update({RANKING: 34, EXPOSURE: 10})
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    assert took(lag, [Message(RANKING, 34)]) == [(RANKING, 34)]
    assert took(lag, [Message(EXPOSURE, 12)]) == [] and consumer.seeks == [(EXPOSURE, 10)]


def test_copies_of_records_taken_already_are_left_out():
    """Records below the next offset (read again after a seek, at a rebalance or by refetch_idle) were
    joined already in this assignment: not joined twice."""
    consumer = Consumer()
    consumer._committed_offset[RANKING] = 4
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    assert took(lag, left_out(RANKING, 4, 5, 6)) == [(RANKING, 4), (RANKING, 5), (RANKING, 6)]
    assert took(lag, left_out(RANKING, 5, 6, 7)) == [(RANKING, 7)]
    assert consumer.seeks == []


def test_a_partition_with_records_the_join_never_got_is_read_again_once_idle():
    """Faust dropped the records it fetched again after a seek, and none follow them: no later record
    shows the gap and its read offset says the end. After idle_s without a record the partition is read
    again from the offset the join expects (the committed one before it took any), at most once per
    idle_s; and it counts as behind meanwhile, so the join holds its windows."""
    consumer = Consumer()
    consumer._committed_offset[RANKING], consumer._read_offset[RANKING], consumer.ends[RANKING] = 24, 143, 143
    consumer._committed_offset[EXPOSURE], consumer.ends[EXPOSURE] = 50, 50  # caught up: never read again
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    assert lag("hap.ranking", 0) and not lag("hap.exposure", 0)
    asyncio.run(lag.refetch_idle(0.05))  # the clocks start now
    assert consumer.seeks == []
    asyncio.run(asyncio.sleep(0.1))
    asyncio.run(lag.refetch_idle(0.05))
    asyncio.run(lag.refetch_idle(0.05))  # not again within idle_s
    assert consumer.seeks == [(RANKING, 24)]
    assert took(lag, left_out(RANKING, 24, 25)) == [(RANKING, 24), (RANKING, 25)]
    asyncio.run(asyncio.sleep(0.1))
    asyncio.run(lag.refetch_idle(0.05))
    assert consumer.seeks[-1] == (RANKING, 26)


def ranking_behind_exposures() -> tuple[Consumer, InputLag]:
    """A ranking partition behind (the join expects offset 24, its end is 143) and 5,000 exposures to take, both
    assigned; the partitions' clocks started."""
    consumer = Consumer()
    consumer._committed_offset[RANKING], consumer.ends[RANKING] = 24, 143
    consumer._committed_offset[EXPOSURE], consumer.ends[EXPOSURE] = 0, 5000
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    asyncio.run(lag.refetch_idle(0.05))  # the clocks start now
    return consumer, lag


def test_a_partition_waiting_behind_full_batches_is_not_read_again():
    """A worker behind takes full batches: a partition's records can wait behind the others' in the stream for
    longer than idle_s. Its clock stands still meanwhile (before: read again every idle_s, the copies made the
    worker fall further behind); once the join takes less than a full batch, the clock runs from then."""
    consumer, lag = ranking_behind_exposures()
    consumer._read_offset[RANKING] = 143  # fetched to its end
    full = left_out(EXPOSURE, *range(app_module.BATCH_RECORDS))
    for _ in range(3):
        asyncio.run(asyncio.sleep(0.04))
        assert len(took(lag, full)) == app_module.BATCH_RECORDS
        full = left_out(EXPOSURE, *range(full[-1].offset + 1, full[-1].offset + 1 + app_module.BATCH_RECORDS))
        asyncio.run(lag.refetch_idle(0.05))
        assert asyncio.run(lag.stuck(0.05)) == []
    assert consumer.seeks == []  # 0.12 s without a ranking record, behind full batches
    took(lag, left_out(EXPOSURE, full[0].offset))  # caught up, the exposures at their end
    consumer.ends[EXPOSURE] = full[0].offset + 1
    asyncio.run(asyncio.sleep(0.1))
    asyncio.run(lag.refetch_idle(0.05))
    assert consumer.seeks == [(RANKING, 24)]


def test_a_partition_whose_fetched_records_wait_in_the_consumer_is_neither_read_again_nor_stuck():
    """On a backlog aiokafka hands out a partition's fetched records only after every partition fetched
    before it is drained: a ranking partition waited 7-40 s at a time behind the exposures while the join
    took partial batches, and was read again ten times in a row. While the consumer holds records of it
    unread its clock stands still; once it holds none, the clock runs from then."""
    consumer, lag = ranking_behind_exposures()
    consumer.positions[RANKING] = 60  # fetched to 60: not at its end
    consumer._fetcher._records[RANKING] = object()  # fetched, waiting behind the exposures
    for offset in range(3):  # the join takes partial batches of exposures
        asyncio.run(asyncio.sleep(0.04))
        took(lag, left_out(EXPOSURE, offset))
        asyncio.run(lag.refetch_idle(0.05))
        assert asyncio.run(lag.stuck(0.05)) == []
    assert consumer.seeks == []
    del consumer._fetcher._records[RANKING]  # handed over, and the join never got it
    consumer.ends[EXPOSURE] = 3  # the exposures caught up
    asyncio.run(lag.refetch_idle(0.05))
    assert consumer.seeks == []  # its clock runs from the last time it waited
    asyncio.run(asyncio.sleep(0.1))
    assert asyncio.run(lag.stuck(0.05)) == [RANKING]
    asyncio.run(lag.refetch_idle(0.05))
    assert consumer.seeks == [(RANKING, 24)]


def test_a_partition_faust_no_longer_asks_for_is_stuck_though_its_fetched_records_wait():
    """A partition Faust no longer asks aiokafka for keeps its fetched records in aiokafka's buffer for ever: stuck
    after stall_s. One held back by Faust's flow control (the stream's buffer full) is asked for again once the
    stream drains: its records wait their turn."""
    consumer, lag = ranking_behind_exposures()
    consumer.positions[RANKING] = 60
    consumer.ends[EXPOSURE] = 0  # nothing else behind
    consumer._fetcher._records[RANKING] = object()
    consumer.paused.add(RANKING)
    consumer._buffered_partitions.add(RANKING)
    asyncio.run(asyncio.sleep(0.1))
    assert asyncio.run(lag.stuck(0.05)) == []
    consumer._buffered_partitions.clear()
    assert asyncio.run(lag.stuck(0.05)) == []  # its clock ran from the last time it waited
    asyncio.run(asyncio.sleep(0.1))
    assert asyncio.run(lag.stuck(0.05)) == [RANKING]
