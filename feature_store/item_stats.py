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
from typing import Any

import redis

from feature_store.featurize import ITEM_STAT_FEATURES, smoothed_ctr

KINDS = ("exp", "clk", "pos")
#: ``(item_id, kind, ts_ms, source, offset)``: a count of the input record at ``offset`` of ``source``
#: (``"<topic>:<partition>"``); counts of one source come in offset order
Count = tuple[str, str, int, str, int]
#: window name -> (bucket field prefix, bucket length ms, buckets in the window)
WINDOWS = {"10m": ("m", 60_000, 10), "1h": ("t", 600_000, 6), "1d": ("h", 3_600_000, 24)}
TTL_S = 2 * 86_400
#: how often (event time) a recorded item's closed buckets are pruned, and how many items' last
#: prune a writer remembers (past that it forgets them all and prunes each again once)
PRUNE_EVERY_MS, PRUNE_TRACKED = 3_600_000, 200_000


# KEYS: the item's hash, its applied-offsets hash. ARGV: TTL, then per input record in offset order:
# source, offset, n, then n (bucket field, increment). A record at or below the source's applied
# offset was counted before (a replay): skipped. One item per call: one slot on a Redis Cluster.
_RECORD_ONCE = """
local i, applied = 2, 0
while i <= #ARGV do
  local source, offset, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local done = tonumber(redis.call('HGET', KEYS[2], source) or '-1')
  if offset > done then
    for j = 0, n - 1 do redis.call('HINCRBY', KEYS[1], ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j]) end
    redis.call('HSET', KEYS[2], source, offset)
    applied = applied + 1
  end
  i = i + 3 + 2 * n
end
if applied > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return applied
"""


class ItemStats:
    """Writer and point-in-time reader of windowed item counters."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self._pruned: dict[str, int] = {}  # key -> the prune period it was last pruned in
        self._record_once = client.register_script(_RECORD_ONCE)

    def key(self, item_id: str) -> str:
        return f"{self.prefix}stats:item:{item_id}"

    def applied_key(self, item_id: str) -> str:
        """The hash of the input offsets counted into the item's statistics (source -> offset), in
        the slot of :meth:`key`: its hash tag is the item key's own, or the item key when it has none.

        >>> stats = ItemStats(redis.Redis(), "hap:")  # no connection is made
        >>> stats.applied_key("i1"), stats.applied_key("a{b}c")
        ('{hap:stats:item:i1}:applied', 'hap:stats:item:a{b}c:applied')
        """
        key = self.key(item_id)
        start = key.find("{")
        tagged = start >= 0 and key.find("}", start + 2) > start
        return f"{key}:applied" if tagged else f"{{{key}}}:applied"

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
            for field in _fields(kind, ts_ms):
                increments[key, field] += 1
        pipe = self.r.pipeline(transaction=False)
        keys = {key for key, _ in increments}
        for (key, field), n in increments.items():
            pipe.hincrby(key, field, n)
        for key in keys:
            pipe.expire(key, TTL_S)
        pipe.execute()
        self._pruned_once(keys, latest)

    def record_once(self, counts: Sequence[Count]) -> int:
        """Count ``counts`` as :meth:`record` does, each input record at most once: an item's hash
        remembers, per source, the last offset counted into it (:meth:`applied_key`), and a record at
        or below it is skipped, so a replay after a crash adds nothing. Atomic per item (a script);
        after a failure, writing the same counts again completes what it had not. Returns the input
        records counted now, per item."""
        by_item: dict[str, dict[tuple[str, int], Counter[str]]] = {}
        latest = None
        for item_id, kind, ts_ms, source, offset in counts:
            latest = ts_ms if latest is None else max(latest, ts_ms)
            record = by_item.setdefault(item_id, {}).setdefault((source, offset), Counter())
            record.update(_fields(kind, ts_ms))
        calls = []
        for item_id, records in by_item.items():
            args: list[Any] = [TTL_S]
            for (source, offset), fields in records.items():
                args += [source, offset, len(fields), *(x for field, n in fields.items() for x in (field, n))]
            calls.append(([self.key(item_id), self.applied_key(item_id)], args))
        try:
            applied = self._run_record_once(calls)
        except redis.exceptions.NoScriptError:  # a Redis Cluster's pipeline does not load scripts itself
            self.r.script_load(_RECORD_ONCE)
            applied = self._run_record_once(calls)  # the records written before are skipped: once each
        self._pruned_once({self.key(item_id) for item_id in by_item}, latest)
        return applied

    def _run_record_once(self, calls: list[tuple[list[str], list[Any]]]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for keys, args in calls:
            self._record_once(keys=keys, args=args, client=pipe)
        return sum(pipe.execute())

    def _pruned_once(self, keys: set[str], latest: int | None) -> None:
        """Prune the written ``keys`` not pruned yet in the prune period of ``latest`` (see :meth:`record`)."""
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


def _fields(kind: str, ts_ms: int) -> list[str]:
    """The bucket fields one count of ``kind`` at ``ts_ms`` increments, one per window."""
    return [f"{prefix}:{kind}:{ts_ms // length}" for prefix, length, _ in WINDOWS.values()]


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
