"""The streams' side of the feature store, fail-soft and off the event loop: item statistics,
user histories and user-by-item signals in Redis.

Every Redis call runs on one thread of its own, so the worker's event loop never waits on a
round trip: counts and user histories are buffered as groups are joined and handed to that
thread once per tick (:meth:`StreamFeatures.flush`, one pipeline each); the statistics of a
batch of groups are read in one pipeline (:meth:`StreamFeatures.read_groups`) that the caller
awaits. Statistics as of a time sum the buckets closed before its minute (its *span*), so each
item's are read once per span and kept for the requests of that span (up to ``max_cached``
items per span, the current span and the one before): a count that arrives later for an
already closed bucket shows from the next span on. The user-by-item signals
(``feature_store.user_items``: shown / clicked before the request, in its history) are read in
the same pipeline, one sorted set per request's user, as of the request's own time.

While Redis is down nothing blocks and nothing is lost silently: unwritten counts stay
buffered (up to ``max_backlog``; beyond it the oldest are dropped and counted), histories are
skipped (counted), reads fall back to the no-statistics default (counted, never kept), and a
request's statistics are still read as of its own time.

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
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
import redis

from feature_store.backoff import Backoff
from feature_store.item_stats import WINDOWS, ItemStats, window_stats
from feature_store.user_features import user_features_key
from feature_store.user_items import CLICKED, SHOWN, UserItems, user_item_values
from streams import metrics
from streams.contract.schemas import is_positive

log = logging.getLogger("hap.streams")
MAX_BACKLOG = 1_000_000
MAX_CACHED = 100_000  # items whose statistics are kept per span
HISTORY_TTL_S = 86_400
#: every window's bucket length is a multiple of this, so statistics as of two times in the same such span are equal
_SPAN_MS = min(length for _, length, _ in WINDOWS.values())

Count = tuple[str, str, int]  # item id, kind, event time ms
Pair = tuple[str, str, str, int]  # user id, item id, kind, event time ms
#: what the groups of a batch ask for: (item ids, as-of ms, user id, the request's history)
GroupRequest = tuple[Sequence[str], int, str, Sequence[str]]


def event_counts(event: Any, dwell_threshold_ms: int) -> list[Count]:
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


def event_user_items(event: Any) -> list[tuple[str, str, str, int]]:
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
    def __init__(self, client: redis.Redis, *, prefix: str = "hap:", max_backlog: int = MAX_BACKLOG,
                 backoff_s: float = 1.0, max_cached: int = MAX_CACHED) -> None:
        self.r = client
        self.stats = ItemStats(client, prefix)
        self.user_items = UserItems(client, prefix)
        self.pairs: list[Pair] = []
        self.prefix = prefix
        self.max_backlog = max_backlog
        self.redis = Backoff(backoff_s)
        self.buffer: list[Count] = []
        self.histories: dict[str, list[str]] = {}
        self.max_cached = max_cached
        self._spans: dict[int, dict[str, dict[str, float]]] = {}  # span -> item id -> statistics read in it
        self._io = ThreadPoolExecutor(1, thread_name_prefix="hap-redis")
        self._writing: Future[list[Count]] | None = None

    def count(self, event: Any, dwell_threshold_ms: int) -> None:
        """Buffer the counters an exposure or feedback event adds."""
        self.buffer += event_counts(event, dwell_threshold_ms)
        self.pairs += event_user_items(event)

    def set_history(self, user_id: str, history: list[str]) -> None:
        """Buffer the user's recent positives, for the router (written at the next :meth:`flush`)."""
        self.histories[user_id] = history

    def flush(self) -> None:
        """Hand the buffered counts and histories to the Redis thread, unless a write is in flight
        (then they wait for the next flush). Counts a failed write could not store come back to
        the buffer, oldest first."""
        if self._writing is not None:
            if not self._writing.done():
                self._trim()
                return
            self.buffer[:0] = self._writing.result()
            self._writing = None
        if not self.redis.ready and self.histories:
            metrics.ERRORS.labels("history_skipped").inc(len(self.histories))
            self.histories = {}
        if not (self.buffer or self.histories or self.pairs) or not self.redis.ready:
            self._trim()
            return
        counts, self.buffer = self.buffer, []
        histories, self.histories = self.histories, {}
        pairs, self.pairs = self.pairs, []
        self._writing = self._io.submit(self._write, counts, histories, pairs)

    async def read_groups(self, requests: Sequence[GroupRequest]) -> list[list[dict[str, float]]]:
        """The features of each request's items as of its time (``(item ids, at ms, user id, history)``
        each), read on the Redis thread."""
        return await asyncio.get_running_loop().run_in_executor(self._io, self._read, requests)

    def _read(self, requests: Sequence[GroupRequest]) -> list[list[dict[str, float]]]:
        items = self._read_items([(ids, at_ms) for ids, at_ms, *_ in requests])
        pairs: list[list[dict[str, float]]] = []
        if self.redis.ready:
            try:
                pairs = [self.user_items.read(user, ids, at_ms, history) for ids, at_ms, user, history in requests]
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
                pairs = []
        if not pairs:  # Redis down: what the request itself tells (its history), nothing remembered
            pairs = [[user_item_values(None, None, at_ms, i in set(history)) for i in ids]
                     for ids, at_ms, _, history in requests]
        return [[{**stats, **pair} for stats, pair in zip(row, pair_row, strict=True)]
                for row, pair_row in zip(items, pairs, strict=True)]

    def _read_items(self, requests: Sequence[tuple[Sequence[str], int]]) -> list[list[dict[str, float]]]:
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
                    stats = read[item_id, span] = window_stats(raw[item_id], span * _SPAN_MS)
                    cached = self._spans.setdefault(span, {})
                    if len(cached) < self.max_cached:
                        cached[item_id] = stats
        out, down = [], 0
        for ids, at_ms in requests:
            span = at_ms // _SPAN_MS
            cached = self._spans.get(span, {})
            row = []
            for item_id in ids:
                stats = cached.get(item_id) or read.get((item_id, span))
                if stats is None:
                    down += 1
                    stats = window_stats({}, at_ms)
                row.append(stats)
            out.append(row)
        if down:
            metrics.MISSING.labels("redis_down").inc(down)
        missing = sum(1 for row in out for stats in row if stats["exp_1d"] == 0.0) - down
        if missing:
            metrics.MISSING.labels("item_stats").inc(missing)
        return out

    def _write(self, counts: list[Count], histories: dict[str, list[str]], pairs: list[Pair]) -> list[Count]:
        """On the Redis thread: store counts, histories and user-by-item events; returns the counts it
        could not store (histories and user-by-item events that fail are skipped, counted)."""
        try:
            if counts:
                self.stats.record(counts)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            if histories:
                metrics.ERRORS.labels("history_skipped").inc(len(histories))
            if pairs:
                metrics.ERRORS.labels("user_items_skipped").inc(len(pairs))
            return counts
        try:
            if histories:
                pipe = self.r.pipeline(transaction=False)
                for user_id, history in histories.items():
                    pipe.set(user_features_key(user_id, self.prefix), orjson.dumps({"history": history}),
                             ex=HISTORY_TTL_S)
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            metrics.ERRORS.labels("history_skipped").inc(len(histories))
        try:
            self.user_items.record(pairs)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            metrics.ERRORS.labels("user_items_skipped").inc(len(pairs))
        return []

    def _failed(self, exc: Exception) -> None:
        self.redis.failed()
        metrics.ERRORS.labels("redis").inc()
        log.warning("Redis unreachable (%s): %d counts buffered, default statistics served for %.1fs",
                    exc, len(self.buffer), self.redis.backoff_s)

    def _trim(self) -> None:
        if len(self.pairs) > self.max_backlog:
            metrics.ERRORS.labels("user_items_skipped").inc(len(self.pairs) - self.max_backlog)
            del self.pairs[:len(self.pairs) - self.max_backlog]
        over = len(self.buffer) - self.max_backlog
        if over > 0:
            del self.buffer[:over]
            metrics.ERRORS.labels("stats_dropped").inc(over)
