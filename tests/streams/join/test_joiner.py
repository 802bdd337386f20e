"""The join without a broker: groups, orphans, late feedback, corrections, retention, invalid input,
state written once per batch, and a restart from the tables alone."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import hashlib
import os
import threading
from collections import Counter
from typing import Any

import orjson
import zstandard

from streams.contract.schemas import (
    Candidate,
    ExposureEvent,
    ItemUpdate,
    RankingEvent,
    SampleGroup,
    decode_sample_group,
    encode,
)
from streams.join.assembler import AssemblerConfig, group_id
from streams.join.joiner import (
    ADOPTION_GRACE_MS,
    GROUP_ZSTD_LEVEL,
    JoinConfig,
    Joiner,
    JoinTables,
    MemoryTable,
    pack_group,
    unpack_group,
)
from streams.join.pool import CandidatePool

T0 = 1_700_000_000_000
CONFIG = JoinConfig(assembler=AssemblerConfig(window_ms=1_000, lateness_ms=0), retention_ms=60_000)


@dataclasses.dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple = ()


class Features:
    """The feature store's side, in memory: counts and histories kept, no statistics."""

    def __init__(self) -> None:
        self.counts: list[tuple[str, str]] = []
        self.histories: dict[str, list[str]] = {}

    def count(self, event: ExposureEvent, dwell_threshold_ms: int, topic: str, partition: int, offset: int) -> None:
        self.counts.append((event.item_id, event.type))

    def set_history(self, user_id: str, history: list[str]) -> None:
        self.histories[user_id] = history

    def flush(self) -> None:
        pass

    async def read_groups(self, requests):
        return [[{"exp_1d": 1.0} for _ in ids] for ids, *_ in requests]


class CountingTable(MemoryTable):
    """A memory table that counts its writes (changelog records) by key."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: Counter[str] = Counter()

    def put(self, key: str, value: Any, partition: int) -> None:
        self.writes[key] += 1
        super().put(key, value, partition)


class ReadCountingTable(MemoryTable):
    """A memory table that counts its reads by key, and the partitions they name."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.partitions: Counter[int | None] = Counter()

    def get(self, key: str, partition: int | None = None) -> Any:
        self.reads[key] += 1
        self.partitions[partition] += 1
        return super().get(key, partition)


class Harness:
    def __init__(self, config: JoinConfig = CONFIG, tables: JoinTables | None = None) -> None:
        self.tables = tables or JoinTables(CountingTable(), MemoryTable(), MemoryTable(), MemoryTable())
        self.out: list[tuple[str, bytes | None, bytes]] = []
        self.features = Features()
        self.pool = CandidatePool()
        for i in range(100):
            self.pool.add(f"pool-{i}", "news")
        self.now = T0
        self.joiner = Joiner(config, self.tables, lambda kind, key, value: self.out.append((kind, key, value)),
                             self.features, self.pool, clock=lambda: self.now)
        self.offset = 0

    def record(self, topic: str, value: bytes, key: bytes | None = None, partition: int = 0) -> Rec:
        self.offset += 1
        return Rec(f"hap.{topic}", partition, self.offset, key, value)

    def run(self, *records: Rec) -> None:
        asyncio.run(self.joiner.process(list(records)))

    def tick(self, at_ms: int, partition: int = 0) -> None:
        self.now = at_ms
        self.run(self.record("streams-ticks", b"", b"tick", partition))

    def groups(self) -> list[SampleGroup]:
        return [decode_sample_group(v) for kind, _, v in self.out if kind == "samples"]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for kind, _, v in self.out if kind == "dlq"]


def ranking(rid: str, n: int = 300, ts: int = T0) -> RankingEvent:
    """Candidates c0..c{n-1}, pre-ranked at i, ranked at i for i < 120 (rn: 51..119, prn: 201..)."""
    return RankingEvent(rid, f"user-{rid}", ts, [
        Candidate(f"c{i}", "hot", i, 1.0 - i / n, i if i < 120 else None, 0.5, "video") for i in range(n)],
        {"history": ["old"]})


def shown(rid: str, item: str, position: int, ts: int = T0 + 100) -> ExposureEvent:
    return ExposureEvent(rid, f"user-{rid}", item, ts, "exposure", position=position)


def click(rid: str, item: str, ts: int = T0 + 200) -> ExposureEvent:
    return ExposureEvent(rid, f"user-{rid}", item, ts, "feedback", click=True)


def request(h: Harness, rid: str, *events: ExposureEvent) -> list[Rec]:
    return [h.record("ranking", encode(ranking(rid)), rid.encode()),
            *(h.record("exposure", encode(e), rid.encode()) for e in events)]


def test_a_request_joins_into_one_labelled_group_when_its_window_closes():
    h = Harness()
    h.now = T0 + 300
    h.run(*request(h, "r1", shown("r1", "c0", 0), shown("r1", "c1", 1), click("r1", "c1")))
    h.tick(T0 + 900)  # within the window: nothing yet
    assert h.groups() == [] and h.tables.pending.get("r1")["exposed"] == {"c0": 0, "c1": 1}
    h.tick(T0 + 1_400)  # a second without events: closed by wall time
    [group] = h.groups()
    assert group.group_id == group_id("r1") and group.user_id == "user-r1" and group.event_ts_ms == T0
    assert [(i.item_id, i.source, i.label) for i in group.items if i.source.startswith("exp_")] == [
        ("c0", "exp_neg", 0), ("c1", "exp_pos", 1)]
    sources = Counter(i.source for i in group.items)
    assert sources == {"exp_pos": 1, "exp_neg": 1, "rn": 10, "prn": 10, "gn": 4}
    assert all(50 < i.rank_pos < 120 for i in group.items if i.source == "rn")
    assert all(i.prerank_pos > 200 and i.rank_pos is None for i in group.items if i.source == "prn")
    assert all(i.item_id.startswith("pool-") and i.features == {"exp_1d": 1.0}
               for i in group.items if i.source == "gn")
    assert h.features.histories == {"user-r1": ["old", "c1"]}
    assert h.features.counts == [("c0", "exposure"), ("c1", "exposure"), ("c1", "feedback")]
    assert h.tables.pending.get("r1") is None and h.tables.rankings.get("r1") is None  # open state forgotten
    assert h.tables.finalized.get("r1")["positive"] == ["c1"]
    assert unpack_group(h.tables.emitted.get("r1")) == h.out[0][2]
    assert h.dead_letters() == []


def test_the_pending_state_is_written_once_per_batch_not_once_per_event():
    h = Harness()
    events = [shown("r1", f"c{i}", i) for i in range(10)] + [click("r1", "c3")]
    h.run(*request(h, "r1", *events[:6]))
    h.run(*[h.record("exposure", encode(e), b"r1") for e in events[6:]])
    assert h.tables.pending.writes == {"r1": 2}  # two batches, eleven events
    h.tick(T0 + 5_000)
    assert Counter(i.source for i in h.groups()[0].items)["exp_pos"] == 1


def test_a_batch_looks_a_pending_request_up_among_the_finalized_once():
    """The finalized table is read for a request's first event of a batch only: once the batch holds its
    pending state it is not finalized (on RocksDB a miss looks in every partition's database). A late
    event of a request finalized in an earlier batch still finds it."""
    finalized = ReadCountingTable()
    h = Harness(tables=JoinTables(CountingTable(), MemoryTable(), finalized, MemoryTable()))
    h.run(*request(h, "r1", *[shown("r1", f"c{i}", i) for i in range(10)]))
    assert finalized.reads["r1"] == 1  # eleven events
    h.tick(T0 + 5_000)
    h.run(*[h.record("exposure", encode(click("r1", item)), b"r1") for item in ("c3", "c4")])
    assert finalized.reads["r1"] == 3 and [g.correction for g in h.groups()] == [False, True, True]


def test_every_table_read_names_the_request_s_partition():
    """The join reads a request's entries in the partition of its records (a store kept by partition, as
    RocksDB, then looks in that partition's database alone): joining, finalizing, and a late click's
    correction."""
    tables = JoinTables(ReadCountingTable(), ReadCountingTable(), ReadCountingTable(), ReadCountingTable())
    h = Harness(tables=tables)
    h.run(*[dataclasses.replace(r, partition=2) for r in request(h, "r1", shown("r1", "c0", 0), shown("r1", "c1", 1))])
    h.tick(T0 + 5_000, partition=2)
    h.run(dataclasses.replace(h.record("exposure", encode(click("r1", "c1")), b"r1"), partition=2))
    assert [g.correction for g in h.groups()] == [False, True]
    assert all(set(t.partitions) == {2} for t in (tables.pending, tables.rankings, tables.finalized, tables.emitted))


def test_requests_on_several_partitions_close_with_their_partitions_ticks():
    h = Harness()
    h.run(*request(h, "p0", shown("p0", "c0", 0)),
          *[dataclasses.replace(r, partition=1) for r in request(h, "p1", shown("p1", "c0", 0))])
    h.tick(T0 + 5_000, partition=1)
    assert [g.request_id for g in h.groups()] == ["p1"]
    h.tick(T0 + 5_000, partition=0)
    assert [g.request_id for g in h.groups()] == ["p1", "p0"]


def _one_partition_behind(h: Harness) -> None:
    """r0's partition 0 is past its window; partition 1, active, is 5 s of event time behind."""
    h.now = T0 + 60_000  # every event in the past
    h.run(*_on(h, 0, "r0", T0), *_on(h, 0, "r0-next", T0 + 5_000), *_on(h, 1, "r1", T0 - 5_000))
    h.tick(T0 + 60_100)


def _on(h: Harness, partition: int, rid: str, ts: int) -> list[Rec]:
    return [h.record("ranking", encode(ranking(rid, ts=ts)), rid.encode(), partition),
            h.record("exposure", encode(shown(rid, "c0", 0, ts=ts)), rid.encode(), partition)]


def test_aligned_a_window_waits_for_every_partition_that_is_behind_in_event_time():
    """The group's item statistics count the exposures of every partition before its request: a replay
    in log time sends hours of events in seconds, and a partition a little behind is minutes of event
    time behind; its window closed by its own partition's watermark read statistics short of them."""
    h = Harness(dataclasses.replace(CONFIG, align_partitions=True))
    _one_partition_behind(h)
    assert h.groups() == []
    h.run(*_on(h, 1, "r1-next", T0 + 5_000))  # partition 1 catches up
    h.tick(T0 + 60_200)
    assert "r0" in {g.request_id for g in h.groups()}


def test_by_default_a_window_closes_by_its_own_partition():
    """In production partitions move together in wall time: waiting for the slowest active one would hold
    every window by up to the quietest partition's idle time (a Redis outage test saw no group, and so no
    publish, for its whole 5 s)."""
    h = Harness()
    _one_partition_behind(h)
    assert "r0" in {g.request_id for g in h.groups()}


def test_orphans_are_dead_lettered_and_feedback_on_a_candidate_implies_its_exposure():
    h = Harness()
    stray = click("r1", "not-a-candidate")
    h.run(*request(h, "r1", shown("r1", "c0", 0), click("r1", "c7"), stray),
          h.record("exposure", encode(shown("lonely", "x", 0)), b"lonely"))
    h.tick(T0 + 5_000)
    [group] = h.groups()
    assert [(i.item_id, i.source) for i in group.items if i.source.startswith("exp_")] == [
        ("c0", "exp_neg"), ("c7", "exp_pos")]  # c7: clicked, never shown: exposed by implication, listed last
    letters = sorted(h.dead_letters(), key=lambda d: d["request_id"])
    assert [(d["request_id"], d["reason_kind"]) for d in letters] == [("lonely", "orphan"), ("r1", "orphan")]
    assert letters[0]["details"]["state"]["exposed"] == {"x": 0}  # exposures without a ranking event
    assert letters[1]["details"] == {"item_id": "not-a-candidate"}
    assert base64.b64decode(letters[1]["original"]) == encode(stray)  # the feedback's own bytes


def test_a_late_positive_corrects_the_group_and_anything_else_late_is_dead_lettered():
    h = Harness()
    h.run(*request(h, "r1", shown("r1", "c0", 0), shown("r1", "c1", 1)))
    h.tick(T0 + 5_000)
    h.run(h.record("exposure", encode(click("r1", "c1", T0 + 4_000)), b"r1"))  # late positive: a correction
    h.run(h.record("exposure", encode(click("r1", "c1", T0 + 4_100)), b"r1"))  # the same again: idempotent
    h.run(h.record("exposure", encode(shown("r1", "c2", 2, T0 + 4_200)), b"r1"),  # late exposure: dead letter
          h.record("ranking", encode(ranking("r1")), b"r1"))  # a replayed ranking event: dead letter
    original, fix = h.groups()
    assert fix.correction and fix.group_id == group_id("r1", 1)
    assert [i.item_id for i in fix.items] == [i.item_id for i in original.items]  # same samples, relabelled
    assert {i.item_id: i.label for i in fix.items if i.source.startswith("exp_")} == {"c0": 0, "c1": 1}
    assert [(d["request_id"], d["reason_kind"]) for d in h.dead_letters()] == [("r1", "late"), ("r1", "late")]
    h.run(h.record("exposure", encode(click("r1", "c0", T0 + 4_300)), b"r1"))  # a second correction
    assert [g.group_id for g in h.groups()] == [group_id("r1", r) for r in (0, 1, 2)]
    assert {i.item_id for i in h.groups()[-1].items if i.label} == {"c0", "c1"}


def test_a_late_positive_whose_emitted_group_a_crash_lost_is_dead_lettered_not_a_crash():
    h = Harness()
    h.run(*request(h, "r1", shown("r1", "c0", 0)))
    h.tick(T0 + 5_000)
    h.tables.emitted.delete("r1", 0)  # its changelog write lost with a killed broker; finalized kept
    h.run(h.record("exposure", encode(click("r1", "c0", T0 + 4_000)), b"r1"))  # before: an exception per replay
    assert len(h.groups()) == 1 and [d["reason_kind"] for d in h.dead_letters()] == ["late"]


def test_without_corrections_a_late_positive_is_dead_lettered():
    h = Harness(dataclasses.replace(CONFIG, corrections=False))
    h.run(*request(h, "r1", shown("r1", "c0", 0)))
    h.tick(T0 + 5_000)
    h.run(h.record("exposure", encode(click("r1", "c0", T0 + 4_000)), b"r1"))
    assert len(h.groups()) == 1 and [d["reason_kind"] for d in h.dead_letters()] == ["late"]


def test_a_finalized_request_keeps_only_what_late_events_and_corrections_use():
    """Its exposed ids (no positions), positives, revision and event ids; its group only while a late click can
    still correct it (an exposed item not positive yet, corrections on), and compressed."""
    h = Harness()
    h.run(*request(h, "r1", shown("r1", "c0", 0), shown("r1", "c1", 1), click("r1", "c1")),
          *request(h, "r2", shown("r2", "c0", 0), click("r2", "c0")))
    h.tick(T0 + 5_000)
    done = h.tables.finalized.get("r1")
    assert done["exposed"] == ["c0", "c1"] and done["positive"] == ["c1"] and done["revision"] == 0
    packed = h.tables.emitted.get("r1")
    assert unpack_group(packed) == next(v for _, k, v in h.out if k == b"r1")
    assert len(packed) < len(unpack_group(packed)) / 3
    assert h.tables.emitted.get("r2") is None  # every exposed item positive: nothing a late click could correct
    h.run(h.record("exposure", encode(click("r1", "c0", T0 + 4_000)), b"r1"))  # corrects r1: its last negative
    assert [g.group_id for g in h.groups() if g.correction] == [group_id("r1", 1)]
    assert h.tables.emitted.get("r1") is None and h.tables.finalized.get("r1")["revision"] == 1
    off = Harness(dataclasses.replace(CONFIG, corrections=False))
    off.run(*request(off, "r1", shown("r1", "c0", 0)))
    off.tick(T0 + 5_000)
    assert off.tables.finalized.get("r1") is not None and off.tables.emitted.get("r1") is None


def test_finalized_requests_are_forgotten_after_the_retention():
    h = Harness()
    h.run(*request(h, "r1", shown("r1", "c0", 0)))
    h.tick(T0 + 5_000)
    h.tick(T0 + 5_000 + CONFIG.retention_ms - 1)
    assert h.tables.finalized.get("r1") is not None and h.tables.emitted.get("r1") is not None
    h.tick(T0 + 5_000 + CONFIG.retention_ms + 1)
    assert h.tables.finalized.get("r1") is None and h.tables.emitted.get("r1") is None
    assert not any(h.joiner.closed.values())


def test_invalid_and_future_records_are_dead_lettered_with_their_bytes_and_move_no_watermark():
    h = Harness()
    ahead = shown("r9", "c0", 0, ts=T0 + 60_000)
    h.run(h.record("ranking", b"{not json", b"bad-1"),
          h.record("exposure", orjson.dumps({"schema_version": 1, "type": "exposure"}), b"bad-2"),
          h.record("exposure", encode(ahead), b"r9"))
    letters = h.dead_letters()
    assert [(d["request_id"], d["reason_kind"]) for d in letters] == [
        ("bad-1", "json"), ("bad-2", "schema"), ("r9", "future")]
    assert letters[1]["reason"].startswith("request_id: ") and base64.b64decode(letters[0]["original"]) == b"{not json"
    assert h.joiner.watermark(0, T0) is None and h.tables.pending.get("r9") is None


def test_a_restarted_joiner_recovers_from_the_tables_and_emits_the_same_group():
    h = Harness()
    h.run(*request(h, "r1", shown("r1", "c0", 0), click("r1", "c0")))
    restarted = Harness(tables=copy.deepcopy(h.tables))  # a fresh worker: only the tables survive
    restarted.joiner.rebuild()
    restarted.tick(T0 + 5_000 + ADOPTION_GRACE_MS)  # a quiet partition: the adopted request waits out the grace
    h.tick(T0 + 5_000)  # the crashed worker had emitted it too (at-least-once)
    [again], [first] = restarted.groups(), h.groups()
    assert again.group_id == first.group_id == group_id("r1")
    assert [(i.item_id, i.source, i.label) for i in again.items if i.source != "gn"] == \
        [(i.item_id, i.source, i.label) for i in first.items if i.source != "gn"]


def test_a_replayed_ranking_event_restores_the_rankings_entry_a_broker_crash_lost():
    # the broker was SIGKILLed after it took the pending state's changelog write and before the rankings
    # table's: the replacement restores a request that saw its ranking event, without the event, and the
    # replay from the last commit brings that event again (before: a "duplicate", dropped; the group was lost)
    h = Harness()
    records = request(h, "r1", shown("r1", "c0", 0))
    h.run(*records)
    tables = copy.deepcopy(h.tables)
    tables.rankings.delete("r1", 0)
    restarted = Harness(tables=tables)
    restarted.joiner.rebuild()
    restarted.run(*records)
    restarted.tick(T0 + 5_000 + ADOPTION_GRACE_MS)
    [group] = restarted.groups()
    assert group.group_id == group_id("r1") and restarted.dead_letters() == []


def test_a_topic_consumed_behind_the_other_holds_the_windows_open_until_it_catches_up():
    # a backlog: the exposure topic is read far ahead of the ranking topic (smaller records)
    h = Harness()
    h.now = T0 + 41_000
    h.run(h.record("ranking", encode(ranking("r0")), b"r0"),
          h.record("exposure", encode(shown("r1", "c0", 0, ts=T0 + 30_000)), b"r1"),
          h.record("exposure", encode(shown("r2", "c0", 0, ts=T0 + 40_000)), b"r2"))
    h.tick(T0 + 41_500)  # both topics active: the ranking topic, at T0, holds the watermark
    assert h.dead_letters() == [] and h.groups() == []
    h.run(h.record("ranking", encode(ranking("r1", ts=T0 + 29_900)), b"r1"),
          h.record("ranking", encode(ranking("r2", ts=T0 + 39_900)), b"r2"))
    h.tick(T0 + 45_000)  # quiet now: every window closes
    assert sorted(g.request_id for g in h.groups()) == ["r0", "r1", "r2"] and h.dead_letters() == []


def test_a_topic_that_is_behind_holds_the_windows_open_while_its_records_come_few_and_far_between():
    # a replay: the ranking topic's large records come a few per fetch, and none in the exposure
    # topic's batches that follow; the consumer says records of it are waiting all the while
    behind = {"hap.ranking"}
    h = Harness()
    h.joiner.lagging = lambda topic, partition: topic in behind
    h.now = T0 + 41_000
    h.run(h.record("ranking", encode(ranking("r0")), b"r0"),
          h.record("exposure", encode(shown("r1", "c0", 0, ts=T0 + 30_000)), b"r1"))
    h.now = T0 + 45_000  # four seconds of exposure batches: idle by wall time, but behind
    h.run(h.record("exposure", encode(shown("r2", "c0", 0, ts=T0 + 40_000)), b"r2"),
          h.record("streams-ticks", b"", b"tick"))
    assert h.dead_letters() == []
    h.run(h.record("ranking", encode(ranking("r1", ts=T0 + 29_900)), b"r1"),
          h.record("ranking", encode(ranking("r2", ts=T0 + 39_900)), b"r2"))
    behind.clear()  # caught up
    h.tick(T0 + 50_000)
    assert sorted(g.request_id for g in h.groups()) == ["r0", "r1", "r2"] and h.dead_letters() == []
    stuck = Harness()  # and a topic that stays behind but brings nothing holds them for a bounded time only
    stuck.joiner.lagging = lambda topic, partition: topic == "hap.ranking"
    stuck.now = T0 + 41_000
    stuck.run(stuck.record("ranking", encode(ranking("r0")), b"r0"),
              stuck.record("exposure", encode(shown("r1", "c0", 0, ts=T0 + 30_000)), b"r1"))
    stuck.now = T0 + 41_000 + CONFIG.lagging_hold_ms - 1_000
    stuck.run(stuck.record("exposure", encode(shown("r2", "c0", 0, ts=T0 + 40_000)), b"r2"),
              stuck.record("streams-ticks", b"", b"tick"))
    assert stuck.dead_letters() == []
    stuck.now = T0 + 41_000 + CONFIG.lagging_hold_ms
    stuck.run(stuck.record("exposure", encode(shown("r3", "c0", 0, ts=T0 + 50_000)), b"r3"),
              stuck.record("streams-ticks", b"", b"tick"))
    assert sorted(d["request_id"] for d in stuck.dead_letters()) == ["r1", "r2"]


def test_a_batch_slower_than_the_window_does_not_make_its_topics_look_idle():
    h = Harness()
    h.now = T0 + 41_000
    handle = h.joiner.handle

    def slow(record, wall):  # each record takes two seconds of the worker's time (a loaded machine)
        handle(record, wall)
        h.now += 2_000

    h.joiner.handle = slow
    h.run(h.record("ranking", encode(ranking("r0")), b"r0"),
          h.record("exposure", encode(shown("r1", "c0", 0, ts=T0 + 30_000)), b"r1"),
          h.record("exposure", encode(shown("r2", "c0", 0, ts=T0 + 40_000)), b"r2"),
          h.record("streams-ticks", b"", b"tick"))
    assert h.dead_letters() == []  # the ranking topic, at T0, still holds the windows open


def test_a_recovered_request_gets_a_full_window_of_this_workers_time_for_its_ranking_event():
    # the crashed worker took the exposures but not yet the ranking event (another topic, consumed
    # behind); its replacement starts long after, replays the ranking event after its first tick
    h = Harness()
    h.run(h.record("exposure", encode(shown("r1", "c0", 0)), b"r1"))
    restarted = Harness(tables=copy.deepcopy(h.tables))
    restarted.now = T0 + 60_000  # the session timeout, the recovery: a minute of wall time went by
    restarted.joiner.rebuild()
    restarted.tick(T0 + 65_000)  # longer than the window, shorter than the grace
    assert restarted.dead_letters() == []  # not an orphan: the replay has not delivered its ranking event yet
    restarted.run(restarted.record("ranking", encode(ranking("r1")), b"r1"))
    restarted.tick(T0 + 80_000)
    [group] = restarted.groups()
    assert [(i.item_id, i.source) for i in group.items if i.source.startswith("exp_")] == [("c0", "exp_neg")]
    lonely = Harness(tables=copy.deepcopy(h.tables))  # and one whose ranking event never comes is still an orphan
    lonely.now = T0 + 60_000
    lonely.joiner.rebuild()
    lonely.tick(T0 + 69_000)
    assert lonely.dead_letters() == []
    lonely.tick(T0 + 60_000 + ADOPTION_GRACE_MS + 1_000)  # the window after the grace, nothing came: quiet
    assert [d["reason_kind"] for d in lonely.dead_letters()] == ["orphan"]


def test_the_catalogue_fills_the_pool_and_only_the_partitions_owner_dead_letters_its_invalid_records():
    h = Harness()
    valid = h.record("items", encode(ItemUpdate("new-item", "video", T0)), b"new-item", partition=3)
    invalid = h.record("items", b'{"item_id": 7}', b"x", partition=3)
    for record in (valid, invalid):  # every worker follows every partition: into the pool, invalid skipped
        h.joiner.catalogue(record)
    assert h.pool.types["new-item"] == "video" and len(h.pool) == 101 and h.out == []
    owner = Harness()  # the worker that owns partition 3 in the group: dead letters, and no pool change
    for record in (valid, invalid):
        owner.joiner.check_item(record)
    assert [(d["reason_kind"], d["partition"]) for d in owner.dead_letters()] == [("schema", 3)]
    assert "new-item" not in owner.pool.types


def test_an_undecodable_batch_is_dead_lettered_once():
    from streams.kafka.decode_guard import UNDECODABLE_HEADER, Undecodable, encode_marker_header

    h = Harness()
    header = [(UNDECODABLE_HEADER, encode_marker_header(Undecodable("lz4: missing", "lz4", 5, 6)))]
    h.run(Rec("hap.ranking", 0, 5, None, b"batch", header), Rec("hap.ranking", 0, 6, None, b"", header))
    assert [(d["reason_kind"], d["offset"], d["details"]["last_offset"]) for d in h.dead_letters()] == [
        ("undecodable", 5, 6)]


def test_a_request_with_more_items_than_a_group_may_hold_is_dead_lettered_and_its_state_stays_bounded():
    """A request whose exposed items (and items with feedback) pass ``max_request_items`` (a client
    reusing its request_id, a hostile producer) is closed at once: one ``oversized_request`` dead letter
    with the crossing event's bytes, no group (it would be refused by the learner, or train on a mix of
    requests), no pending state kept; its later events are dead-lettered as ``late`` while it is
    retained. A request beside it is untouched."""
    config = dataclasses.replace(CONFIG, assembler=dataclasses.replace(CONFIG.assembler, max_request_items=40))
    h = Harness(config)
    h.run(*request(h, "r1", *(shown("r1", f"c{i}", i) for i in range(30))),
          *request(h, "r2", shown("r2", "c0", 0)))
    assert len(h.tables.pending.get("r1")["exposed"]) == 30
    crossing = [h.record("exposure", encode(click("r1", "not-a-candidate")), b"r1"),  # an item with feedback counts
                *(h.record("exposure", encode(shown("r1", f"c{i}", i)), b"r1") for i in range(30, 45))]
    h.run(*crossing)  # the 41st item is c39, the eleventh record
    assert h.tables.pending.get("r1") is None and h.tables.rankings.get("r1") is None
    letter, *after = h.dead_letters()
    assert (letter["request_id"], letter["reason_kind"]) == ("r1", "oversized_request")
    assert base64.b64decode(letter["original"]) == crossing[10].value  # the event past the cap
    assert letter["details"] == {"items": 41, "cap": 40, "ranking": True}
    assert [d["reason_kind"] for d in after] == ["late"] * 5  # c40..c44, in the same batch
    h.tick(T0 + 5_000)
    assert [g.request_id for g in h.groups()] == ["r2"]
    assert len(h.dead_letters()) == 6
    assert h.tables.finalized.get("r1")["exposed"] == []  # bounded: nothing of the request kept


def test_a_group_bigger_than_the_learner_takes_is_dead_lettered_not_emitted():
    """The backstop: whatever the caps, a group whose encoding the decoder would refuse (over
    ``max_message_bytes`` or ``max_candidates`` items) is not sent; it is dead-lettered as
    ``oversized_request`` with its encoding (the first 256 KiB, its size and SHA-256), and the request
    is finalized (a late click is dead-lettered, not a correction of a group never emitted)."""

    class BigFeatures(Features):
        async def read_groups(self, requests):
            return [[{f"statistic-{k:04d}-" + "x" * 40: 0.123456789 for k in range(250)} for _ in ids]
                    for ids, *_ in requests]  # 21 KB an item

    h = Harness()
    h.joiner.features = h.features = BigFeatures()
    h.run(*request(h, "r1", *(shown("r1", f"c{i}", i) for i in range(20))))  # 80 items: 1.7 MB
    h.tick(T0 + 5_000)
    assert h.groups() == []
    [letter] = h.dead_letters()
    assert (letter["request_id"], letter["reason_kind"]) == ("r1", "oversized_request")
    assert letter["original_size"] > CONFIG.limits.max_message_bytes and letter["original_truncated"]
    assert h.tables.pending.get("r1") is None and h.tables.emitted.get("r1") is None
    h.run(h.record("exposure", encode(click("r1", "c0", T0 + 4_000)), b"r1"))
    assert [d["reason_kind"] for d in h.dead_letters()] == ["oversized_request", "late"]


def test_padded_feedback_on_unexposed_items_keeps_the_pending_state_small_and_is_dead_lettered_by_reference():
    """Eight feedback events padded with 880 KB of unknown fields, on items the request did not expose:
    the pending state (one changelog record) used to copy all their bytes (7 MB: the broker refused
    the record and the worker crash-looped). It keeps a bounded share of the bytes; each orphan's dead
    letter names its offset, size and SHA-256 (and holds the bytes when they were kept)."""
    h = Harness()
    padded = [orjson.dumps({**orjson.loads(encode(click("r1", f"x{i}"))), "pad": os.urandom(440_000).hex()})
              for i in range(8)]
    records = [h.record("ranking", encode(ranking("r1")), b"r1"),
               *(h.record("exposure", raw, b"r1") for raw in padded),
               h.record("exposure", encode(click("r1", "small")), b"r1")]
    h.run(*records)
    assert len(orjson.dumps(h.tables.pending.get("r1"))) < 256 * 1024
    h.tick(T0 + 5_000)
    letters = {d["details"]["item_id"]: d for d in h.dead_letters()}
    assert set(letters) == {f"x{i}" for i in range(8)} | {"small"}
    for i, raw in enumerate(padded):
        letter = letters[f"x{i}"]
        assert letter["reason_kind"] == "orphan" and letter["offset"] == records[1 + i].offset
        assert letter["original"] is None and letter["details"]["original_size"] == len(raw)
        assert letter["details"]["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(letters["small"]["original"]) == records[-1].value
    assert letters["small"]["offset"] == records[-1].offset


def test_a_retried_event_with_an_event_id_is_counted_and_joined_once_while_its_request_is_retained():
    from prometheus_client import REGISTRY

    def dropped() -> float:
        return REGISTRY.get_sample_value("hap_streams_duplicate_events_total", {"topic": "hap.exposure"}) or 0.0

    before = dropped()
    h = Harness()
    first = dataclasses.replace(ranking("r1"), event_id="rk")
    x0 = dataclasses.replace(shown("r1", "c0", 0), event_id="x0")
    f0 = dataclasses.replace(click("r1", "c0"), event_id="f0")
    x1 = shown("r1", "c1", 1)  # no event_id: a repeat cannot be told from a retry, both count
    h.run(h.record("ranking", encode(first), b"r1"), *(h.record("exposure", encode(e), b"r1")
                                                       for e in (x0, x0, f0, x1, f0, x1)))
    assert h.features.counts == [("c0", "exposure"), ("c0", "feedback"), ("c1", "exposure"), ("c1", "exposure")]
    assert dropped() - before == 2
    h.tick(T0 + 5_000)
    [group] = h.groups()
    assert {i.item_id: i.label for i in group.items if i.source.startswith("exp_")} == {"c0": 1, "c1": 0}
    # retried after the group was emitted (and by a worker that took the tables over): still dropped, not
    # counted, not dead-lettered as late; before, each was counted again and the exposure a late dead letter
    restarted = Harness(tables=copy.deepcopy(h.tables))
    restarted.joiner.rebuild()
    restarted.run(*(restarted.record("exposure", encode(e), b"r1") for e in (x0, f0)),
                  restarted.record("ranking", encode(first), b"r1"))
    assert restarted.features.counts == [] and restarted.out == [] and dropped() - before == 4
    restarted.run(restarted.record("exposure", encode(dataclasses.replace(x0, event_id="x0-new")), b"r1"))
    assert [d["reason_kind"] for d in restarted.dead_letters()] == ["late"]  # a new event: late, as before


def test_a_confluent_frame_and_a_structured_cloudevent_are_dead_lettered_with_a_reason_naming_them():
    h = Harness()
    plain = orjson.loads(encode(shown("r1", "c0", 0)))
    cloud = {"specversion": "1.0", "id": "e1", "source": "/app", "type": "hap.exposure",
             "data": {k: v for k, v in plain.items() if k != "schema_version"}}
    h.run(h.record("exposure", b"\x00" + (7).to_bytes(4, "big") + orjson.dumps(plain), b"r1"),
          h.record("exposure", orjson.dumps(cloud), b"r1"))
    assert [(d["reason_kind"], d["reason"].split(" is not accepted")[0]) for d in h.dead_letters()] == [
        ("json", "json: a Confluent Schema Registry frame (magic byte 0, schema id 7)"),
        ("schema", "schema_version: a structured CloudEvent (specversion '1.0')")]


def test_a_packed_group_is_the_frame_a_fresh_compressor_makes_in_every_thread() -> None:
    """The ``emitted`` table's format does not depend on the compressor kept per thread: each frame is the one
    a compressor made for it alone gives (workers before and after read each other's entries), also after
    other groups and in another thread."""
    groups = [os.urandom(n) + b'{"items": []}' * n for n in (0, 10, 5000)]
    fresh = [zstandard.ZstdCompressor(level=GROUP_ZSTD_LEVEL).compress(g) for g in groups]
    assert [pack_group(g) for g in groups] == fresh == [pack_group(g) for g in groups]
    other: list[bytes] = []
    thread = threading.Thread(target=lambda: other.extend(pack_group(g) for g in reversed(groups)))
    thread.start()
    thread.join()
    assert other == fresh[::-1] and [unpack_group(p) for p in fresh] == groups
