"""The Faust app: a thin adapter that feeds Kafka records to the join (:class:`streams.joiner.Joiner`).

Topology (all input topics keyed by ``request_id`` and co-partitioned):

- ``assemble`` consumes ``ranking``, ``exposure`` and the internal ``streams-ticks`` topic
  (one tick per partition every ``tick_s``, so windows close on quiet streams too) in batches
  of up to :data:`BATCH_RECORDS` records (``stream.take_events``). The join's state lives in
  the changelog-backed tables ``pending`` (each open request's join state, written once per
  batch), ``rankings`` (each open request's ranking event as columns, written once),
  ``finalized`` and ``emitted`` (each finalized request's labels and its last group, for
  late-event detection and corrections, kept ``retention_ms``). A restarted or rebalanced
  worker recovers them from their changelogs.
- ``catalogue`` consumes ``items`` into the candidate pool.

Delivery: at-least-once, and the tables never run ahead of the outputs. For each batch the
adapter first hands every group and dead letter the join produced to the producer and waits until
the broker acknowledged them all, then writes the batch's table changes to their changelogs and
waits for those, and only then lets Faust acknowledge the batch's records (Faust commits
acknowledged offsets). A delivery that fails ends the worker (exit 1, restarted by the
supervisor) before anything of the batch is acknowledged; a worker killed at any point (SIGKILL
included) replays from the last commit with tables that are at most as far as the outputs, so a
replayed request is emitted again with the same ``group_id`` (deterministic, which consumers
de-duplicate) rather than found finalized with its group lost. Every rejected input goes to
``dlq`` as a :class:`streams.dlq.DeadLetter` keyed by its ``request_id``; a record batch the
worker cannot decode (see :mod:`streams.decode_guard`) too, and the worker moves on: no input
stops it.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import faust
from aiokafka.codec import has_lz4

from feature_store.connection import RedisEndpoint
from streams import decode_guard, metrics
from streams.assembler import AssemblerConfig
from streams.features import StreamFeatures
from streams.joiner import JoinConfig, Joiner, JoinTables
from streams.kafka_security import KafkaSecurity
from streams.pool import CandidatePool
from streams.schemas import Limits
from streams.topics import DEFAULT_PARTITIONS, record_limits
from streams.watchdog import EXIT_REASONS, EXITS_ENV, RECOVERY_GRACE, RESTARTS_ENV, STALLED_EXIT, Watchdog, parse_exits

#: records per batch, and the longest a batch waits to fill
BATCH_RECORDS = 1000
BATCH_WITHIN_S = 0.05
REBUILD_EVERY_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class StreamsConfig:
    bootstrap: str
    redis: RedisEndpoint
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
    #: an event time further ahead of its arrival than this is dead-lettered (``future``)
    max_future_ms: int = 10_000


class FaustTable:
    """A Faust table as a :class:`streams.joiner.ChangelogTable`: reads and writes go to its local
    store at once; each write's changelog record (to the partition the caller names, which a batch
    of events does not have) is held in the batch's outbox until the batch's outputs are delivered."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str) -> Any:
        return self.table.data.get(key)

    def items(self) -> Any:
        return self.table.data.items()

    def put(self, key: str, value: Any, partition: int) -> None:
        self.table.data[key] = value
        _changes.get().append((self.table, partition, key, value))

    def delete(self, key: str, partition: int) -> None:
        if self.table.data.pop(key, None) is not None:
            _changes.get().append((self.table, partition, key, None))


#: what the join produced in the current agent's batch: (topic kind, key, value); each agent has its own
_outbox: contextvars.ContextVar[list[tuple[str, bytes | None, bytes]]] = contextvars.ContextVar("outbox")
#: the table changes of the current agent's batch: (table, changelog partition, key, value or None)
_changes: contextvars.ContextVar[list[tuple[Any, int, str, Any]]] = contextvars.ContextVar("changes")
#: the exit code of a worker whose output or changelog the broker did not take (the supervisor restarts it)
UNDELIVERED_EXIT = 1


def make_app(cfg: StreamsConfig) -> faust.App:
    """Build the app; run it with ``faust.Worker(app).execute_from_commandline()``."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    decode_guard.install()
    app = faust.App(
        f"{cfg.app_id}-{cfg.topic_prefix.rstrip('.')}", broker=f"kafka://{cfg.bootstrap}", store="memory://",
        topic_partitions=cfg.partitions, topic_replication_factor=cfg.replication_factor, web_enabled=False,
        datadir=str(cfg.data_dir),
        consumer_auto_offset_reset="earliest", producer_max_request_size=record_limits(cfg.limits)[1],
        # a group and a table record are kilobytes each: batch them (10 ms at most) and compress them
        # (lz4, when its library is installed), instead of one produce request per record (Faust's
        # default batch is 16 KiB)
        producer_max_batch_size=1 << 20, producer_linger=0.01, producer_compression_type="lz4" if has_lz4() else None,
        broker_commit_every=100, broker_commit_interval=1.0, table_cleanup_interval=30.0,
        # a crashed worker's partitions move to the others (or its restart) within seconds
        broker_session_timeout=10.0, broker_heartbeat_interval=2.0,
        broker_credentials=cfg.kafka_security.faust_credentials(),
    )
    t = cfg.topic_prefix
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": cfg.partitions}
    inputs = app.topic(f"{t}ranking", f"{t}exposure", f"{t}streams-ticks", **raw)
    ticks = app.topic(f"{t}streams-ticks", **raw)
    items_topic = app.topic(f"{t}items", **raw)
    outputs = {"samples": app.topic(f"{t}samples", **raw), "dlq": app.topic(f"{t}dlq", **raw)}
    tables = JoinTables(
        pending=FaustTable(app.Table("pending", default=None, partitions=cfg.partitions)),
        rankings=FaustTable(app.Table("rankings", default=None, partitions=cfg.partitions)),
        finalized=FaustTable(app.Table("finalized", default=None, partitions=cfg.partitions)),
        emitted=FaustTable(app.Table("emitted", default=None, partitions=cfg.partitions, value_type=bytes)),
    )
    joiner = Joiner(
        JoinConfig(t, cfg.assembler, cfg.limits, cfg.corrections, cfg.retention_ms, cfg.max_future_ms), tables,
        lambda kind, key, value: _outbox.get().append((kind, key, value)),
        StreamFeatures(cfg.redis.client(), prefix="hap:"), CandidatePool())
    watchdog = Watchdog(cfg.stall_s)
    metrics.RESTARTS.set(int(os.environ.get(RESTARTS_ENV, "0")))
    exits = parse_exits(os.environ.get(EXITS_ENV, ""))
    for reason in EXIT_REASONS:  # 0 from the start, so that increase() sees the first restart
        metrics.EXITS.labels(reason).inc(exits.get(reason, 0))

    async def send_outbox() -> None:
        """Deliver what the batch produced, outputs first and then its table changes, before Faust
        acknowledges the batch (see the module's delivery note); a failed delivery ends the worker."""
        out, changes = _outbox.get(), _changes.get()
        try:
            await asyncio.gather(*[await outputs[kind].send(key=key, value=value) for kind, key, value in out])
            out.clear()
            await asyncio.gather(*[
                table.send_changelog(partition, key, value) if value is not None else
                table.send_changelog(partition, key, None, value_serializer="raw")
                for table, partition, key, value in changes])
            changes.clear()
        except Exception as exc:  # nothing of the batch is acknowledged: a fresh worker replays it
            app.log.error("the broker did not take the batch's %s (%r): exiting to be replaced",
                          "outputs" if out else "table changes", exc)
            os._exit(UNDELIVERED_EXIT)

    @app.agent(inputs)
    async def assemble_agent(stream: faust.StreamT) -> None:
        _outbox.set([])
        _changes.set([])
        rebuilt_at = float("-inf")
        async for events in stream.take_events(BATCH_RECORDS, within=BATCH_WITHIN_S):
            watchdog.beat()
            # after recovery, and then periodically (a rebalance can hand this worker new partitions)
            if time.monotonic() - rebuilt_at > REBUILD_EVERY_S and app.tables.recovery.completed.is_set():
                rebuilt_at = time.monotonic()
                joiner.rebuild()
                app.log.info("indexed %d pending and %d finalized requests", sum(map(len, joiner.open.values())),
                             sum(map(len, joiner.closed.values())))
            await joiner.process([event.message for event in events])
            await send_outbox()

    @app.agent(items_topic)
    async def catalogue(stream: faust.StreamT) -> None:
        _outbox.set([])
        _changes.set([])
        async for events in stream.take_events(BATCH_RECORDS, within=BATCH_WITHIN_S):
            for event in events:
                try:
                    joiner.catalogue(event.message)
                except Exception as exc:  # a worker never dies of its input
                    joiner.dead_letter("internal", f"internal: {exc!r}", event.message)
            await send_outbox()

    @app.timer(interval=cfg.tick_s)
    async def tick() -> None:
        for partition in range(cfg.partitions):
            await ticks.send(key=b"tick", value=b"", partition=partition)

    @app.timer(interval=min(5.0, cfg.stall_s / 4))
    async def check_progress() -> None:
        recovering = not app.tables.recovery.completed.is_set()  # tables replaying: the agent waits
        if watchdog.stalled(RECOVERY_GRACE if recovering else 1.0):
            app.log.error("no message handled for %.0fs (not even our own ticks)%s: exiting to be replaced",
                          time.monotonic() - watchdog.last, " while recovering" if recovering else "")
            os._exit(STALLED_EXIT)  # at once: Faust's stop may hang on the same wedged client

    return app
