"""Router-side features: item statistics and user history from Redis behind a bounded local cache.

A lookup never fails a request: a missing feature (unknown item, Redis down) becomes the
default (no statistics, empty history) and is counted. While Redis is failing, lookups skip it
for ``backoff_s`` instead of waiting on every request.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import redis

from feature_store.backoff import Backoff
from feature_store.featurize import CONTENT_TYPE_BUCKETS, DENSE_DIM, ItemBatch, dense_stats, hash_id
from feature_store.item_stats import ItemStats
from router import metrics


class FeatureCache:
    """LRU + TTL cache of per-item feature rows and user histories."""

    def __init__(self, client: redis.Redis, *, capacity: int = 200_000, ttl_s: float = 5.0,
                 backoff_s: float = 1.0, prefix: str = "hap:") -> None:
        self.r = client
        self.stats = ItemStats(client, prefix)
        self.prefix = prefix
        self.capacity, self.ttl_s = capacity, ttl_s
        #: item_id -> (expiry, dense row, hashed id); the expiry doubles as the row's version stamp
        self.items: collections.OrderedDict[str, tuple[float, np.ndarray, int]] = collections.OrderedDict()
        self.redis = Backoff(backoff_s)

    def _failed(self) -> None:
        self.redis.failed()
        metrics.ERRORS.labels("redis").inc()

    def item_batch(self, item_ids: Sequence[str], content_types: Sequence[str],
                   inline: Sequence[dict[str, float] | None]) -> tuple[ItemBatch, list[float | None]]:
        """Feature arrays of the candidates (inline features first, then cache, then Redis) and,
        per candidate, the stamp of its cached features (None for inline or default features)."""
        now = time.monotonic()
        dense = np.zeros((len(item_ids), DENSE_DIM), np.float32)
        item_idx = np.zeros(len(item_ids), np.int64)
        stamps: list[float | None] = [None] * len(item_ids)
        misses = []
        for n, item_id in enumerate(item_ids):
            if inline[n]:
                dense[n] = dense_stats(inline[n])
                item_idx[n] = hash_id("item", item_id)
                continue
            hit = self.items.get(item_id)
            if hit is not None and hit[0] > now:
                stamps[n], dense[n], item_idx[n] = hit
            else:
                misses.append(n)
        if misses and self.redis.ready:
            try:
                fetched = self.stats.read([item_ids[n] for n in misses], int(time.time() * 1000))
            except (redis.RedisError, OSError):
                self._failed()
                fetched = None
            if fetched is not None:
                unknown = sum(1 for stats in fetched if not stats.get("exp_1d"))
                if unknown:
                    metrics.MISSING.labels("item_stats").inc(unknown)
                for n, stats in zip(misses, fetched, strict=True):
                    entry = (now + self.ttl_s, np.asarray(dense_stats(stats), np.float32), hash_id("item", item_ids[n]))
                    stamps[n], dense[n], item_idx[n] = entry
                    self.items[item_ids[n]] = entry
                    self.items.move_to_end(item_ids[n])
                while len(self.items) > self.capacity:
                    self.items.popitem(last=False)
                misses = []
        if misses:
            metrics.MISSING.labels("item").inc(len(misses))
            for n in misses:
                item_idx[n] = hash_id("item", item_ids[n])
        ctype_idx = np.fromiter((_ctype(c) for c in content_types), np.int64, len(content_types))
        return ItemBatch(item_idx, ctype_idx, dense), stamps

    def user_features(self, user_id: str) -> dict[str, Any]:
        """The history the streams wrote for ``user_id`` (empty when unknown or Redis is down)."""
        if not self.redis.ready:
            metrics.MISSING.labels("user").inc()
            return {}
        try:
            raw = self.r.get(f"{self.prefix}feat:user:{user_id}")
        except (redis.RedisError, OSError):
            self._failed()
            return {}
        if raw is None:
            metrics.MISSING.labels("user").inc()
            return {}
        try:
            return dict(orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            metrics.ERRORS.labels("bad_user_features").inc()
            return {}


@functools.lru_cache(maxsize=4096)
def _ctype(content_type: str) -> int:
    return hash_id("ctype", content_type, CONTENT_TYPE_BUCKETS)
