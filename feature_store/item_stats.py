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

from feature_store.featurize import ITEM_STAT_FEATURES, SINCE_LAST_MAX_M, smoothed_ctr

KINDS = ("exp", "clk", "pos")
#: ``(item_id, kind, ts_ms, source, offset)``: a count of the input record at ``offset`` of ``source``
#: (``"<topic>:<partition>"``); counts of one source come in offset order
Count = tuple[str, str, int, str, int]
#: window name -> (bucket field prefix, bucket length ms, buckets in the window)
WINDOWS = {"10m": ("m", 60_000, 10), "1h": ("t", 600_000, 6), "1d": ("h", 3_600_000, 24)}
TTL_S = 2 * 86_400
#: the hash field holding the event time (ms) of the item's first exposure
FIRST_FIELD = "first"
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
    for j = 0, n - 1 do
      local field, value = ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j]
      if field == 'FIRST_FIELD' then  -- the first exposure's time: a minimum, not a sum
        local current = tonumber(redis.call('HGET', KEYS[1], field) or '')
        if current == nil or tonumber(value) < current then redis.call('HSET', KEYS[1], field, value) end
      else
        redis.call('HINCRBY', KEYS[1], field, value)
      end
    end
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


_RECORD_ONCE_SCRIPT = _RECORD_ONCE.replace("FIRST_FIELD", FIRST_FIELD)


class ItemStats:
    """Writer and point-in-time reader of windowed item counters."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self._pruned: dict[str, int] = {}  # key -> the prune period it was last pruned in
        self._record_once = client.register_script(_RECORD_ONCE_SCRIPT)

    def key(self, item_id: str) -> str:
        return f"{self.prefix}stats:item:{item_id}"

    def applied_key(self, item_id: str) -> str:
        """The hash of the input offsets counted into the item's statistics (source -> offset), in
        the slot of :meth:`key`: its hash tag is the item key's own, or the item key when it has none.

        >>> stats = ItemStats(redis.Redis(), "demo:")  # no connection is made
        >>> stats.applied_key("i1"), stats.applied_key("a{b}c")
        ('{demo:stats:item:i1}:applied', 'demo:stats:item:a{b}c:applied')
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
        windows, the minute buckets of ``since_last_m``'s look-back, plus up to two hours').
        """
        increments: Counter[tuple[str, str]] = Counter()  # a popular item's events: one increment per bucket
        first: dict[str, int] = {}  # key -> the earliest exposure of this write
        latest = None
        for item_id, kind, ts_ms in events:
            key = self.key(item_id)
            latest = ts_ms if latest is None else max(latest, ts_ms)
            for field in _fields(kind, ts_ms):
                increments[key, field] += 1
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
        self._pruned_once(keys, latest)

    def record_once(self, counts: Sequence[Count], horizon_ms: int | None = None) -> int:
        """Count ``counts`` as :meth:`record` does, each input record at most once: an item's hash
        remembers, per source, the last offset counted into it (:meth:`applied_key`), and a record at
        or below it is skipped, so a replay after a crash adds nothing. Atomic per item (a script);
        after a failure, writing the same counts again completes what it had not. Returns the input
        records counted now, per item.

        ``horizon_ms``: prune as of this time at the latest (the newest time the statistics were
        read as of) rather than the newest count: reads that wait for a partition behind the others
        (in a replay in log time, hours of event time behind) still find their buckets."""
        by_item: dict[str, dict[tuple[str, int], Counter[str]]] = {}
        latest = None
        for item_id, kind, ts_ms, source, offset in counts:
            latest = ts_ms if latest is None else max(latest, ts_ms)
            record = by_item.setdefault(item_id, {}).setdefault((source, offset), Counter())
            record.update(_fields(kind, ts_ms))
            if kind == "exp":  # one input record holds one event: its time is the item's first, or later
                record[FIRST_FIELD] = ts_ms
        calls = []
        for item_id, records in by_item.items():
            args: list[Any] = [TTL_S]
            for (source, offset), fields in records.items():
                args += [source, offset, len(fields), *(x for field, n in fields.items() for x in (field, n))]
            calls.append(([self.key(item_id), self.applied_key(item_id)], args))
        try:
            applied = self._run_record_once(calls)
        except redis.exceptions.NoScriptError:  # not loaded yet, or Redis lost its scripts (a restart, a failover)
            self.r.script_load(_RECORD_ONCE_SCRIPT)
            applied = self._run_record_once(calls)  # the records written before are skipped: once each
        if latest is not None and horizon_ms is not None:
            latest = min(latest, horizon_ms)
        self._pruned_once({self.key(item_id) for item_id in by_item}, latest)
        return applied

    def _run_record_once(self, calls: list[tuple[list[str], list[Any]]]) -> int:
        """The script's calls by its SHA alone (``EVALSHA``), in one pipeline: redis-py's pipeline with a
        registered script asks Redis whether it is loaded (``SCRIPT EXISTS``) on every execute; here a
        missing script raises ``NoScriptError`` (:meth:`record_once` loads it then and writes again)."""
        pipe = self.r.pipeline(transaction=False)
        sha = self._record_once.sha
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
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
        """Delete the item's buckets older than their window (minute buckets: older than the look-back
        of ``since_last_m`` too); returns how many were removed."""
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
            counts["age_h"] = age_h(float(value), at_ms)
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


def age_h(first_ms: float | None, at_ms: int) -> float:
    """The item's age in hours as of ``at_ms`` from its first exposure (0 before it, or never shown).

    >>> age_h(0.0, 5_400_000), age_h(None, 5_400_000), age_h(6_000_000.0, 5_400_000)
    (1.5, 0.0, 0.0)
    """
    return 0.0 if first_ms is None else max(0.0, at_ms - first_ms) / 3_600_000


def first_exposure_ms(raw: dict[bytes, bytes]) -> float | None:
    """The event time of the item's first exposure in its hash as ``HGETALL`` returns it (None: none)."""
    value = raw.get(FIRST_FIELD.encode())
    return None if value is None else float(value)


#: minute buckets a reader needs, back from its time: the 10 min window's, and the look-back of ``since_last_m``
_KEPT = {p: max(n, SINCE_LAST_MAX_M) if p == WINDOWS["10m"][0] else n for p, _, n in WINDOWS.values()}


def _expired(field: str, now_ms: int) -> bool:
    if field == FIRST_FIELD:
        return False
    prefix, _, bucket = field.split(":")
    for _, (p, length, _n) in WINDOWS.items():
        if p == prefix:
            return int(bucket) < now_ms // length - _KEPT[p]
    return True
