"""The join of ranking and exposure events into hybrid sample groups, without a broker.

:class:`Joiner` holds every rule of the streams worker: decode and validate each record,
dead-letter what is invalid (``hap.dlq``), join events by ``request_id`` into the pending
state, close join windows (:func:`streams.join.assembler.is_due`), label, sample and emit each
group, detect late events (a correction when a late positive relabels an emitted group,
else a dead letter), and forget finalized requests after ``retention_ms``. It works on
mapping-like tables (:class:`ChangelogTable`; Faust's changelog-backed tables in the
worker, :class:`MemoryTable` in tests), a ``send`` callable for what it produces and the
feature store's side (:class:`Features`); it never touches a broker, so it runs as it is in
unit tests.

Records come in batches (:meth:`Joiner.process`): each record is joined in order; a request's
pending state is written once per batch, not once per event; the windows of the partitions
that ticked in the batch are closed after its records, and the statistics of all the groups
they emit are read in one round trip. Ticks are the records of the ``streams-ticks`` topic,
one per partition twice a second, so windows close on quiet streams too.

Examples
--------
>>> import asyncio
>>> from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent, encode
>>> class Stats:
...     def count(self, event, dwell_threshold_ms, topic, partition, offset): pass
...     def set_history(self, user_id, history): pass
...     def flush(self): pass
...     async def read_groups(self, requests): return [[{} for _ in ids] for ids, *_ in requests]
>>> out = []
>>> joiner = Joiner(JoinConfig(), JoinTables.in_memory(), lambda kind, key, value: out.append((kind, key)),
...                 Stats(), CandidatePool(), clock=lambda: 10_000)
>>> Rec = collections.namedtuple("Rec", "topic partition offset key value headers")
>>> ranking = RankingEvent("r1", "u1", 1_000, [Candidate("i1", "hot", 0, 0.9, 0, 0.8, "video")])
>>> shown = ExposureEvent("r1", "u1", "i1", 1_100, "exposure", position=0)
>>> asyncio.run(joiner.process([Rec("hap.ranking", 0, 0, b"r1", encode(ranking), ()),
...                             Rec("hap.exposure", 0, 0, b"r1", encode(shown), ())]))
>>> joiner.clock = lambda: 60_000  # the window has closed by wall time
>>> asyncio.run(joiner.process([Rec("hap.streams-ticks", 0, 1, b"tick", b"", ())]))
>>> out
[('samples', b'r1')]
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import zstandard

from streams import metrics
from streams.contract.dlq import DeadLetter, request_id_of
from streams.contract.schemas import (
    ExposureEvent,
    InvalidEvent,
    ItemUpdate,
    Limits,
    RankingColumns,
    SampleGroup,
    decode_exposure,
    decode_item,
    decode_ranking_columns,
    decode_sample_group,
    encode,
    is_positive,
)
from streams.contract.validate import check_not_future
from streams.join.assembler import (
    AssemblerConfig,
    Choice,
    add_exposure,
    add_ranking,
    build,
    choose,
    is_due,
    item_count,
    new_pending,
    relabel,
    remember_event,
)
from streams.join.pool import CandidatePool
from streams.kafka import decode_guard
from streams.kafka.batch_producer import partition_of

log = logging.getLogger("hap.streams")
HISTORY_LEN = 50  # the user history written for the router: most recent positives last

#: the level the ``emitted`` groups are compressed at: a group's JSON repeats its feature names per item
#: (``bench/retained.py`` measures what it keeps)
GROUP_ZSTD_LEVEL = 3
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


#: each thread's zstd contexts (a context is not for two threads at once): a fresh one per group took 98 us
#: per group of the bench's (20 KB on average), a kept one 46
_zstd = threading.local()


def pack_group(value: bytes) -> bytes:
    """An encoded group as the ``emitted`` table keeps it: a zstd frame.

    >>> unpack_group(pack_group(b'{"group_id": "g"}')), unpack_group(b'{"group_id": "g"}')  # older: raw JSON
    (b'{"group_id": "g"}', b'{"group_id": "g"}')
    """
    compressor = getattr(_zstd, "compressor", None)
    if compressor is None:
        compressor = _zstd.compressor = zstandard.ZstdCompressor(level=GROUP_ZSTD_LEVEL)
    return compressor.compress(value)


def unpack_group(stored: bytes) -> bytes:
    """The encoded group of an ``emitted`` entry (one written before groups were packed: as it is)."""
    if stored[:4] != _ZSTD_MAGIC:
        return stored
    decompressor = getattr(_zstd, "decompressor", None)
    if decompressor is None:
        decompressor = _zstd.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(stored)


#: the bytes of feedback on unexposed items a request's pending state copies, in all (for the dead
#: letters of those that turn out orphans); past it a feedback event is kept by reference: its offset,
#: size and SHA-256. With ``max_request_items`` this bounds the state, one changelog record
FEEDBACK_KEPT_BYTES = 64 * 1024


def _keep_feedback(state: dict[str, Any], item_id: str, record: Record) -> None:
    """Remember the first feedback event on an item the request has not exposed: its offset, and its
    bytes while the request's share (:data:`FEEDBACK_KEPT_BYTES`) allows, else their size and SHA-256."""
    kept = state.setdefault("unexposed_feedback", {})
    if item_id in kept:
        return
    raw = record.value or b""
    used = state.get("unexposed_bytes", 0)
    if used + len(raw) <= FEEDBACK_KEPT_BYTES:
        kept[item_id] = {"offset": record.offset, "raw": raw.decode()}
        state["unexposed_bytes"] = used + len(raw)
    else:
        kept[item_id] = {"offset": record.offset, "raw": None, "size": len(raw),
                         "sha256": hashlib.sha256(raw).hexdigest()}


def now_ms() -> int:
    return int(time.time() * 1000)


class Record(Protocol):
    """What the join reads of a Kafka record (a Faust message has these attributes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class ChangelogTable(Protocol):
    """Mapping-like join state whose writes name the partition of their changelog record (a
    batch spans partitions; a request's partition is that of its input records)."""

    def get(self, key: str, partition: int | None = None) -> Any:
        """The value of ``key``, None if none; ``partition``: the changelog partition its writes name, when
        known (a request's: its records'), where a store kept by partition reads it alone."""

    def items(self) -> Iterable[tuple[str, Any]]: ...

    def put(self, key: str, value: Any, partition: int) -> None: ...

    def delete(self, key: str, partition: int) -> None: ...


class MemoryTable(dict[str, Any]):
    """A :class:`ChangelogTable` in memory (tests, offline runs): partitions are ignored.

    >>> t = MemoryTable()
    >>> t.put("r1", {"revision": 0}, partition=3)
    >>> t.get("r1"), t.delete("r1", 3), t.get("r1")
    ({'revision': 0}, None, None)
    """

    def get(self, key: str, partition: int | None = None) -> Any:  # type: ignore[override]
        return dict.get(self, key)

    def put(self, key: str, value: Any, partition: int) -> None:
        self[key] = value

    def delete(self, key: str, partition: int) -> None:
        self.pop(key, None)


@dataclasses.dataclass(frozen=True, slots=True)
class JoinTables:
    """The join's state, by request id."""

    pending: ChangelogTable  #: join state of open requests (:func:`streams.join.assembler.new_pending`)
    rankings: ChangelogTable  #: :class:`RankingColumns` of open requests, written once each
    #: exposed (ids), positive, revision, finalized_ms, partition, event_ids: kept ``retention_ms``
    finalized: ChangelogTable
    #: the last group of each finalized request a correction may still relabel, compressed (:func:`pack_group`)
    emitted: ChangelogTable

    @classmethod
    def in_memory(cls) -> JoinTables:
        return cls(MemoryTable(), MemoryTable(), MemoryTable(), MemoryTable())


class Features(Protocol):
    """The feature store's side of the join (:class:`streams.join.features.StreamFeatures`)."""

    def count(self, event: ExposureEvent, dwell_threshold_ms: int, topic: str, partition: int, offset: int) -> None:
        ...

    def set_history(self, user_id: str, history: list[str]) -> None: ...

    def flush(self) -> None: ...

    async def read_groups(self, requests: Sequence[tuple[Sequence[str], int, str, Sequence[str]]]
                          ) -> list[list[dict[str, float]]]: ...


#: how long a worker that took requests over from a changelog waits for their partition's replay to
#: start before it calls the partition quiet and closes their windows by wall time (the input
#: partitions resume only after the tables' recovery, seconds on a loaded machine)
ADOPTION_GRACE_MS = 10_000

#: (``"samples"`` or ``"dlq"``, key, value): a record for that topic
Send = Callable[[str, bytes | None, bytes], None]

#: (topic, partition) -> whether that input partition holds records the join has not taken yet
Lagging = Callable[[str, int], bool]


def never_lagging(topic: str, partition: int) -> bool:
    """The :data:`Lagging` of a join that is handed every record at once (tests, offline runs)."""
    return False


#: topic -> its partition count, None when unknown (then no record of it is checked for its partition)
PartitionCount = Callable[[str], int | None]


def unknown_partitions(topic: str) -> int | None:
    """The :data:`PartitionCount` of a join whose records carry no real partition (tests, offline runs)."""
    return None


@functools.lru_cache(maxsize=8192)
def _partition_of(request_id: str, partitions: int) -> int:
    """:func:`partition_of` of a request id, cached: a request's dozen events come close together, and
    murmur2 in Python costs about 3 us per key."""
    return partition_of(request_id.encode(), partitions)


def misrouted(record: Record, request_id: str, partitions: int) -> DeadLetter | None:
    """The dead letter of a ranking or exposure record that is not on the partition the contract's
    partitioner gives its request (murmur2 of the ``request_id``'s UTF-8 bytes, as Kafka's Java
    client, kafka-python and librdkafka's ``murmur2_random``); None when it is where it belongs.

    Such a record cannot be joined: the request's other events are on the partition its key
    names, in another worker's state. Sarama's default partitioner (FNV-1a), kafka-go's
    round-robin or a key other than the ``request_id`` put it there.

    >>> from collections import namedtuple
    >>> Rec = namedtuple("Rec", "topic partition offset key value")
    >>> partition_of(b"req-1", 4)
    3
    >>> misrouted(Rec("hap.exposure", 3, 9, b"req-1", b"{}"), "req-1", 4) is None
    True
    >>> letter = misrouted(Rec("hap.exposure", 0, 9, b"req-1", b"{}"), "req-1", 4)
    >>> letter.reason_kind, letter.details
    ('misrouted', {'expected_partition': 3, 'partitions': 4})
    >>> letter.reason[:70]
    "misrouted: on partition 0 of 4, but murmur2 of its request_id 'req-1' "
    """
    right = _partition_of(request_id, partitions)
    if record.partition == right:
        return None
    key = "" if record.key == request_id.encode() else \
        f" (its Kafka key is {record.key.decode('utf-8', 'replace')!r}, not the request_id)" if record.key else \
        " (it has no Kafka key)"
    return DeadLetter(
        "misrouted", f"misrouted: on partition {record.partition} of {partitions}, but murmur2 of its request_id "
        f"{request_id!r} gives partition {right}, where the request's other events are{key}: partition with murmur2 "
        "of the request_id as the Kafka key (docs/contracts.md, Producers)",
        request_id, record.topic, record.partition, record.offset, record.value or b"",
        {"expected_partition": right, "partitions": partitions})


@dataclasses.dataclass(frozen=True, slots=True)
class JoinConfig:
    topic_prefix: str = "hap."
    assembler: AssemblerConfig = AssemblerConfig()
    limits: Limits = Limits()
    corrections: bool = True
    retention_ms: int = 600_000
    #: an event time further ahead of its arrival than this is dead-lettered (``future``)
    max_future_ms: int = 10_000
    #: the longest an input topic that is behind (:data:`Lagging`) but brings no record holds its
    #: partition's windows open; past it the topic counts as idle, so that nothing holds a
    #: partition for ever (the worker replaces itself well before, :class:`streams.worker.app.InputLag`)
    lagging_hold_ms: int = 120_000
    #: close a window by the slowest active partition of the worker, not only by its own: for a replay in
    #: log time (``hap replay --clock log``), where a partition a few hundred ms behind is minutes of event
    #: time and a group's statistics must count every partition's exposures before its request. Off in
    #: production: partitions move together in wall time, and waiting for the slowest would hold every
    #: window by up to the idle time of the quietest active partition
    align_partitions: bool = False


class Joiner:
    """The join of one worker, over the partitions it is assigned (see the module's docstring)."""

    def __init__(self, config: JoinConfig, tables: JoinTables, send: Send, features: Features, pool: CandidatePool,
                 clock: Callable[[], int] = now_ms, lagging: Lagging = never_lagging,
                 partitions: PartitionCount = unknown_partitions) -> None:
        self.cfg = config
        self.lagging = lagging
        self.partitions = partitions
        self.tables = tables
        self.send = send
        self.features = features
        self.pool = pool
        self.clock = clock
        t = config.topic_prefix
        self.ticks = f"{t}streams-ticks"
        self.decoders = {f"{t}ranking": decode_ranking_columns, f"{t}exposure": decode_exposure}
        self.events = {topic: metrics.EVENTS.labels(topic.removeprefix(t)) for topic in self.decoders}
        self.duplicates = {topic: metrics.DUPLICATES.labels(topic) for topic in self.decoders}
        # indexes over the tables (the tables are the truth: :meth:`rebuild` re-derives these)
        self.open: dict[int, set[str]] = collections.defaultdict(set)
        self.closed: dict[int, collections.deque[tuple[int, str]]] = collections.defaultdict(collections.deque)
        self.adopted: dict[str, int] = {}  # requests recovered from the tables: their quiet clock's start (wall ms)
        # per partition, per input topic: [the largest event time it brought, the wall time of its last event]
        self.progress: dict[int, dict[str, list[int]]] = {}
        self.batch: dict[str, dict[str, Any]] = {}  # pending states changed by this batch, written at its end

    async def process(self, records: Sequence[Record]) -> None:
        """Join a batch of records in order, then close the due windows of the partitions that
        ticked in it, then write each changed pending state once."""
        wall = self.clock()
        ticked = set()
        for record in records:
            if record.topic == self.ticks:
                ticked.add(record.partition)
                continue
            try:
                self.handle(record, wall)
            except Exception as exc:  # a worker never dies of its input: dead-letter it instead
                log.exception("failed to process %s[%s]@%s", record.topic, record.partition, record.offset)
                self.dead_letter("internal", f"internal: {exc!r}", record)
        done = self.clock()  # a topic that brought records in this batch was active until now, however long it took
        for marks in self.progress.values():
            for mark in marks.values():
                if mark[1] == wall:
                    mark[1] = done
        if ticked:
            await self.finalize(ticked)
        self.flush()

    def handle(self, record: Record, wall: int) -> None:
        """Join one ranking or exposure record (late ones: :meth:`late`)."""
        if self.undecodable(record):
            return
        self.events[record.topic].inc()
        try:
            event = self.decoders[record.topic](record.value or b"", self.cfg.limits)
            check_not_future(event.ts_ms, wall, self.cfg.max_future_ms)
        except InvalidEvent as exc:
            self.dead_letter(exc.kind, exc.reason, record)
            return
        rid, partition = event.request_id, record.partition
        count = self.partitions(record.topic)
        if count is not None and (letter := misrouted(record, rid, count)) is not None:
            self.send_dead_letter(letter)  # joins nothing, moves no watermark, counts no item statistic
            return
        # never past the worker's clock: an event a little ahead (within the bound) closes no window early
        progress = self.progress.get(partition) or self.progress.setdefault(
            partition, {topic: [0, wall] for topic in self.decoders})  # a topic not seen yet holds it back
        mark = progress[record.topic]
        mark[0], mark[1] = max(mark[0], min(event.ts_ms, wall)), wall
        # a request this batch holds a pending state of is not finalized (finalizing it drops it from the
        # batch): no table read (on RocksDB a miss looks in every partition's database)
        done = None if rid in self.batch else self.tables.finalized.get(rid, partition)
        if event.event_id is not None and self._repeated(rid, done, event.event_id, partition):
            self.duplicates[record.topic].inc()  # a producer's retry: neither counted nor joined again
            return
        if isinstance(event, RankingColumns):  # kept until finalized: with the pool's strings, not its own
            ids, types = self.pool.add_many(event.item_ids, event.content_types)
            event = dataclasses.replace(event, item_ids=ids, content_types=types)
        else:
            self.features.count(event, self.cfg.assembler.dwell_threshold_ms, record.topic, partition,
                                record.offset)
        if done is not None:
            self.late(rid, done, event, record, wall)
            return
        st = self.batch.get(rid) or self.tables.pending.get(rid, partition) or new_pending()
        if isinstance(event, RankingColumns):
            # a duplicate ranking event changes nothing, unless its table entry is what a crash lost: a broker
            # SIGKILLed between the two changelog writes leaves a state that saw the event without the event
            if not st["ranking"] or self.tables.rankings.get(rid, partition) is None:
                self.tables.rankings.put(rid, event, partition)
            add_ranking(st, event, wall)
        else:
            add_exposure(st, event, wall, self.cfg.assembler.dwell_threshold_ms)
            if item_count(st) > self.cfg.assembler.max_request_items:
                self._oversized(rid, st, partition, record, wall)
                return
            if event.type == "feedback" and event.item_id not in st["exposed"]:  # should it be an orphan
                _keep_feedback(st, event.item_id, record)
        st["partition"] = partition
        self.batch[rid] = st
        self.open[partition].add(rid)

    def _repeated(self, rid: str, done: dict[str, Any] | None, event_id: str, partition: int) -> bool:
        """Whether request ``rid`` took an event with ``event_id`` before (its open state, or its
        finalized entry while it is retained); if not, the id is remembered there from now on."""
        if done is not None:
            if not remember_event(done, event_id):
                return True
            self.tables.finalized.put(rid, done, partition)
            return False
        st = self.batch.get(rid) or self.tables.pending.get(rid, partition) or new_pending()
        if not remember_event(st, event_id):
            return True
        st["partition"] = partition
        self.batch[rid] = st
        return False

    def watermark(self, partition: int, wall: int) -> int | None:
        """The event time up to which every input topic of ``partition`` has come: the slowest of
        the active ones. A topic is active while it brought an event within the last ``window_ms +
        lateness_ms`` of wall time, or while it is behind (``lagging``: records wait that the join
        has not taken, as for the ranking topic of a backlog, whose large records come a few per
        fetch while the exposure topic's come by thousands) and brought one within
        :attr:`JoinConfig.lagging_hold_ms`. A topic behind the other holds the windows open
        until it catches up; an idle one does not. None when every topic is idle: the partition is
        quiet, and windows close by wall time (:func:`streams.join.assembler.is_due`)."""
        idle_ms, hold_ms = self.cfg.assembler.window_ms + self.cfg.assembler.lateness_ms, self.cfg.lagging_hold_ms
        active = [ts for topic, (ts, seen) in self.progress.get(partition, {}).items()
                  if wall - seen < idle_ms or (wall - seen < hold_ms and self.lagging(topic, partition))]
        return min(active) if active else None

    def floor(self, wall: int) -> int | None:
        """The slowest watermark of this worker's partitions that are not quiet (None: all quiet).
        A window closes by it, not only by its own partition's: the item statistics its group reads
        as of the request count the exposures of every partition, so none may be behind the request
        (a replay in log time sends a day of events in seconds; a partition a few hundred ms behind
        is minutes of event time)."""
        marks = [m for m in (self.watermark(p, wall) for p in self.progress) if m is not None]
        return min(marks) if marks else None

    def flush(self) -> None:
        """Write the pending state of every request the batch changed, once."""
        for rid, st in self.batch.items():
            self.tables.pending.put(rid, st, st["partition"])
        self.batch.clear()

    async def finalize(self, partitions: Iterable[int]) -> None:
        """Emit the groups of the requests of ``partitions`` whose windows have closed; forget
        finalized requests older than the retention."""
        wall = self.clock()
        self.features.flush()
        due: list[tuple[str, dict[str, Any], int]] = []
        floor = self.floor(wall) if self.cfg.align_partitions else None
        for partition in partitions:
            watermark = self.watermark(partition, wall)
            if watermark is not None and floor is not None:
                watermark = min(watermark, floor)
            for rid in list(self.open[partition]):
                st = self.batch.get(rid) or self.tables.pending.get(rid, partition)
                if st is None:
                    self.open[partition].discard(rid)
                    self.adopted.pop(rid, None)
                elif is_due(st, watermark, wall, self.cfg.assembler, self.adopted.get(rid, 0)):
                    self.open[partition].discard(rid)
                    self.adopted.pop(rid, None)
                    due.append((rid, st, partition))
        chosen: list[tuple[str, dict[str, Any], int, Choice]] = []
        for rid, st, partition in due:
            if not st["ranking"]:
                self.send_dead_letter(DeadLetter(
                    "orphan", "orphan: exposure events without a ranking event within the join window", rid,
                    None, None, None, None, {"state": st}))
                self._close(rid, partition)
                continue
            try:
                ranking = RankingColumns.of(self.tables.rankings.get(rid, partition))
                chosen.append((rid, st, partition, choose(st, ranking, self.cfg.assembler, self.pool)))
            except Exception as exc:  # never retried for ever: dead-lettered with its state
                self._failed(rid, st, partition, exc)
        stats = await self.features.read_groups([
            ([i[0] for i in c.items], c.ranking.ts_ms, c.ranking.user_id,
             (c.ranking.user_features or {}).get("history") or ()) for *_, c in chosen])
        for (rid, st, partition, choice), features in zip(chosen, stats, strict=True):
            try:
                self.emit(rid, st, partition, choice, build(choice, features, wall), wall)
            except Exception as exc:
                self._failed(rid, st, partition, exc)
        for partition in partitions:
            closed = self.closed[partition]
            while closed and closed[0][0] < wall - self.cfg.retention_ms:
                _, rid = closed.popleft()
                self.tables.finalized.delete(rid, partition)
                self.tables.emitted.delete(rid, partition)
        metrics.PENDING.set(sum(map(len, self.open.values())))

    def emit(self, rid: str, st: dict[str, Any], partition: int, choice: Choice, group: SampleGroup,
             wall: int) -> None:
        """Send a request's group, dead-letter its orphan feedback, and move it from pending to finalized.
        A group the decoder would refuse (over the limits' bytes or items) is dead-lettered instead
        (``oversized_request``, with its encoding)."""
        value = encode(group)
        limits = self.cfg.limits
        if len(value) > limits.max_message_bytes or len(group.items) > limits.max_candidates:
            self.send_dead_letter(DeadLetter(
                "oversized_request", f"oversized_request: its group of {len(group.items)} items and {len(value)} "
                f"bytes exceeds what the learner takes ({limits.max_candidates} items, {limits.max_message_bytes} "
                "bytes); the request is not trained", rid, None, partition, None, value,
                {"items": len(group.items), "bytes": len(value)}))
            self._forget(rid, st, partition, wall)
            return
        st["exposed"].update(dict.fromkeys(choice.implied))  # so that a late click on one corrects the group
        self._send_group(rid, group, value, partition, self._correctable(st["exposed"], st["positive"]))
        metrics.IMPLIED.inc(len(choice.implied))
        unexposed = st.pop("unexposed_feedback", {})
        st.pop("unexposed_bytes", None)
        for item in choice.orphans:
            kept = unexposed.get(item)
            if not isinstance(kept, dict):  # a state written before feedback was kept by reference: its bytes
                kept = {"offset": None, "raw": kept}
            details: dict[str, Any] = {"item_id": item}
            if kept["raw"] is None and "size" in kept:
                details.update(original_size=kept["size"], original_sha256=kept["sha256"])
            self.send_dead_letter(DeadLetter(
                "orphan", f"orphan: feedback on item {item!r}, which the request neither exposed nor ranked", rid,
                f"{self.cfg.topic_prefix}exposure", partition, kept["offset"],
                kept["raw"].encode() if kept["raw"] else None, details))
        metrics.LAG.observe(max(0.0, (wall - st["last_wall_ms"]) / 1000))
        ranking = choice.ranking
        self.features.set_history(
            ranking.user_id, (list(ranking.user_features.get("history", [])) + st["positive"])[-HISTORY_LEN:])
        self.tables.finalized.put(rid, {"exposed": list(st["exposed"]), "positive": st["positive"],
                                        "revision": st["revision"], "finalized_ms": wall, "partition": partition,
                                        "event_ids": st.get("event_ids", {})}, partition)
        self.closed[partition].append((wall, rid))
        self._close(rid, partition)

    def _oversized(self, rid: str, st: dict[str, Any], partition: int, record: Record, wall: int) -> None:
        """Close a request whose items passed ``max_request_items`` (see :class:`AssemblerConfig`):
        dead-letter it with the event past the cap, keep nothing of its state."""
        cap = self.cfg.assembler.max_request_items
        self.send_dead_letter(DeadLetter(
            "oversized_request", f"oversized_request: more than {cap} distinct items exposed or with feedback "
            "(a reused request_id?); the request is not trained, its later events are dead-lettered as late",
            rid, record.topic, record.partition, record.offset, record.value or b"",
            {"items": item_count(st), "cap": cap, "ranking": st["ranking"]}))
        self._forget(rid, st, partition, wall)

    def _forget(self, rid: str, st: dict[str, Any], partition: int, wall: int) -> None:
        """Finalize a request without a group: nothing of it is kept but the mark that makes its later
        events ``late`` for ``retention_ms``."""
        self.tables.finalized.put(rid, {"exposed": [], "positive": [], "revision": st["revision"],
                                        "finalized_ms": wall, "partition": partition}, partition)
        self.closed[partition].append((wall, rid))
        self.open[partition].discard(rid)
        self.adopted.pop(rid, None)
        self._close(rid, partition)

    def late(self, rid: str, done: dict[str, Any], event: RankingColumns | ExposureEvent, record: Record,
             wall: int) -> None:
        """An event of a finalized request: a new positive on an exposed item corrects its group; a
        repeated positive is counted; anything else is dead-lettered (``late``)."""
        if isinstance(event, ExposureEvent) and event.type == "feedback":
            positive = is_positive(event, self.cfg.assembler.dwell_threshold_ms)
            # the emitted group is what a correction relabels: a crash can lose it (its changelog write, or
            # the finalized entry's delete) while the finalized entry stays; then the click is dead-lettered
            emitted = self.tables.emitted.get(rid, record.partition)
            if self.cfg.corrections and positive and event.item_id in done["exposed"] \
                    and event.item_id not in done["positive"] and emitted is not None:
                done = {**done, "positive": [*done["positive"], event.item_id], "revision": done["revision"] + 1}
                group = relabel(decode_sample_group(unpack_group(emitted), self.cfg.limits), set(done["positive"]),
                                done["revision"], wall)
                self._send_group(rid, group, encode(group), record.partition,
                                 self._correctable(done["exposed"], done["positive"]))
                self.tables.finalized.put(rid, done, record.partition)
                metrics.LATE.labels("correction").inc()
                return
            if event.item_id in done["positive"]:
                metrics.LATE.labels("duplicate").inc()  # already counted: idempotent
                return
        metrics.LATE.labels("dead_letter").inc()
        self.dead_letter("late", "late: the request was finalized before this event arrived", record, rid)

    def catalogue(self, record: Record) -> None:
        """An item update from any partition of ``items`` (every worker reads them all,
        :mod:`streams.join.catalogue`): into the candidate pool. A record that is not a valid item is
        skipped here: the worker that owns its partition in the group dead-letters it
        (:meth:`check_item`)."""
        if decode_guard.undecodable_of(record.headers) is None:
            item = self._item(record)
            if not isinstance(item, InvalidEvent):
                self.pool.add(item.item_id, item.content_type)

    def check_item(self, record: Record) -> None:
        """An item update from a partition of ``items`` this worker owns in the group: dead-letter
        it if it is not a valid item (once per record: the group commits past it)."""
        if not self.undecodable(record) and isinstance(problem := self._item(record), InvalidEvent):
            self.dead_letter(problem.kind, problem.reason, record)

    def _item(self, record: Record) -> ItemUpdate | InvalidEvent:
        try:
            return decode_item(record.value or b"", self.cfg.limits)
        except InvalidEvent as exc:
            return exc

    def undecodable(self, record: Record) -> bool:
        """A marker of a batch this worker cannot decode (:mod:`streams.kafka.decode_guard`): dead-letter
        the batch once, skip the rest."""
        info = decode_guard.undecodable_of(record.headers)
        if info is None:
            return False
        metrics.UNDECODABLE.inc()
        if record.offset == info.first_offset:
            self.send_dead_letter(DeadLetter(
                "undecodable", f"undecodable: {info.reason}", None, record.topic, record.partition, record.offset,
                record.value or None,
                {"codec": info.codec, "first_offset": info.first_offset, "last_offset": info.last_offset}))
        return True

    def dead_letter(self, kind: str, reason: str, record: Record, request_id: str | None = None) -> None:
        """Dead-letter an input record, with its bytes and where it came from."""
        self.send_dead_letter(DeadLetter(kind, reason, request_id or request_id_of(record.key, record.value),
                                         record.topic, record.partition, record.offset, record.value or b""))

    def send_dead_letter(self, letter: DeadLetter) -> None:
        metrics.INVALID.labels(letter.topic or "", letter.reason_kind).inc()
        self.send("dlq", letter.key(), letter.value())

    def rebuild(self) -> None:
        """Re-derive the indexes of open and finalized requests from the tables (after recovery,
        or when a rebalance changed this worker's partitions). A request this worker did not have
        open is adopted now: its window's quiet clause counts from now plus
        :data:`ADOPTION_GRACE_MS`, not from the wall time of the worker that last saw it
        (:func:`streams.join.assembler.is_due`)."""
        now = self.clock()
        known = set().union(*self.open.values())
        self.open.clear()
        self.closed.clear()
        for rid, st in self.tables.pending.items():
            if st is not None:
                self.open[st["partition"]].add(rid)
                if rid not in known:
                    self.adopted[rid] = now + ADOPTION_GRACE_MS
        opened = set().union(*self.open.values())
        self.adopted = {rid: at for rid, at in self.adopted.items() if rid in opened}  # none of a revoked partition
        # what the index needs of each entry, not the entries (read from RocksDB: tens of thousands of them)
        closed = sorted((done["finalized_ms"], rid, done["partition"])
                        for rid, done in self.tables.finalized.items() if done is not None)
        for finalized_ms, rid, partition in closed:
            self.closed[partition].append((finalized_ms, rid))

    def _correctable(self, exposed: Iterable[str], positive: list[str]) -> bool:
        """Whether a late click can still correct a request's group: corrections on, and an exposed item
        (or one exposed by implication) not positive yet."""
        return self.cfg.corrections and not set(exposed) <= set(positive)

    def _send_group(self, rid: str, group: SampleGroup, value: bytes, partition: int, correctable: bool) -> None:
        """Send a request's group; while a correction may relabel it, keep it (packed) in ``emitted``, for as
        long as its finalized entry is kept; else keep nothing of it."""
        self.send("samples", rid.encode(), value)
        if correctable:
            self.tables.emitted.put(rid, pack_group(value), partition)
        elif group.correction:  # its last exposed item turned positive: nothing left to correct
            self.tables.emitted.delete(rid, partition)
        metrics.GROUPS.labels("correction" if group.correction else "group").inc()
        for source, n in collections.Counter(item.source for item in group.items).items():
            metrics.SAMPLES.labels(source).inc(n)

    def _close(self, rid: str, partition: int) -> None:
        """Forget an open request: its pending state and its ranking event."""
        self.batch.pop(rid, None)
        self.tables.rankings.delete(rid, partition)
        self.tables.pending.delete(rid, partition)

    def _failed(self, rid: str, st: dict[str, Any], partition: int, exc: Exception) -> None:
        log.error("failed to emit the group of %s: %r", rid, exc, exc_info=exc)
        self.send_dead_letter(DeadLetter("internal", f"internal: {exc!r}", rid, None, partition, None, None,
                                         {"state": st}))
        self._close(rid, partition)
