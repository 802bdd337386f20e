"""The Faust app: a thin adapter that feeds Kafka records to the join (:class:`streams.join.joiner.Joiner`).

Topology (all input topics keyed by ``request_id`` and co-partitioned):

- ``assemble`` consumes ``ranking``, ``exposure`` and the internal ``streams-ticks`` topic
  (one tick per partition every ``tick_s``, so windows close on quiet streams too) in batches
  of up to :data:`BATCH_RECORDS` records (``stream.take_events``). The join's state lives in
  the changelog-backed tables ``pending`` (each open request's join state, written once per
  batch), ``rankings`` (each open request's ranking event as columns, written once),
  ``finalized`` and ``emitted`` (each finalized request's labels and its last group, for
  late-event detection and corrections, kept ``retention_ms``), on local disk (RocksDB) or on the
  heap (:mod:`streams.worker.tables`). A rebalanced worker, or one restarted on an empty data dir,
  recovers them from their changelogs; one restarted on its own data dir reads only the changelog
  records past what its local state holds.
- ``catalogue`` consumes the partitions of ``items`` the group assigns to this worker and
  dead-letters the invalid records; the candidate pool is filled from every partition of
  ``items`` by a :class:`streams.join.catalogue.CatalogueFollower` outside the group, so each of N
  workers draws ``gn`` negatives from the whole catalogue.

Delivery: at-least-once, and the tables never run ahead of the outputs. For each batch the
adapter first hands every group and dead letter the join produced to the producer and waits until
the broker acknowledged them all, then writes the batch's table changes to their changelogs and
waits for those, then to the tables' local store, then writes the batch's item counts to Redis
(each input record once: :meth:`streams.join.features.StreamFeatures.write_counts`; while Redis
is down the batch waits),
and only then acknowledges the batch's records (Faust commits acknowledged offsets). The next
batch is fetched meanwhile, and joined while this one's counts are written
(:meth:`StreamsWorker.assemble_batches`: at most three batches held, counts stored in batch order). A
delivery that fails ends the worker (exit 1, restarted by the supervisor) before anything of the
batch is acknowledged; a worker killed at any point (SIGKILL included) replays from the last
commit with tables that are at most as far as the outputs, so a replayed request is emitted again
with the same ``group_id`` (deterministic, which consumers de-duplicate) rather than found
finalized with its group lost, and its records add no item count twice. Every rejected input goes to
``dlq`` as a :class:`streams.contract.dlq.DeadLetter` keyed by its ``request_id``; a record batch the
worker cannot decode (see :mod:`streams.kafka.decode_guard`) too, and the worker moves on: no input
stops it.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from feature_store.connection import RedisEndpoint
from streams import metrics
from streams.contract.schemas import Limits
from streams.join.assembler import AssemblerConfig
from streams.join.catalogue import CatalogueFollower
from streams.join.features import StreamFeatures
from streams.join.joiner import Features, JoinConfig, Joiner, JoinTables
from streams.join.pool import CandidatePool
from streams.kafka import decode_guard
from streams.kafka.batch_producer import BatchProducer, Record
from streams.kafka.lag import GroupLag
from streams.kafka.security import KafkaSecurity
from streams.kafka.topics import DEFAULT_PARTITIONS, Deleted, record_limits
from streams.worker import drain
from streams.worker.tables import FaustTable, check_store, held
from streams.worker.watchdog import (
    EXIT_REASONS,
    RECOVERY_GRACE,
    STALLED_EXIT,
    Watchdog,
)

#: records per batch, and the longest a batch waits to fill
BATCH_RECORDS = 1000
BATCH_WITHIN_S = 0.05
#: bytes per partition and fetch: a ranking event is ~80 KB; 8 MiB instead of Faust's 1 MiB took
#: 1.3-1.4x the events/s in two pairs of runs (aiokafka caps a whole fetch response at 50 MiB)
FETCH_BYTES = 8 << 20
REBUILD_EVERY_S = 30.0
#: the join's input topics (after the prefix), whose offsets the worker never commits past unread
JOIN_INPUTS = ("ranking", "exposure")
#: how often the worker reads its group's consumer lag from the broker (``hap_streams_consumer_lag_records``)
LAG_EVERY_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class StreamsConfig:
    bootstrap: str
    redis: RedisEndpoint
    redis_prefix: str = dataclasses.field(kw_only=True)
    topic_prefix: str = "hap."
    app_id: str = "hap-streams"
    data_dir: Path = Path(".hap/streams")
    assembler: AssemblerConfig = AssemblerConfig()
    limits: Limits = Limits()
    corrections: bool = True
    retention_ms: int = 600_000
    tick_s: float = 0.25
    partitions: int = DEFAULT_PARTITIONS
    #: replicas of the changelogs and other topics Faust would create (``hap streams`` creates them first)
    replication_factor: int = 1
    kafka_security: KafkaSecurity = KafkaSecurity()
    stall_s: float = 30.0
    #: this worker's stable name in the group (Kafka static membership, ``group.instance.id``);
    #: None: a dynamic member
    static_member: str | None = None
    #: an event time further ahead of its arrival than this is dead-lettered (``future``)
    max_future_ms: int = 10_000
    #: windows close by the slowest active partition (``JoinConfig.align_partitions``: log-time replays)
    align_partitions: bool = False
    #: where the tables' state lives (:mod:`streams.worker.tables`): ``rocksdb://`` (local disk under
    #: ``data_dir``) or ``memory://`` (the heap)
    store: str = "rocksdb://"


#: a partition whose expected record has not arrived this long after it was read again is read again,
#: at most this many times before the worker replaces itself (:class:`InputGap`)
REFETCH_AFTER_S = 1.0
REFETCH_ATTEMPTS = 10
#: a partition with records past the offset the join expects that gave it nothing this long is read again
REFETCH_IDLE_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Refetch:
    """A partition read again from ``offset``: when, and how many times in a row for that offset."""

    offset: int
    at: float
    attempts: int


class InputGap(Exception):
    """Records of ``tp`` from ``first`` to ``last`` never reached the join, though the partition was
    read again :data:`REFETCH_ATTEMPTS` times: the worker replaces itself (nothing past ``first``
    was committed; a fresh consumer resumes there)."""

    def __init__(self, tp: TP, first: int, last: int) -> None:
        super().__init__(f"{tp.topic}[{tp.partition}] {first}-{last}")
        self.tp, self.first, self.last = tp, first, last


class InputLag:
    """The join's :data:`streams.join.joiner.Lagging`, from the consumer, and the check for an input
    partition the consumer has stopped fetching.

    A partition is behind while the end offset its last fetch reported is past the next offset
    the join expects from it (:meth:`expected`; unknown: the consumer's read position); one
    not fetched yet is behind; one not assigned here is not. A partition is *stuck* when, with the
    tables recovered, it is behind, the consumer's position has not reached its end (so records
    wait that were never fetched: not a trailing transaction marker, which the position skips)
    and the join took nothing from it for ``stall_s``. A partition's clock stands still while the join takes
    full batches (:data:`BATCH_RECORDS`): the stream then holds more records than one batch, and a partition's
    may wait behind the others' (a worker behind by seconds saw partitions "idle" for 6-13 s, read them
    again, fell further behind on the copies, and crashed its consumer on one of the seeks). It stands still
    too while the consumer holds fetched records of the partition, not handed over yet, that it will hand
    over (:meth:`fetched_unread`): aiokafka hands out a partition's fetched records only once every partition
    fetched before it is drained, up to ``consumer_max_fetch_size`` each, so on a backlog a ranking
    partition waited 7-40 s at a time behind the exposure partitions' while the join took partial batches
    (read again ten times in a row: :data:`REFETCH_ATTEMPTS`, the most before :class:`InputGap`). Faust's
    consumer has been reported to stop fetching some of its partitions after a rebalance
    (faust-streaming issue 629); the worker then replaces itself (:meth:`StreamsWorker.check_progress`),
    as for a stall: a fresh consumer resumes from the commits.
    """

    def __init__(self, app: faust.App, topics: Sequence[str]) -> None:
        self.app = app  # its consumer is made when the worker starts
        self.topics = frozenset(topics)
        self.taken: dict[TP, int] = {}  #: per partition, the offset after the last record the join took
        self.moved: dict[TP, float] = {}  #: per partition, when the join last took a record (or the clock started)
        self.assigned: set[TP] = set()  #: the partitions of the current assignment
        self.refetches: dict[TP, Refetch] = {}  #: per partition, the last time it was read again
        self.full_at = -math.inf  #: when the join last took a full batch
        self.fetched_at: dict[TP, float] = {}  #: per partition, when the consumer last held records of it unread

    async def took(self, messages: list[Any]) -> list[Any]:
        """The records of ``messages`` the join takes, in order; a record of an input partition past
        the next offset the join expects from it is left out and the partition is read again from
        that offset (:meth:`_refetch`).

        The next offset is the one after the last record the join took from the partition, in a
        partition this worker kept since then (rebalances included), and at the start of an
        assignment or a run where Faust resumed (:meth:`_resumed`). Faust's consumer at times
        delivers records past offsets it never delivered: after its seek to the committed offsets
        at the start of a run, records fetched before the seek still come through and move its
        read offset past the ones fetched again, which it then drops as read (seen after every
        SIGKILL of a worker); and around a rebalance. Records below the next offset were taken
        already in this assignment (copies read again: Faust's seek to the committed offsets at a
        rebalance, or :meth:`refetch_idle` while records it had fetched were still on their way):
        left out, and Faust acknowledges them as usual.

        Raises :class:`InputGap` when a partition was read again :data:`REFETCH_ATTEMPTS` times
        without the expected record arriving: the worker then replaces itself."""
        now, taken = time.monotonic(), []
        if len(messages) >= BATCH_RECORDS:
            self.full_at = now
        for message in messages:
            tp = message.tp
            if tp.topic in self.topics:
                expected = self.taken.get(tp)
                if expected is None:
                    expected = self.taken[tp] = await self._resumed(tp, message.offset)
                if message.offset > expected:
                    await self._refetch(tp, expected, message, now)
                    continue
                if message.offset < expected:  # taken already (a copy read again): Faust acknowledges it as usual
                    continue
                self.refetches.pop(tp, None)
            self.taken[tp] = message.offset + 1
            self.moved[tp] = now
            taken.append(message)
        return taken

    async def _refetch(self, tp: TP, expected: int, message: Any, now: float) -> None:
        """Leave ``message`` out (Faust never acknowledges it, so no commit passes it before the
        copy read again is taken) and, unless that was done less than :data:`REFETCH_AFTER_S` ago
        for the same offset, seek ``tp`` back to ``expected``."""
        message.acked = True  # Faust's acknowledgement of it is then a no-op
        self.app.consumer._unacked_messages.discard(message)
        last = self.refetches.get(tp)
        if last is not None and last.offset == expected:
            if now - last.at < REFETCH_AFTER_S:
                return
            if last.attempts >= REFETCH_ATTEMPTS:
                raise InputGap(tp, expected, message.offset - 1)
        await self._read_again(tp, expected, now, f"offsets {expected}-{message.offset - 1} were not delivered "
                                                  "to the join")

    async def _read_again(self, tp: TP, expected: int, now: float, why: str) -> None:
        """Seek ``tp`` back to ``expected``, counted (``hap_streams_input_refetches_total``) and logged
        with ``why``; :attr:`refetches` keeps when, and how many times in a row for that offset."""
        last = self.refetches.get(tp)
        attempts = 1 if last is None or last.offset != expected else last.attempts + 1
        self.refetches[tp] = Refetch(expected, now, attempts)
        metrics.REFETCHES.labels(tp.topic, str(tp.partition)).inc()
        self.app.log.warning("%s[%s]: %s: reading again from %d (attempt %d)", tp.topic, tp.partition, why, expected,
                             attempts)
        await seek_on_consumer_thread(self.app.consumer, tp, expected)

    async def _resumed(self, tp: TP, offset: int) -> int:
        """The first record the join takes from ``tp`` in this assignment is at ``offset``: returns
        the offset the join expects first, where Faust resumed (the committed offset; without one,
        the log start). Offsets below the log start were deleted by retention (the worker was down
        longer than the topic keeps records, or ``delete_records``): counted
        (``hap_streams_retention_lost_total``), logged, and acknowledged for Faust so that its
        commits pass them (it refuses gaps: :func:`refuse_gap_acks`)."""
        consumer = self.app.consumer
        resumed = consumer._committed_offset.get(tp)
        try:
            if resumed is None:  # Faust's copy is filled by its seek after the assignment, at times after the
                # first records arrive (seen after a SIGKILL): the group's own commit, from its coordinator
                resumed = await consumer._thread.call_thread(consumer._thread._ensure_consumer().committed, tp)
            start = (await consumer.earliest_offsets(tp))[tp]
        except Exception as exc:  # noqa: BLE001 - unknown: from the commit if known, a fresh worker looks again
            self.app.log.error("the log start of %s[%s] could not be read: %r", tp.topic, tp.partition, exc)
            return offset if resumed is None else min(offset, resumed)
        expected = start if resumed is None else resumed
        if offset <= expected:
            return offset
        deleted = min(offset, start) - expected
        if deleted > 0:
            count_deleted([Deleted(tp.topic, tp.partition, expected, expected + deleted - 1, False)])
            await acknowledge_deleted(consumer, tp, expected, expected + deleted - 1)
        return max(expected, start)

    def __call__(self, topic: str, partition: int) -> bool:
        tp, consumer = TP(topic, partition), self.app.consumer
        try:
            end = consumer.highwater(tp)
        except AssertionError:  # aiokafka's "not assigned": a partition this worker does not read
            return False
        if end is None:
            return True
        position = self.expected(tp)
        if position is None:  # Faust's read position (nothing committed yet)
            read = consumer._read_offset.get(tp)
            position = 0 if read is None else read
        return position < end

    def expected(self, tp: TP) -> int | None:
        """The next offset the join expects from ``tp``: after the last record it took in this
        assignment, else where Faust resumed (its copy of the committed offset); None if unknown."""
        taken = self.taken.get(tp)
        return taken if taken is not None else self.app.consumer._committed_offset.get(tp)

    async def refetch_idle(self, idle_s: float) -> None:
        """Read again, from the offset the join expects, each assigned input partition that has
        records past it and gave the join nothing for ``idle_s`` (at most once per ``idle_s``).

        Faust's consumer can drop records it fetched again after a seek, as read (see
        :meth:`took`), and when none follow them in the partition, no later record shows the
        gap: its read offset says the partition is at its end while the join never saw the
        records (seen in ``tests/scale/test_streams_workers.py`` after a SIGKILL: a ranking
        partition's 119 last records, whose exposures were dead-lettered as orphans). A partition
        the consumer does not fetch even then is :meth:`stuck`."""
        now, consumer = time.monotonic(), self.app.consumer
        for tp in consumer.assignment():
            if tp.topic not in self.topics or now - self.idle_since(tp, now) <= idle_s:
                continue
            expected, end = self.expected(tp), consumer.highwater(tp)
            last = self.refetches.get(tp)
            if expected is None or end is None or expected >= end or (last is not None and now - last.at <= idle_s):
                continue
            await self._read_again(tp, expected, now, f"{end - expected} records past offset {expected}, none given "
                                                      f"to the join for {now - self.moved[tp]:.0f}s")

    def idle_since(self, tp: TP, now: float) -> float:
        """Since when ``tp`` counts as giving the join nothing: its last record taken (or its clock's start),
        the join's last full batch, or the last time the consumer held records of it unread, whichever is
        latest (see the class)."""
        if self.fetched_unread(tp):
            self.fetched_at[tp] = now
        return max(self.moved.setdefault(tp, now), self.full_at, self.fetched_at.get(tp, -math.inf))

    def fetched_unread(self, tp: TP) -> bool:
        """Whether Faust's consumer holds fetched records of ``tp`` that it has not handed to the stream yet
        and will hand over: they are in aiokafka's fetch buffer (a membership test, from the event loop's
        thread, of a dict the consumer's thread changes) and ``tp`` is among the partitions Faust asks it
        for, or held back by Faust's flow control until the stream's buffer drains. A partition Faust
        neither asks for nor holds back (paused, or dropped from its active set) keeps its fetched records
        in that buffer for ever: they are not waiting their turn, and the partition can be found stuck."""
        consumer = self.app.consumer
        try:
            buffered = consumer._thread._ensure_consumer()._fetcher._records
        except (AttributeError, ConsumerNotStarted):  # not started yet
            return False
        return tp in buffered and (tp in consumer._get_active_partitions() or tp in consumer._buffered_partitions)

    def reassigned(self, partitions: Any) -> None:
        """A new assignment: a partition this worker did not hold in the last one may have moved on
        under another worker meanwhile, so where it resumes is no gap; one it kept resumes at most
        where the join stopped (from the last commit)."""
        kept = self.assigned & set(partitions)
        self.assigned = set(partitions)
        for tp in set(self.taken) - kept:
            self.taken.pop(tp, None)
            self.moved.pop(tp, None)
            self.fetched_at.pop(tp, None)
            self.refetches.pop(tp, None)

    def restart_clocks(self) -> None:
        """Start every partition's clock now (while the tables recover, input partitions wait)."""
        self.moved.clear()
        self.fetched_at.clear()

    async def stuck(self, stall_s: float) -> list[TP]:
        """The assigned input partitions that are stuck (see the class)."""
        now, consumer = time.monotonic(), self.app.consumer
        out = []
        for tp in consumer.assignment():
            if tp.topic not in self.topics or now - self.idle_since(tp, now) <= stall_s:
                continue
            if self(tp.topic, tp.partition):
                end, position = consumer.highwater(tp), await consumer.position(tp)
                if end is None or position is None or position < end:
                    out.append(tp)
        return out


#: what the join produced in the current agent's batch: (topic kind, key, value); each agent has its own
_outbox: contextvars.ContextVar[list[tuple[str, bytes | None, bytes]]] = contextvars.ContextVar("outbox")
#: the exit code of a worker that could not finish a batch: the join failed (not on an input record:
#: those are dead-lettered), or the broker did not take its outputs or changelog (the supervisor
#: restarts it; the batch is replayed)
BATCH_FAILED_EXIT = 1


class Producer(Protocol):
    """What the worker delivers a batch's records with (:class:`streams.kafka.batch_producer.BatchProducer`)."""

    async def start(self) -> None: ...

    async def deliver(self, records: Sequence[Record]) -> Mapping[tuple[str, int], int] | None:
        """Return once the brokers acknowledged every record, with the offset of the last record of each
        (topic, partition) if known; raise otherwise."""


class BatchFeatures(Features, Protocol):
    """The join's feature store, plus the per-batch write of item counts
    (:class:`streams.join.features.StreamFeatures`)."""

    async def write_counts(self, waiting: Callable[[], None] | None = None) -> None: ...


#: acknowledges one input event for Faust's commits (``stream.ack``)
Ack = Callable[[Any], Awaitable[bool]]
#: makes one changelog-backed Faust table of the app: (name, Faust ``Table`` keyword arguments)
TableFactory = Callable[..., Any]


class StreamsWorker:
    """One streams worker: the Faust app, its agents and timers, and the batch delivery of the
    module's note.

    Lifecycle: construct (builds the app, its tables and the join; connects to nothing), then run
    :attr:`app` with ``faust.Worker(worker.app).execute_from_commandline()``. The agents hand their
    batches to :meth:`assemble_batches` and :meth:`check_item_batches`; the ``producer`` connects at
    the first batch.
    The worker never returns from a failure: it calls ``exit`` (default :func:`os._exit`, at once:
    Faust's stop may hang on a wedged client) with :data:`BATCH_FAILED_EXIT` when a batch cannot be
    finished, or :data:`streams.worker.watchdog.STALLED_EXIT` from :meth:`check_progress`.

    Injectable (defaults in brackets): ``producer`` [a :class:`BatchProducer` on ``cfg.bootstrap``],
    ``features`` [:class:`StreamFeatures` on ``cfg.redis``], ``make_table`` [the app's ``Table``],
    ``lag`` [:class:`InputLag` of the app's consumer], ``exit`` [:func:`os._exit`]; ``restarts`` and
    ``exits`` (by reason) are the supervisor's counts so far, exported as metrics.
    """

    def __init__(self, cfg: StreamsConfig, *, producer: Producer | None = None,
                 features: BatchFeatures | None = None, make_table: TableFactory | None = None,
                 lag: InputLag | None = None, exit: Callable[[int], Any] = os._exit,
                 restarts: int = 0, exits: Mapping[str, int] | None = None) -> None:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        decode_guard.install()
        drain.install()
        self.cfg, self.exit = cfg, exit
        self.app = app = faust.App(
            f"{cfg.app_id}-{cfg.topic_prefix.rstrip('.')}", broker=f"kafka://{cfg.bootstrap}",
            store=check_store(cfg.store),
            topic_partitions=cfg.partitions, topic_replication_factor=cfg.replication_factor, web_enabled=False,
            datadir=str(cfg.data_dir),
            consumer_auto_offset_reset="earliest", consumer_max_fetch_size=FETCH_BYTES,
            broker_commit_every=100, broker_commit_interval=1.0, table_cleanup_interval=30.0,
            # a crashed worker's partitions move to the others (or its restart) within seconds
            broker_session_timeout=10.0, broker_heartbeat_interval=2.0,
            broker_credentials=cfg.kafka_security.faust_credentials(),
            consumer_group_instance_id=cfg.static_member,
        )
        t = cfg.topic_prefix
        raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": cfg.partitions}
        self.inputs = app.topic(f"{t}ranking", f"{t}exposure", f"{t}streams-ticks", **raw)
        self.ticks = app.topic(f"{t}streams-ticks", **raw)
        self.items_topic = app.topic(f"{t}items", **raw)
        self.outputs = {"samples": f"{t}samples", "dlq": f"{t}dlq"}
        # the batch's outputs and table changes, one produce batch per partition (Faust's producer sends the ticks)
        self.producer: Producer = producer or BatchProducer(
            cfg.bootstrap, max_bytes=record_limits(cfg.limits)[1], **cfg.kafka_security.aiokafka_options())
        table = make_table or app.Table
        tables = JoinTables(
            pending=FaustTable(table("pending", default=None, partitions=cfg.partitions)),
            rankings=FaustTable(table("rankings", default=None, partitions=cfg.partitions)),
            finalized=FaustTable(table("finalized", default=None, partitions=cfg.partitions)),
            emitted=FaustTable(table("emitted", default=None, partitions=cfg.partitions, value_type=bytes)),
        )
        self.lag = lag or InputLag(app, [f"{t}{name}" for name in JOIN_INPUTS])
        refuse_gap_acks(self.lag.topics)
        self.features: BatchFeatures = features or StreamFeatures(cfg.redis.client(), prefix=cfg.redis_prefix)
        self.joiner = Joiner(
            # a partition that stays behind is held far longer than the worker takes to replace itself for it
            JoinConfig(t, cfg.assembler, cfg.limits, cfg.corrections, cfg.retention_ms, cfg.max_future_ms,
                       lagging_hold_ms=int(max(120.0, 4 * cfg.stall_s) * 1000),
                       align_partitions=cfg.align_partitions), tables,
            lambda kind, key, value: _outbox.get().append((kind, key, value)), self.features, CandidatePool(),
            lagging=self.lag, partitions=self.partition_count)
        self.follower = CatalogueFollower(cfg.bootstrap, f"{t}items", _into_pool(self.joiner), cfg.kafka_security,
                                          max_bytes=record_limits(cfg.limits)[1])
        self.watchdog = Watchdog(cfg.stall_s)
        self.recovering = True  # until the tables first recovered (again after each rebalance)
        self.group_lag: GroupLag | None = None  # connects at the first read
        self.rebuilt_at = float("-inf")
        metrics.RESTARTS.inc(restarts)
        metrics.export_invalid([f"{t}ranking", f"{t}exposure", f"{t}items"])
        for reason in EXIT_REASONS:  # 0 from the start, so that increase() sees the first restart
            metrics.EXITS.labels(reason).inc((exits or {}).get(reason, 0))
        self._wire()

    def partition_count(self, topic: str) -> int:
        """The partitions of ``topic``: the consumer's metadata, else the configured count (the join
        dead-letters a record that is not on its request's partition: ``misrouted``)."""
        return self.app.consumer.topic_partitions(topic) or self.cfg.partitions

    def _wire(self) -> None:
        """Register the agents, tasks and timers with the app."""
        app = self.app
        app.agent(self.inputs, name="assemble_agent")(self._assemble_agent)
        app.agent(self.items_topic, name="catalogue")(self._catalogue_agent)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.task(self._follow_catalogue)
        app.timer(interval=self.cfg.tick_s, name="tick")(self._tick)
        app.timer(interval=min(5.0, self.cfg.stall_s / 4), name="check_progress")(self.check_progress)
        app.timer(interval=LAG_EVERY_S, name="consumer_lag")(self.export_lag)

    async def _assemble_agent(self, stream: faust.StreamT) -> None:
        await self.assemble_batches(event_batches(stream), stream.ack)

    async def _catalogue_agent(self, stream: faust.StreamT) -> None:
        await self.check_item_batches(event_batches(stream))

    async def assemble_batches(self, batches: AsyncIterator[Sequence[Any]], ack: Ack) -> None:
        """Join and deliver each batch of ranking, exposure and tick events (Faust events) of
        ``batches``, pipelined: batch N+1 is fetched while batch N is joined and delivered, and
        joined while batch N's item counts are written to Redis.

        ``batches`` acknowledges a batch's events when asked for the next batch (Faust's
        ``take_events``); each event is held past that (one more reference on its message) until
        :meth:`assemble` delivered every output of its batch and wrote its item counts, and then
        released with ``ack`` (Faust's ``stream.ack``: the message's last reference makes its offset
        committable). A batch is joined only once the batch before it delivered its outputs and
        changelog records and wrote its table changes to the store (so the join reads the tables as
        the batches before left them, in order), and once the batch before that one was acknowledged:
        at most three batches are held, the one whose counts are being written, the one being joined
        and delivered, and the next being fetched (while Redis is down, consumption pauses there).
        The item counts of the batches are stored in the order of the batches
        (:class:`streams.join.features.StreamFeatures`). Cancelled (the worker stops), the batches in
        progress are cancelled too and stay unacknowledged (a fresh worker replays them)."""
        held_batches: list[asyncio.Task[None]] = []  # batches taken and not acknowledged yet, oldest first
        stored: asyncio.Future[None] | None = None  # the newest batch's table changes are in the store
        try:
            async for events in batches:
                for event in events:
                    event.message.incref()  # released by _assemble_and_ack, after the delivery and the counts
                if stored is not None:
                    await stored
                while held_batches and (len(held_batches) > 1 or held_batches[0].done()):
                    await held_batches.pop(0)
                stored = asyncio.get_running_loop().create_future()
                held_batches.append(asyncio.ensure_future(self._assemble_and_ack(events, ack, stored)))
        except BaseException:
            for task in held_batches:
                task.cancel()
            raise
        for task in held_batches:
            await task

    async def _assemble_and_ack(self, events: Sequence[Any], ack: Ack, stored: asyncio.Future[None]) -> None:
        """:meth:`assemble` one batch with its own outbox, then acknowledge its events; ``stored`` is
        set once its table changes are in the store (or it ended without)."""
        _outbox.set([])
        held.set({})
        try:
            if await self.assemble(events, stored):
                for event in events:
                    await ack(event)
        finally:
            if not stored.done():
                stored.set_result(None)

    async def assemble(self, events: Sequence[Any], stored: asyncio.Future[None] | None = None) -> bool:
        """One batch of the join: take it in, deliver what it produced (:meth:`deliver`; then
        ``stored`` is set, if given), then write its item counts; True when the batch may be
        acknowledged. Exits the worker instead when
        offsets before it were never delivered though read again (:class:`InputGap`), the join
        fails, or the delivery fails (False if ``exit`` returned)."""
        app = self.app
        self.watchdog.beat()
        # after recovery, and then periodically (a rebalance can hand this worker new partitions)
        if time.monotonic() - self.rebuilt_at > REBUILD_EVERY_S and app.tables.recovery.completed.is_set():
            self.rebuilt_at = time.monotonic()
            self.joiner.rebuild()
            app.log.info("indexed %d pending and %d finalized requests", sum(map(len, self.joiner.open.values())),
                         sum(map(len, self.joiner.closed.values())))
        try:  # records past offsets never delivered wait until those are read again (see refuse_gap_acks)
            messages = await self.lag.took([event.message for event in events])
        except InputGap as gap:  # nothing past it is committed: a fresh worker reads it from the last commit
            app.log.error("input offsets never delivered to the join: %s: exiting to be replaced", gap)
            self.exit(BATCH_FAILED_EXIT)
            return False
        try:
            await self.joiner.process(messages)
        except Exception:  # the batch cannot be finished: never acknowledge it, replay it
            app.log.exception("the join failed on a batch: exiting to be replaced")
            self.exit(BATCH_FAILED_EXIT)
            return False
        self.watchdog.beat()  # joined: progress, however long a big batch took; its delivery gets a clock of its own
        if not await self.deliver():
            return False
        if stored is not None:  # the next batch may be joined now
            stored.set_result(None)
        await self.features.write_counts(self._waiting_on_redis)  # before the batch is acknowledged
        return True

    async def check_item_batches(self, batches: AsyncIterator[Sequence[Any]]) -> None:
        """Check each batch of ``items`` events and deliver its dead letters, as :meth:`assemble_batches`."""
        _outbox.set([])
        held.set({})
        async for events in batches:
            for event in events:
                try:
                    self.joiner.check_item(event.message)
                except Exception as exc:  # a worker never dies of its input
                    self.joiner.dead_letter("internal", f"internal: {exc!r}", event.message)
            await self.deliver()

    async def deliver(self) -> bool:
        """Deliver what the current batch produced, outputs first and then its table changes, and then
        write those to the tables' local store, before the batch is acknowledged (see the module's
        delivery note and :mod:`streams.worker.tables`); True when all was taken. A failed delivery
        or store write exits the worker (:data:`BATCH_FAILED_EXIT`); False if ``exit`` returned."""
        out, writes = _outbox.get(), held.get()
        step = "outputs"
        try:
            await self.producer.start()  # connects at the first batch of either agent
            await self.producer.deliver([(self.outputs[kind], None, key, value) for kind, key, value in out])
            out.clear()
            step = "table changes"
            records = {table: table.changelog_records(changes) for table, changes in writes.items()}
            offsets = await self.producer.deliver([record for rs in records.values() for record in rs]) or {}
            step = "table changes to the local store"
            for table, changes in writes.items():
                topic = table.changelog_topic()
                table.store(changes, records[table], {p: offset for (t, p), offset in offsets.items() if t == topic})
            writes.clear()
        except Exception as exc:  # nothing of the batch is acknowledged: a fresh worker replays it
            self.app.log.error("the batch's %s could not be delivered (%r): exiting to be replaced", step, exc)
            self.exit(BATCH_FAILED_EXIT)
            return False
        return True

    def _waiting_on_redis(self) -> None:
        """The batch waits for Redis to take its counts: no stall, and no input partition is stuck."""
        self.watchdog.beat()
        self.lag.restart_clocks()

    async def _on_assigned(self, app: faust.App, assigned: Any, **kwargs: Any) -> None:
        self.lag.reassigned(assigned)
        for name in JOIN_INPUTS:
            topic = f"{self.cfg.topic_prefix}{name}"
            metrics.ASSIGNED.labels(name).set(sum(tp.topic == topic for tp in assigned))

    async def export_lag(self) -> None:
        """Export the group's lag on its inputs, read from the broker on a thread of its own
        (:class:`streams.kafka.lag.GroupLag`); a failed read is logged and counted
        (``hap_streams_errors_total{kind="lag"}``), the last values stay."""
        cfg, group = self.cfg, self.app.conf.id
        try:
            if self.group_lag is None:
                self.group_lag = await asyncio.to_thread(
                    GroupLag, cfg.bootstrap, group, [f"{cfg.topic_prefix}{t}" for t in (*JOIN_INPUTS, "items")],
                    cfg.kafka_security)
            lags = await asyncio.to_thread(self.group_lag.read)
        except Exception as exc:  # noqa: BLE001 - a metric never stops the worker
            metrics.ERRORS.labels("lag").inc()
            self.app.log.warning("the consumer lag could not be read from the broker: %r", exc)
            return
        metrics.CONSUMER_LAG.set(group, lags)

    async def _follow_catalogue(self) -> None:
        delay = 1.0
        while True:  # the follower returns only when cancelled; a failure is logged and retried
            try:
                await self.follower.run()
            except Exception as exc:
                metrics.ERRORS.labels("catalogue").inc()
                self.app.log.error("the catalogue follower failed (%r): retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(30.0, 2 * delay)

    async def _tick(self) -> None:
        for partition in range(self.cfg.partitions):
            await self.ticks.send(key=b"tick", value=b"", partition=partition)

    async def check_progress(self) -> None:
        """Exit with :data:`STALLED_EXIT` when no batch came for ``stall_s`` (x :data:`RECOVERY_GRACE`
        while the tables recover), or when an input partition is stuck (:meth:`InputLag.stuck`)."""
        app, lag = self.app, self.lag
        recovering = not app.tables.recovery.completed.is_set()  # tables replaying: the agent waits
        if self.recovering and not recovering:  # the stall clock starts once the tables are ready, not at start-up
            self.watchdog.beat()
        self.recovering = recovering
        if self.watchdog.stalled(RECOVERY_GRACE if recovering else 1.0):
            app.log.error("no message handled for %.0fs (not even our own ticks)%s: exiting to be replaced",
                          time.monotonic() - self.watchdog.last, " while recovering" if recovering else "")
            self.exit(STALLED_EXIT)  # at once: Faust's stop may hang on the same wedged client
        elif recovering:
            lag.restart_clocks()
        elif stuck := await lag.stuck(self.cfg.stall_s):
            app.log.error("input partitions behind and not fetched for %.0fs: %s: exiting to be replaced",
                          self.cfg.stall_s, ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(stuck)))
            self.exit(STALLED_EXIT)
        else:
            await lag.refetch_idle(REFETCH_IDLE_S)


async def seek_on_consumer_thread(consumer: Any, tp: TP, offset: int) -> None:
    """Faust's ``consumer.seek(tp, offset)``, with aiokafka's seek run on the consumer's own thread, where its
    fetcher runs: Faust calls it from the event loop's thread, which raced the fetcher's drain of the same
    partition (``KeyError`` in aiokafka's ``fetched_records``: Faust's fetcher crashed and the worker stopped
    consuming; seen in ``bench/streams.py`` runs on a loaded machine, where partitions are read again)."""
    thread = consumer._thread
    await thread.call_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None  # as Faust's seek: the records are read again


def event_batches(stream: faust.StreamT) -> AsyncIterator[Sequence[Any]]:
    """The stream's events in batches of up to :data:`BATCH_RECORDS` (waiting at most
    :data:`BATCH_WITHIN_S` to fill one); a batch is acknowledged when the next is asked for."""
    return stream.take_events(BATCH_RECORDS, within=BATCH_WITHIN_S)


def _into_pool(joiner: Joiner) -> Callable[[Sequence[Any]], None]:
    def into_pool(records: Sequence[Any]) -> None:
        for record in records:
            joiner.catalogue(record)
        metrics.CATALOGUE.inc(len(records))

    return into_pool


def refuse_gap_acks(topics: frozenset[str]) -> None:
    """Keep Faust from acknowledging offsets it never delivered, on ``topics`` (idempotent).

    When Faust's consumer reads a record more than one offset past the last it read from a
    partition, it marks the offsets in between as acknowledged (meant for compacted topics and
    transaction markers), and its next commit passes them. Around a rebalance it has been seen
    to do so over records that exist (``tests/scale/test_streams_workers.py``: 40-50 ranking and
    exposure records, whose requests were then dead-lettered as orphans). On the join's inputs,
    which are neither compacted nor written in transactions, a commit now stops below such
    offsets, and the worker leaves out the records past them and reads the partition again from
    the first (:meth:`InputLag.took`)."""
    from faust.transport import consumer

    original = getattr(consumer.Consumer, "_add_gap", None)
    if original is None:  # another Faust: a skip still ends the worker before its batch is acknowledged
        logging.getLogger("hap.streams").warning(
            "Faust's consumer has no _add_gap: its acknowledgement of skipped offsets is not refused")
        return
    if getattr(original, "refused", None) is not None:
        original.refused.update(topics)
        return
    refused = set(topics)

    async def add_gap(self: Any, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in refused:
            await original(self, tp, offset_from, offset_to)

    add_gap.refused = refused  # type: ignore[attr-defined]
    add_gap.original = original  # type: ignore[attr-defined]
    consumer.Consumer._add_gap = add_gap


def count_deleted(deleted: Sequence[Deleted]) -> None:
    """Count and log input records that retention deleted before the worker read them
    (``hap_streams_retention_lost_total``): found by :func:`streams.kafka.topics.resume_at_log_start`
    before the worker starts, or by :meth:`InputLag.took` when it resumes a partition."""
    for d in deleted:
        metrics.RETENTION_LOST.labels(d.topic, str(d.partition)).inc(d.last - d.first + 1)
        logging.getLogger("hap.streams").error(
            "%s[%s]: offsets %d-%d were deleted by retention before this worker read them: %d records lost%s",
            d.topic, d.partition, d.first, d.last, d.last - d.first + 1,
            " (the group's committed offset moved to the log start)" if d.moved else "")


async def acknowledge_deleted(faust_consumer: Any, tp: TP, first: int, last: int) -> None:
    """Acknowledge offsets ``first``-``last`` of ``tp``, which retention deleted, for Faust's
    commits (its own gap bookkeeping, which :func:`refuse_gap_acks` refuses for offsets that may
    exist)."""
    from faust.transport import consumer

    add_gap = consumer.Consumer._add_gap
    await getattr(add_gap, "original", add_gap)(faust_consumer, tp, first, last)
