"""The streams' side of the feature store, off the event loop: item statistics, user histories
and user-by-item signals in Redis.

Every Redis call runs on one thread of its own, so the worker's event loop never waits on a
round trip it does not mean to. Item counts are exact: each input record is counted once
across crashes, replays and Redis outages. The join buffers a batch's counts, each with the
input record it comes from (topic, partition, offset), and the worker awaits
:meth:`StreamFeatures.write_counts` before it acknowledges the batch: the counts are stored by
then, and an item's hash skips a record it counted before (a replay after a crash;
:meth:`feature_store.item_stats.ItemStats.record_once`). While Redis is down, ``write_counts``
retries (the batch waits unacknowledged, consumption pauses; nothing is buffered beyond it);
user histories (last writer wins) are handed to the thread once per tick
(:meth:`StreamFeatures.flush`) and skipped while Redis is down (counted). The statistics of a
batch of groups are read in one pipeline (:meth:`StreamFeatures.read_groups`) that the caller
awaits. Statistics as of a time sum the buckets closed before its minute (its *span*), so each
item's are read once per span and kept for the requests of that span, with its first exposure
time so that its age is each request's own (up to ``max_cached`` items per span, the current
span and the one before): a count that arrives later for an
already closed bucket shows from the next span on. Reads while Redis is down fall back to the
no-statistics default (counted, never kept), and a request's statistics are still read as of
its own time.

Examples
--------
>>> import asyncio                                                          # doctest: +SKIP
>>> features = StreamFeatures(redis.Redis())                               # doctest: +SKIP
>>> asyncio.run(features.read_groups([(["i1"], 60_000, "u1", [])]))[0][0]["exp_1d"]  # doctest: +SKIP
0.0
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
import redis

from feature_store.backoff import Backoff
from feature_store.item_stats import WINDOWS, Count, ItemStats, age_h, first_exposure_ms, window_stats
from feature_store.user_features import user_features_key
from feature_store.user_items import CLICKED, SHOWN, UserItems, user_item_values
from streams import metrics
from streams.contract.schemas import is_positive

log = logging.getLogger("hap.streams")
MAX_CACHED = 100_000  # items whose statistics are kept per span
HISTORY_TTL_S = 86_400
#: every window's bucket length is a multiple of this, so statistics as of two times in the same such span are equal
_SPAN_MS = min(length for _, length, _ in WINDOWS.values())


Pair = tuple[str, str, str, int]  # user id, item id, kind, event time ms
#: what the groups of a batch ask for: (item ids, as-of ms, user id, the request's history)
GroupRequest = tuple[Sequence[str], int, str, Sequence[str]]


def event_counts(event: Any, dwell_threshold_ms: int) -> list[tuple[str, str, int]]:
    """The item counters an exposure or feedback event adds: ``(item_id, kind, ts_ms)``, the
    input of ``ItemStats.record`` (and of ``feature_store.asof`` in a replay).

    >>> from streams.contract.schemas import ExposureEvent
    >>> event_counts(ExposureEvent("r", "u", "n1", 5, "exposure", position=0), 30_000)
    [('n1', 'exp', 5)]
    """
    if event.type == "exposure":
        return [(event.item_id, "exp", event.ts_ms)]
    out = [(event.item_id, "clk", event.ts_ms)] if event.click else []
    if is_positive(event, dwell_threshold_ms):
        out.append((event.item_id, "pos", event.ts_ms))
    return out


def event_user_items(event: Any) -> list[Pair]:
    """What an exposure or click tells about its user and item: ``(user_id, item_id, kind, ts_ms)``,
    the input of ``UserItems.record`` (and of ``feature_store.asof`` in a replay).

    >>> from streams.contract.schemas import ExposureEvent
    >>> event_user_items(ExposureEvent("r", "u", "n1", 5, "feedback", click=True))
    [('u', 'n1', 'c', 5)]
    """
    if event.type == "exposure":
        return [(event.user_id, event.item_id, SHOWN, event.ts_ms)]
    return [(event.user_id, event.item_id, CLICKED, event.ts_ms)] if event.click else []


class StreamFeatures:
    def __init__(self, client: redis.Redis, *, prefix: str, backoff_s: float = 1.0,
                 max_cached: int = MAX_CACHED) -> None:
        self.r = client
        self.stats = ItemStats(client, prefix)
        self.user_items = UserItems(client, prefix)
        self.pairs: list[Pair] = []  # user-by-item events, written with the counts
        self.prefix = prefix
        self.redis = Backoff(backoff_s)
        self.buffer: list[Count] = []
        self.histories: dict[str, list[str]] = {}
        self.max_cached = max_cached
        #: span -> item id -> (statistics as of the span's start, first exposure ms) read in it
        self._spans: dict[int, dict[str, tuple[dict[str, float], float | None]]] = {}
        self._io = ThreadPoolExecutor(1, thread_name_prefix="hap-redis")
        self._writing: Future[None] | None = None  # the histories' write in flight
        #: held by the write of the buffered counts in progress (:meth:`write_counts`, :meth:`read_groups`)
        self.writes = asyncio.Lock()
        #: the newest time statistics were read as of: buckets are pruned relative to it, not to the
        #: newest count (0 before the first read: nothing is pruned)
        self.read_until = 0

    def count(self, event: Any, dwell_threshold_ms: int, topic: str, partition: int, offset: int) -> None:
        """Buffer the counters an exposure or feedback event adds, as those of the input record at
        ``offset`` of ``topic``'s ``partition`` (written by :meth:`write_counts`)."""
        source = f"{topic}:{partition}"
        self.buffer += [(*count, source, offset) for count in event_counts(event, dwell_threshold_ms)]
        self.pairs += event_user_items(event)

    async def write_counts(self, waiting: Callable[[], None] | None = None) -> None:
        """Store the buffered counts, each input record once (see the module), and the user-by-item
        events (first time per member: a replay changes nothing); returns when they are stored.
        While Redis is unreachable it retries after each backoff and calls
        ``waiting`` before each wait (the worker feeds its watchdog: waiting on Redis is no stall).

        One write at a time (:attr:`writes`), in the order they were asked for, and a failed one's
        counts go back to the front of the buffer: counts of one input partition are stored in
        offset order whatever the batches in flight (the item hashes skip a record at or below the
        last offset they counted, so a later batch's counts stored first would drop an earlier's)."""
        async with self.writes:
            while self.buffer or self.pairs:
                if await self._write_once():
                    return
                if waiting is not None:
                    waiting()
                await asyncio.sleep(max(0.0, self.redis.until - time.monotonic()))

    async def _write_once(self) -> bool:
        """Store the buffered counts and user-by-item events if Redis is not backing off; True when
        stored. The caller holds :attr:`writes`; what is buffered meanwhile waits for the next write,
        and what could not be stored goes back in front of it."""
        if not self.redis.ready:
            return False
        loop = asyncio.get_running_loop()
        counts, pairs = self.buffer, self.pairs
        self.buffer, self.pairs = [], []
        try:
            if counts:
                await loop.run_in_executor(self._io, self.stats.record_once, counts, self.read_until)
                counts = []
            await loop.run_in_executor(self._io, self.user_items.record, pairs)
        except (redis.RedisError, OSError) as exc:
            self.buffer, self.pairs = counts + self.buffer, pairs + self.pairs
            self._failed(exc)
            return False
        return True

    def set_history(self, user_id: str, history: list[str]) -> None:
        """Buffer the user's recent positives, for the router (written at the next :meth:`flush`)."""
        self.histories[user_id] = history

    def flush(self) -> None:
        """Hand the buffered histories to the Redis thread, unless a write is in flight (then they
        wait for the next flush); while Redis is down they are skipped (counted)."""
        if self._writing is not None:
            if not self._writing.done():
                return
            self._writing = None
        if not self.histories:
            return
        histories, self.histories = self.histories, {}
        if not self.redis.ready:
            metrics.ERRORS.labels("history_skipped").inc(len(histories))
            return
        self._writing = self._io.submit(self._write, histories)

    async def read_groups(self, requests: Sequence[GroupRequest]) -> list[list[dict[str, float]]]:
        """The features of each request's items as of its time (``(item ids, at ms, user id, history)``
        each), read on the Redis thread after the counts buffered so far are stored (one try: while
        Redis is down :meth:`write_counts` retries them), so the statistics count every event the
        join took in before the read, those of the batch that closed the window included."""
        async with self.writes:  # after the writes asked for before (another batch's counts), in order
            if self.buffer or self.pairs:
                await self._write_once()
        return await asyncio.get_running_loop().run_in_executor(self._io, self._read, requests)

    def _read(self, requests: Sequence[GroupRequest]) -> list[list[dict[str, float]]]:
        items = self._read_items([(ids, at_ms) for ids, at_ms, *_ in requests])
        pairs: list[list[dict[str, float]]] = []
        if self.redis.ready:
            try:
                pairs = self.user_items.read_many([(user, ids, at_ms, history)
                                                   for ids, at_ms, user, history in requests])
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
                pairs = []
        if not pairs:  # Redis down: what the request itself tells (its history), nothing remembered
            pairs = [[user_item_values(None, None, at_ms, i in set(history)) for i in ids]
                     for ids, at_ms, _, history in requests]
        return [[{**stats, **pair} for stats, pair in zip(row, pair_row, strict=True)]
                for row, pair_row in zip(items, pairs, strict=True)]

    def _read_items(self, requests: Sequence[tuple[Sequence[str], int]]) -> list[list[dict[str, float]]]:
        self.read_until = max(self.read_until, *(at_ms for _, at_ms in requests), 0)
        newest = max((at_ms // _SPAN_MS for _, at_ms in requests), default=0)
        for old in [span for span in self._spans if span < newest - 1]:
            del self._spans[old]
        wanted = list(dict.fromkeys((item_id, at_ms // _SPAN_MS) for ids, at_ms in requests for item_id in ids
                                    if item_id not in self._spans.get(at_ms // _SPAN_MS, ())))
        read: dict[tuple[str, int], dict[str, float]] = {}
        if wanted and self.redis.ready:
            unique = list(dict.fromkeys(item_id for item_id, _ in wanted))
            try:
                pipe = self.r.pipeline(transaction=False)
                for item_id in unique:
                    pipe.hgetall(self.stats.key(item_id))
                raw = dict(zip(unique, pipe.execute(), strict=True))
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            else:
                for item_id, span in wanted:
                    stats = read[item_id, span] = (window_stats(raw[item_id], span * _SPAN_MS),
                                                   first_exposure_ms(raw[item_id]))
                    cached = self._spans.setdefault(span, {})
                    if len(cached) < self.max_cached:
                        cached[item_id] = stats
        out, down = [], 0
        for ids, at_ms in requests:
            span = at_ms // _SPAN_MS
            cached = self._spans.get(span, {})
            row = []
            for item_id in ids:
                found = cached.get(item_id) or read.get((item_id, span))
                if found is None:
                    down += 1
                    row.append(window_stats({}, at_ms))
                else:  # the windows are the span's; the age is the request's own
                    row.append({**found[0], "age_h": age_h(found[1], at_ms)})
            out.append(row)
        if down:
            metrics.MISSING.labels("redis_down").inc(down)
        missing = sum(1 for row in out for stats in row if stats["exp_1d"] == 0.0) - down
        if missing:
            metrics.MISSING.labels("item_stats").inc(missing)
        return out

    def _write(self, histories: dict[str, list[str]]) -> None:
        """On the Redis thread: store the users' histories."""
        try:
            pipe = self.r.pipeline(transaction=False)
            for user_id, history in histories.items():
                pipe.set(user_features_key(user_id, self.prefix), orjson.dumps({"history": history}),
                         ex=HISTORY_TTL_S)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            metrics.ERRORS.labels("history_skipped").inc(len(histories))

    def _failed(self, exc: Exception) -> None:
        self.redis.failed()
        metrics.ERRORS.labels("redis").inc()
        log.warning("Redis unreachable (%s): %d counts wait for it, default statistics served for %.1fs",
                    exc, len(self.buffer), self.redis.backoff_s)
