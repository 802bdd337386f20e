"""Real-time item statistics in Redis: exposures, clicks and positives over sliding windows.

Counts live in one hash per item, ``{prefix}stats:item:{id}``, in buckets of three
resolutions: minutes (for the 10 min window), ten-minute spans (1 h) and hours (1 day).
:meth:`ItemStats.read` computes every window *as of* a given time from the buckets that had
closed by then, so a sample assembled later still carries the statistics as they were when
its request happened (no leakage from the future; at most one bucket of staleness).

Examples
--------
>>> import redis                                                         # doctest: +SKIP
>>> stats = ItemStats(redis.Redis(), "run1:")                            # doctest: +SKIP
>>> stats.record([("n1", "exp", 60_000), ("n1", "clk", 60_000)])         # doctest: +SKIP
>>> stats.read(["n1"], at_ms=180_000)[0]["ctr_10m"] > 0                  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import redis

from feature_store.featurize import ITEM_STAT_FEATURES, smoothed_ctr

KINDS = ("exp", "clk", "pos")
#: window name -> (bucket field prefix, bucket length ms, buckets in the window)
WINDOWS = {"10m": ("m", 60_000, 10), "1h": ("t", 600_000, 6), "1d": ("h", 3_600_000, 24)}
TTL_S = 2 * 86_400
#: how often (event time) a recorded item's closed buckets are pruned, and how many items' last
#: prune a writer remembers (past that it forgets them all and prunes each again once)
PRUNE_EVERY_MS, PRUNE_TRACKED = 3_600_000, 200_000


class ItemStats:
    """Writer and point-in-time reader of windowed item counters."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self._pruned: dict[str, int] = {}  # key -> the prune period it was last pruned in

    def key(self, item_id: str) -> str:
        return f"{self.prefix}stats:item:{item_id}"

    def record(self, events: Iterable[tuple[str, str, int]]) -> None:
        """Count ``(item_id, kind, ts_ms)`` events, ``kind`` in ``exp``, ``clk``, ``pos``.

        The key's TTL is renewed by every write, so a hash lives as long as its item is shown; its
        buckets that left their window an hour before the newest event are pruned once an hour (of
        event time) per item, so an item shown for days keeps a bounded hash (the buckets of its
        windows plus up to two hours').
        """
        increments: Counter[tuple[str, str]] = Counter()  # a popular item's events: one increment per bucket
        latest = None
        for item_id, kind, ts_ms in events:
            key = self.key(item_id)
            latest = ts_ms if latest is None else max(latest, ts_ms)
            for prefix, length, _ in WINDOWS.values():
                increments[key, f"{prefix}:{kind}:{ts_ms // length}"] += 1
        pipe = self.r.pipeline(transaction=False)
        keys = {key for key, _ in increments}
        for (key, field), n in increments.items():
            pipe.hincrby(key, field, n)
        for key in keys:
            pipe.expire(key, TTL_S)
        pipe.execute()
        if latest is not None:
            period = latest // PRUNE_EVERY_MS
            if len(self._pruned) > PRUNE_TRACKED:
                self._pruned.clear()
            # an hour's margin: a request read as of a little earlier (late events) finds its buckets
            self._prune([k for k in keys if self._pruned.get(k) != period], latest - PRUNE_EVERY_MS)
            self._pruned.update(dict.fromkeys(keys, period))

    def read(self, item_ids: Sequence[str], at_ms: int) -> list[dict[str, float]]:
        """Statistics of each item as of ``at_ms`` (names: ``feature_store.featurize.ITEM_STAT_FEATURES``)."""
        pipe = self.r.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self.key(item_id))
        return [window_stats(raw, at_ms) for raw in pipe.execute()]

    def prune(self, item_id: str, now_ms: int) -> int:
        """Delete the item's buckets older than their window; returns how many were removed."""
        return self._prune([self.key(item_id)], now_ms)

    def _prune(self, keys: list[str], now_ms: int) -> int:
        if not keys:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hkeys(key)
        stale = {key: [f for f in fields if _expired(f.decode(), now_ms)] for key, fields in zip(keys, pipe.execute(),
                                                                                                 strict=True)}
        for key, fields in stale.items():
            if fields:
                pipe.hdel(key, *fields)
        return sum(pipe.execute())


def window_stats(raw: dict[bytes, bytes], at_ms: int) -> dict[str, float]:
    """Window sums over the buckets closed before ``at_ms``, plus smoothed click rates."""
    counts = {name: 0.0 for name in ITEM_STAT_FEATURES}
    ranges = {prefix: (w, at_ms // length - n, at_ms // length) for w, (prefix, length, n) in WINDOWS.items()}
    for field, value in raw.items():
        prefix, kind, bucket = field.decode().split(":")
        window, lo, hi = ranges[prefix]
        if lo <= int(bucket) < hi:
            counts[f"{kind}_{window}"] += float(value)
    for window in WINDOWS:
        exp, clk = counts[f"exp_{window}"], counts[f"clk_{window}"]
        counts[f"ctr_{window}"] = smoothed_ctr(clk, exp)
    return counts


def _expired(field: str, now_ms: int) -> bool:
    prefix, _, bucket = field.split(":")
    for _, (p, length, n) in WINDOWS.items():
        if p == prefix:
            return int(bucket) < now_ms // length - n
    return True
