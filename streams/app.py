"""The Faust app: agents that join ranking and exposure events into hybrid sample groups.

Topology (all input topics keyed by ``request_id`` and co-partitioned):

- ``assemble`` consumes ``ranking``, ``exposure`` and the internal ``streams-ticks`` topic
  (one tick per partition per second, so windows close on quiet streams too). Pending
  requests live in the changelog-backed tables ``pending`` and ``rankings``; finalized ones in
  ``finalized`` and their last emitted group in ``emitted`` (for late-event detection and
  corrections, kept ``retention_ms``; the ranking event itself is dropped at finalization).
  A restarted or rebalanced worker recovers them from their changelogs.
- ``catalogue`` consumes ``items`` into the candidate pool.

Delivery: at-least-once. Offsets are committed after an event is processed; a crash between
emitting a group and committing can emit it again after recovery with the same ``group_id``
(deterministic), which consumers de-duplicate. Every rejected input goes to ``dlq`` as a
:class:`streams.dlq.DeadLetter` keyed by its ``request_id``; a record batch the worker cannot
decode (see :mod:`streams.decode_guard`) too, and the worker moves on: no input stops it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust

from feature_store.connection import RedisEndpoint
from streams import decode_guard, metrics
from streams.assembler import (
    AssemblerConfig,
    add_exposure,
    add_ranking,
    assemble,
    implied_exposures,
    is_due,
    new_pending,
    orphan_feedback,
    relabel,
)
from streams.dlq import DeadLetter, request_id_of
from streams.features import StreamFeatures
from streams.kafka_security import KafkaSecurity
from streams.pool import CandidatePool
from streams.schemas import (
    InvalidEvent,
    Limits,
    RankingEvent,
    SampleGroup,
    decode_exposure,
    decode_item,
    decode_ranking,
    decode_sample_group,
    encode,
    is_positive,
)
from streams.topics import record_limits
from streams.validate import check_not_future
from streams.watchdog import EXIT_REASONS, EXITS_ENV, RECOVERY_GRACE, RESTARTS_ENV, STALLED_EXIT, Watchdog, parse_exits

PARTITIONS = 4


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
    tick_s: float = 0.5
    partitions: int = PARTITIONS
    kafka_security: KafkaSecurity = KafkaSecurity()
    stall_s: float = 30.0
    #: an event time further ahead of its arrival than this is dead-lettered (``future``)
    max_future_ms: int = 10_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def make_app(cfg: StreamsConfig) -> faust.App:
    """Build the app; run it with ``faust.Worker(app).execute_from_commandline()``."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    decode_guard.install()
    app = faust.App(
        f"{cfg.app_id}-{cfg.topic_prefix.rstrip('.')}", broker=f"kafka://{cfg.bootstrap}", store="memory://",
        topic_partitions=cfg.partitions, web_enabled=False, datadir=str(cfg.data_dir),
        consumer_auto_offset_reset="earliest", producer_max_request_size=record_limits(cfg.limits)[1],
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
    samples = app.topic(f"{t}samples", **raw)
    dlq = app.topic(f"{t}dlq", **raw)
    pending = app.Table("pending", default=None, partitions=cfg.partitions)
    # the ranking event's bytes, written once per request (the join state stays small)
    rankings = app.Table("rankings", default=None, partitions=cfg.partitions)  # until the request is finalized
    emitted = app.Table("emitted", default=None, partitions=cfg.partitions)  # its last group, while finalized
    finalized = app.Table("finalized", default=None, partitions=cfg.partitions)
    pool = CandidatePool()
    features = StreamFeatures(cfg.redis.client(), prefix="hap:")
    state = _WorkerState()
    watchdog = Watchdog(cfg.stall_s)
    metrics.RESTARTS.set(int(os.environ.get(RESTARTS_ENV, "0")))
    exits = parse_exits(os.environ.get(EXITS_ENV, ""))
    for reason in EXIT_REASONS:  # 0 from the start, so that increase() sees the first restart
        metrics.EXITS.labels(reason).inc(exits.get(reason, 0))

    async def dead_letter(kind: str, reason: str, message: Any, request_id: str | None = None,
                          **details: Any) -> None:
        record = DeadLetter(kind, reason, request_id or request_id_of(message.key, message.value), message.topic,
                            message.partition, message.offset, message.value or b"", details)
        await send_dead_letter(record)

    async def send_dead_letter(record: DeadLetter) -> None:
        metrics.INVALID.labels(record.reason_kind).inc()
        await dlq.send(key=record.key(), value=record.value())

    async def undecodable(message: Any) -> bool:
        """A marker of a batch this worker cannot decode: dead-letter the batch once, skip the rest."""
        info = decode_guard.undecodable_of(message.headers)
        if info is None:
            return False
        metrics.UNDECODABLE.inc()
        if message.offset == info.first_offset:
            await send_dead_letter(DeadLetter(
                "undecodable", f"undecodable: {info.reason}", None, message.topic, message.partition,
                message.offset, message.value or None,
                {"codec": info.codec, "first_offset": info.first_offset, "last_offset": info.last_offset}))
        return True

    async def send(group: SampleGroup) -> None:
        value = encode(group)
        await samples.send(key=group.request_id.encode(), value=value)
        emitted[group.request_id] = value.decode()  # what a correction relabels, kept while finalized is
        metrics.GROUPS.labels("correction" if group.correction else "group").inc()
        for item in group.items:
            metrics.SAMPLES.labels(item.source).inc()

    async def emit(rid: str, st: dict[str, Any], wall: int) -> None:
        ranking = state.decoded.pop(rid, None) or decode_ranking(rankings[rid].encode(), cfg.limits)
        await send(assemble(st, ranking, cfg.assembler, pool, features.read, wall))
        implied = implied_exposures(st, ranking)
        st["exposed"].update(dict.fromkeys(implied))  # so that a late click on one corrects the group
        metrics.IMPLIED.inc(len(implied))
        for item in orphan_feedback(st, ranking):
            raw = st.get("unexposed_feedback", {}).get(item)
            await send_dead_letter(DeadLetter(
                "orphan", f"orphan: feedback on item {item!r}, which the request neither exposed nor ranked", rid,
                f"{t}exposure", st.get("partition"), None, raw.encode() if raw else None, {"item_id": item}))
        st.pop("unexposed_feedback", None)
        metrics.LAG.observe(max(0.0, (wall - st["last_wall_ms"]) / 1000))
        features.set_history(ranking.user_id, (list(ranking.user_features.get("history", [])) + st["positive"])[-50:])

    async def finalize_due(partition: int) -> None:
        wall = _now_ms()
        features.flush()
        for rid in list(state.open[partition]):
            st = pending.get(rid)
            if st is None:
                state.open[partition].discard(rid)
                continue
            if not is_due(st, state.watermark[partition], wall, cfg.assembler):
                continue
            state.open[partition].discard(rid)
            if not st["ranking"]:
                await send_dead_letter(DeadLetter(
                    "orphan", "orphan: exposure events without a ranking event within the join window", rid,
                    None, None, None, None, {"state": st}))
            else:
                await emit(rid, st, wall)
                finalized[rid] = {**st, "finalized_ms": wall, "partition": partition}
                state.closed[partition].append((wall, rid))
                del rankings[rid]  # the biggest thing kept: its group (in emitted) is all a correction needs
            del pending[rid]
        while state.closed[partition] and state.closed[partition][0][0] < wall - cfg.retention_ms:
            _, rid = state.closed[partition].pop(0)
            del finalized[rid]
            emitted.pop(rid, None)
        metrics.PENDING.set(sum(len(s) for s in state.open.values()))

    async def late(rid: str, done: dict[str, Any], event: Any, message: Any, wall: int) -> None:
        if cfg.corrections and event.type == "feedback" and is_positive(event, cfg.assembler.dwell_threshold_ms) \
                and event.item_id in done["exposed"] and event.item_id not in done["positive"]:
            done = {**done, "positive": [*done["positive"], event.item_id], "revision": done["revision"] + 1}
            await send(relabel(decode_sample_group(emitted[rid].encode()), set(done["positive"]), done["revision"],
                               wall))
            finalized[rid] = done
            metrics.LATE.labels("correction").inc()
        elif event.type == "feedback" and event.item_id in done["positive"]:
            metrics.LATE.labels("duplicate").inc()  # already counted: idempotent
        else:
            metrics.LATE.labels("dead_letter").inc()
            await dead_letter("late", "late: the request was finalized before this event arrived", message, rid)

    async def handle(msg: Any) -> None:
        if msg.topic.endswith("streams-ticks"):
            await finalize_due(msg.partition)
            return
        metrics.EVENTS.labels(msg.topic.removeprefix(t)).inc()
        wall = _now_ms()
        try:
            decode = decode_ranking if msg.topic.endswith("ranking") else decode_exposure
            event = decode(msg.value, cfg.limits)
            check_not_future(event.ts_ms, wall, cfg.max_future_ms)
        except InvalidEvent as exc:
            await dead_letter(exc.kind, exc.reason, msg)
            return
        if isinstance(event, RankingEvent):
            for c in event.candidates:
                pool.add(c.item_id, c.content_type)
        rid = event.request_id
        # never past the worker's clock: an event a little ahead (within the bound) closes no window early
        state.watermark[msg.partition] = max(state.watermark[msg.partition], min(event.ts_ms, wall))
        if msg.topic.endswith("exposure"):
            features.count(event, cfg.assembler.dwell_threshold_ms)
        done = finalized.get(rid)
        if done is not None:
            await late(rid, done, event, msg, wall)
            return
        st = pending.get(rid) or new_pending()
        if msg.topic.endswith("ranking"):
            if not st["ranking"]:  # a duplicate ranking event changes nothing
                rankings[rid] = msg.value.decode()
                state.decoded[rid] = event  # validated already; the table copy serves after a restart
            add_ranking(st, event, wall)
        else:
            add_exposure(st, event, wall, cfg.assembler.dwell_threshold_ms)
            if event.type == "feedback" and event.item_id not in st["exposed"]:  # its bytes, should it be an orphan
                st.setdefault("unexposed_feedback", {}).setdefault(event.item_id, msg.value.decode())
        st["partition"] = msg.partition
        pending[rid] = st
        state.open[msg.partition].add(rid)

    @app.agent(inputs)
    async def assemble_agent(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            watchdog.beat()
            if state.needs_rebuild() and app.tables.recovery.completed.is_set():
                state.rebuild(pending, finalized)
                app.log.info("indexed %d pending and %d finalized requests",
                             sum(len(v) for v in state.open.values()), sum(len(v) for v in state.closed.values()))
            try:
                if not await undecodable(ev.message):
                    await handle(ev.message)
            except Exception as exc:  # a worker never dies of its input: dead-letter it instead
                app.log.exception("failed to process %s[%s]@%s", ev.message.topic, ev.message.partition,
                                  ev.message.offset)
                await dead_letter("internal", f"internal: {exc!r}", ev.message)

    @app.agent(items_topic)
    async def catalogue(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            try:
                if await undecodable(ev.message):
                    continue
                item = decode_item(ev.message.value, cfg.limits)
            except InvalidEvent as exc:
                await dead_letter(exc.kind, exc.reason, ev.message)
                continue
            except Exception as exc:  # a worker never dies of its input
                await dead_letter("internal", f"internal: {exc!r}", ev.message)
                continue
            pool.add(item.item_id, item.content_type)

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

    app.hap_tables = (pending, finalized)  # type: ignore[attr-defined]
    return app


class _WorkerState:
    """Per-worker, in-memory indexes over the tables, rebuilt from them after recovery."""

    def __init__(self) -> None:
        self.open: dict[int, set[str]] = defaultdict(set)
        self.closed: dict[int, list[tuple[int, str]]] = defaultdict(list)
        self.watermark: dict[int, int] = defaultdict(int)
        self.decoded: dict[str, Any] = {}  # request_id -> RankingEvent, until its group is emitted
        self.rebuilt_at = float("-inf")

    def needs_rebuild(self, every_s: float = 30.0) -> bool:
        """After recovery, and then periodically (a rebalance can hand this worker new partitions)."""
        return time.monotonic() - self.rebuilt_at > every_s

    def rebuild(self, pending: Any, finalized: Any) -> None:
        """Re-derive the indexes from the tables (the tables are the truth; indexes are caches)."""
        self.rebuilt_at = time.monotonic()
        self.open.clear()
        self.closed.clear()
        for rid, st in pending.items():
            if st is not None:
                self.open[st["partition"]].add(rid)
        for rid, done in sorted(finalized.items(), key=lambda kv: kv[1]["finalized_ms"] if kv[1] else 0):
            if done is not None:
                self.closed[done["partition"]].append((done["finalized_ms"], rid))
