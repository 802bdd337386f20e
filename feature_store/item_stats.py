"""Real-time item statistics in Redis: exposures, clicks and positives over sliding windows.

Counts live in one hash per item, ``{prefix}stats:item:{id}``, in buckets of three
resolutions: minutes (for the 10 min window), ten-minute spans (1 h) and hours (1 day), plus the
time of the item's first exposure (field ``first``). :meth:`ItemStats.read` computes every window
*as of* a given time from the buckets that had closed by then, so a sample assembled later still
carries the statistics as they were when its request happened (no leakage from the future; at
most one bucket of staleness); likewise the item's age (``age_h``, 0 for an item first shown at
or after that time) and the minutes since its last exposure (``since_last_m``: from the end of
the latest closed minute bucket with an exposure, looked up to ``SINCE_LAST_MAX_M`` back).
:func:`window_stats` is the rule; ``feature_store.asof`` keeps the same rule in memory for a
replay.

Examples
--------
>>> import redis                                                         # doctest: +SKIP
>>> stats = ItemStats(redis.Redis())                                     # doctest: +SKIP
>>> stats.record([("n1", "exp", 60_000), ("n1", "clk", 60_000)])         # doctest: +SKIP
>>> stats.read(["n1"], at_ms=180_000)[0]["ctr_10m"] > 0                  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import redis

from feature_store.featurize import ITEM_STAT_FEATURES, SINCE_LAST_MAX_M, smoothed_ctr

KINDS = ("exp", "clk", "pos")
#: window name -> (bucket field prefix, bucket length ms, buckets in the window)
WINDOWS = {"10m": ("m", 60_000, 10), "1h": ("t", 600_000, 6), "1d": ("h", 3_600_000, 24)}
TTL_S = 2 * 86_400
#: the hash field holding the event time (ms) of the item's first exposure
FIRST_FIELD = "first"
#: how often (event time) a recorded item's closed buckets are pruned, and how many items' last
#: prune a writer remembers (past that it forgets them all and prunes each again once)
PRUNE_EVERY_MS, PRUNE_TRACKED = 3_600_000, 200_000


class ItemStats:
    """Writer and point-in-time reader of windowed item counters."""

    def __init__(self, client: redis.Redis, prefix: str = "hap:") -> None:
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
        first: dict[str, int] = {}  # key -> the earliest exposure of this write
        latest = None
        for item_id, kind, ts_ms in events:
            key = self.key(item_id)
            latest = ts_ms if latest is None else max(latest, ts_ms)
            for prefix, length, _ in WINDOWS.values():
                increments[key, f"{prefix}:{kind}:{ts_ms // length}"] += 1
            if kind == "exp" and ts_ms < first.get(key, ts_ms + 1):
                first[key] = ts_ms
        pipe = self.r.pipeline(transaction=False)
        keys = {key for key, _ in increments}
        for (key, field), n in increments.items():
            pipe.hincrby(key, field, n)
        for key, ts_ms in first.items():
            pipe.hsetnx(key, FIRST_FIELD, ts_ms)  # the first write wins (events arrive about in order)
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
    """Window sums over the buckets closed before ``at_ms``, smoothed click rates, the item's age
    and the minutes since its last exposure (absent when none in the look-back), all as of ``at_ms``.

    >>> raw = {b"m:exp:1": b"2", b"t:exp:0": b"2", b"h:exp:0": b"2", b"m:clk:1": b"1", b"first": b"60000"}
    >>> stats = window_stats(raw, at_ms=5 * 60_000)
    >>> stats["exp_10m"], stats["clk_10m"], stats["age_h"] * 60, stats["since_last_m"]
    (2.0, 1.0, 4.0, 3.0)
    >>> window_stats(raw, at_ms=60_000)["exp_10m"], window_stats(raw, at_ms=60_000)["age_h"]  # not closed yet
    (0.0, 0.0)
    """
    counts = {name: 0.0 for name in ITEM_STAT_FEATURES}
    ranges = {prefix: (w, at_ms // length - n, at_ms // length) for w, (prefix, length, n) in WINDOWS.items()}
    minute = WINDOWS["10m"][1]
    now_m, last_m = at_ms // minute, None
    for field, value in raw.items():
        name = field.decode()
        if name == FIRST_FIELD:
            counts["age_h"] = max(0.0, at_ms - float(value)) / 3_600_000
            continue
        prefix, kind, bucket = name.split(":")
        window, lo, hi = ranges[prefix]
        b = int(bucket)
        if lo <= b < hi:
            counts[f"{kind}_{window}"] += float(value)
        if prefix == "m" and kind == "exp" and now_m - SINCE_LAST_MAX_M <= b < now_m and (last_m is None or b > last_m):
            last_m = b
    counts.setdefault("age_h", 0.0)
    if last_m is not None:
        counts["since_last_m"] = float(now_m - last_m - 1)
    for window in WINDOWS:
        exp, clk = counts[f"exp_{window}"], counts[f"clk_{window}"]
        counts[f"ctr_{window}"] = smoothed_ctr(clk, exp)
    return counts


def _expired(field: str, now_ms: int) -> bool:
    if field == FIRST_FIELD:
        return False
    prefix, _, bucket = field.split(":")
    for _, (p, length, n) in WINDOWS.items():
        if p == prefix:
            return int(bucket) < now_ms // length - n
    return True
