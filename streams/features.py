"""The streams' side of the feature store, fail-soft: item statistics and user histories in Redis.

Counts are buffered as events arrive and written once per tick (:meth:`StreamFeatures.flush`).
While Redis is down nothing blocks and nothing is lost silently: unwritten counts stay buffered
(up to ``max_backlog``; beyond it the oldest are dropped and counted), reads fall back to the
no-statistics default (counted), and a request's statistics are still read as of its own time.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis

from feature_store.backoff import Backoff
from feature_store.item_stats import ItemStats, window_stats
from streams import metrics
from streams.schemas import is_positive

log = logging.getLogger("hap.streams")
MAX_BACKLOG = 1_000_000
HISTORY_TTL_S = 86_400


class StreamFeatures:
    def __init__(self, client: redis.Redis, *, prefix: str = "hap:", max_backlog: int = MAX_BACKLOG,
                 backoff_s: float = 1.0) -> None:
        self.r = client
        self.stats = ItemStats(client, prefix)
        self.prefix = prefix
        self.max_backlog = max_backlog
        self.redis = Backoff(backoff_s)
        self.buffer: list[tuple[str, str, int]] = []

    def count(self, event: Any, dwell_threshold_ms: int) -> None:
        """Buffer the counters an exposure or feedback event adds."""
        if event.type == "exposure":
            self.buffer.append((event.item_id, "exp", event.ts_ms))
            return
        if event.click:
            self.buffer.append((event.item_id, "clk", event.ts_ms))
        if is_positive(event, dwell_threshold_ms):
            self.buffer.append((event.item_id, "pos", event.ts_ms))

    def flush(self) -> None:
        """Write the buffered counts; on failure keep them for the next flush."""
        if not self.buffer or not self.redis.ready:
            self._trim()
            return
        try:
            self.stats.record(self.buffer)
            self.buffer = []
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            self._trim()

    def read(self, item_ids: list[str], at_ms: int) -> list[dict[str, float]]:
        """Statistics as of ``at_ms`` (a :class:`streams.assembler.StatsReader`)."""
        out = None
        if self.redis.ready:
            try:
                out = self.stats.read(item_ids, at_ms)
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
        if out is None:
            metrics.MISSING.labels("redis_down").inc(len(item_ids))
            return [window_stats({}, at_ms) for _ in item_ids]
        missing = sum(1 for s in out if s.get("exp_1d", 0.0) == 0.0)
        if missing:
            metrics.MISSING.labels("item_stats").inc(missing)
        return out

    def set_history(self, user_id: str, history: list[str]) -> None:
        """The user's recent positives, for the router (skipped and counted while Redis is down)."""
        if not self.redis.ready:
            metrics.ERRORS.labels("history_skipped").inc()
            return
        try:
            self.r.set(f"{self.prefix}feat:user:{user_id}", orjson.dumps({"history": history}), ex=HISTORY_TTL_S)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            metrics.ERRORS.labels("history_skipped").inc()

    def _failed(self, exc: Exception) -> None:
        self.redis.failed()
        metrics.ERRORS.labels("redis").inc()
        log.warning("Redis unreachable (%s): %d counts buffered, default statistics served for %.1fs",
                    exc, len(self.buffer), self.redis.backoff_s)

    def _trim(self) -> None:
        over = len(self.buffer) - self.max_backlog
        if over > 0:
            del self.buffer[:over]
            metrics.ERRORS.labels("stats_dropped").inc(over)
