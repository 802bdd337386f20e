"""The streams worker's view of its input partitions, over a fake consumer: behind or not, stuck or
not, and offsets skipped within one assignment."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.worker.app import InputLag, refuse_gap_acks

RANKING, EXPOSURE = TP("hap.ranking", 0), TP("hap.exposure", 0)


class Consumer:
    """What :class:`InputLag` reads of Faust's consumer: assignment, end offsets, positions."""

    def __init__(self) -> None:
        self.ends: dict[TP, int | None] = {RANKING: None, EXPOSURE: None}
        self.positions: dict[TP, int] = {RANKING: 0, EXPOSURE: 0}
        self._read_offset: dict[TP, int | None] = {}

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        assert tp in self.ends, "Partition is not assigned"
        return self.ends[tp]

    async def position(self, tp: TP) -> int:
        return self.positions[tp]


@dataclasses.dataclass
class App:
    consumer: Consumer
    log: Any = dataclasses.field(default_factory=lambda: logging.getLogger("test"))


@dataclasses.dataclass
class Message:
    tp: TP
    offset: int


def test_behind_means_records_wait_that_the_join_has_not_taken():
    consumer = Consumer()
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    assert lag("hap.ranking", 0)  # not fetched yet: behind
    assert not lag("hap.ranking", 7)  # not assigned here
    consumer.ends[RANKING], consumer._read_offset[RANKING] = 10, 10  # committed at the end: caught up
    assert not lag("hap.ranking", 0)
    consumer.ends[RANKING] = 12
    assert lag("hap.ranking", 0)
    lag.took([Message(RANKING, 10), Message(RANKING, 11)])
    assert not lag("hap.ranking", 0)


def test_a_partition_behind_that_the_consumer_does_not_fetch_is_stuck_after_stall_s():
    consumer = Consumer()
    lag = InputLag(App(consumer), ["hap.ranking", "hap.exposure"])
    consumer.ends[EXPOSURE], consumer.positions[EXPOSURE] = 500, 500  # fetched to its end
    lag.took([Message(EXPOSURE, 499)])
    consumer.ends[RANKING], consumer.positions[RANKING] = 80, 40  # 40 records never fetched
    assert asyncio.run(lag.stuck(0.05)) == []  # its clock starts now
    asyncio.run(asyncio.sleep(0.1))
    assert asyncio.run(lag.stuck(0.05)) == [RANKING]
    consumer.positions[RANKING] = 80  # fetched (a trailing marker the join never sees): not stuck
    assert asyncio.run(lag.stuck(0.05)) == []
    consumer.positions[RANKING] = 40
    lag.took([Message(RANKING, 40)])  # it moves: not stuck
    assert asyncio.run(lag.stuck(0.05)) == []


def test_offsets_skipped_in_a_partition_kept_across_rebalances_are_reported_and_a_moved_one_is_no_gap():
    lag = InputLag(App(Consumer()), ["hap.ranking", "hap.exposure"])
    lag.reassigned({RANKING, EXPOSURE})
    assert lag.took([Message(EXPOSURE, 5), Message(EXPOSURE, 6), Message(RANKING, 2)]) == []
    assert lag.took([Message(EXPOSURE, 9), Message(RANKING, 3)]) == [(EXPOSURE, 7, 8)]  # never reached the join
    lag.reassigned({RANKING})  # the exposure partition moved to another worker, the ranking one stayed
    lag.reassigned({RANKING, EXPOSURE})  # and back: where it resumes is no gap
    assert lag.took([Message(EXPOSURE, 30)]) == []
    assert lag.took([Message(RANKING, 9)]) == [(RANKING, 4, 8)]  # kept all along: a gap, rebalances or not
    assert lag.took([Message(TP("hap.streams-ticks", 0), 1), Message(TP("hap.streams-ticks", 0), 7)]) == []


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
