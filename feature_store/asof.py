"""The feature store's as-of rules kept in memory, for a replay read in time order.

``hap eval`` replays a log without Redis; to give its samples the features the live pipeline
gives (one featurization), :class:`AsOfFeatures` applies the rules of
:func:`feature_store.item_stats.window_stats` (window sums over the buckets closed before the
request, the item's age, the minutes since its last exposure) and of
:func:`feature_store.user_items.user_item_values` (shown / clicked before, strictly earlier, at
most ``USER_ITEM_CAP`` items per user, forgotten ``USER_ITEM_TTL_S`` after the user's last
event) incrementally: each event is counted once, and a read costs a few dictionary look-ups
per candidate instead of a scan of the item's buckets. Reads must come in non-decreasing time
(a replay's order); a test checks the values equal ``window_stats`` over the same events.

Differences from Redis: an item's hash expires two days after its last event in Redis (its age
restarts), never here (a week-long replay hardly meets it); events are taken one by one, so
within one write to Redis the earliest of an item's events sets its first time, here the first
listed (the same when events come in time order).

Examples
--------
>>> store = AsOfFeatures()
>>> store.record([("n1", "exp", 30_000), ("n1", "clk", 31_000)], [("u1", "n1", "e", 30_000)])
>>> row = store.read("u1", ["n1"], at_ms=5 * 60_000, history=())[0]
>>> row["exp_10m"], row["clk_10m"], row["since_last_m"], row["user_seen"], row["in_history"]
(1.0, 1.0, 4.0, 1.0, 0.0)
>>> other = store.read("u2", ["n1"], at_ms=5 * 60_000, history=["n1"])[0]
>>> other["user_seen"], other["in_history"]
(0.0, 1.0)
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence

from feature_store.featurize import SINCE_LAST_MAX_M, smoothed_ctr
from feature_store.item_stats import KINDS, WINDOWS
from feature_store.user_items import CLICKED, SHOWN, USER_ITEM_CAP, USER_ITEM_TTL_S, user_item_values

_MINUTE = WINDOWS["10m"][1]
_KIND = {kind: k for k, kind in enumerate(KINDS)}
_RECENT_MINUTES = 4  # distinct exposure minutes remembered per item (the latest closed one is among them)


class _Window:
    """Sums per item over the buckets ``[hi - n, hi)`` of one window, advanced as time goes on."""

    def __init__(self, length: int, n: int) -> None:
        self.length, self.n = length, n
        self.hi: int | None = None
        self.pending: dict[int, list[tuple[str, int]]] = defaultdict(list)  # open buckets
        self.closed: dict[int, list[tuple[str, int]]] = {}  # counted buckets
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(KINDS))

    def add(self, item: str, kind: int, ts_ms: int) -> None:
        b = ts_ms // self.length
        if self.hi is not None and b < self.hi:  # a late event in a closed bucket: counted at once
            if b >= self.hi - self.n:
                self.closed.setdefault(b, []).append((item, kind))
                self.sums[item][kind] += 1
            return
        self.pending[b].append((item, kind))

    def advance(self, at_ms: int) -> None:
        hi = at_ms // self.length
        if self.hi is not None and hi < self.hi:
            raise ValueError(f"reads must come in time order: {at_ms} is before the last read")
        self.hi, lo = hi, hi - self.n
        for b in sorted(b for b in self.pending if b < hi):
            events = self.pending.pop(b)
            if b >= lo:
                self.closed[b] = events
                for item, kind in events:
                    self.sums[item][kind] += 1
        for b in [b for b in self.closed if b < lo]:
            for item, kind in self.closed.pop(b):
                self.sums[item][kind] -= 1


class AsOfFeatures:
    """Item statistics and user-by-item signals as of each request of a replay, in memory."""

    def __init__(self, cap: int = USER_ITEM_CAP, ttl_s: int = USER_ITEM_TTL_S) -> None:
        self.windows = {name: _Window(length, n) for name, (_, length, n) in WINDOWS.items()}
        self.first: dict[str, int] = {}
        self.minutes: dict[str, list[int]] = {}  # item -> its latest distinct exposure minutes, ascending
        #: user -> (member -> first time, heap of (first time, member)): evicted lowest first, as Redis does
        self.users: dict[str, tuple[dict[str, int], list[tuple[int, str]]]] = {}
        self.user_last: dict[str, int] = {}
        self.cap, self.ttl_ms = cap, ttl_s * 1000

    def record(self, counts: Iterable[tuple[str, str, int]], user_items: Iterable[tuple[str, str, str, int]]) -> None:
        """Count ``(item_id, kind, ts_ms)`` as ``ItemStats.record`` does and remember
        ``(user_id, item_id, kind, ts_ms)`` as ``UserItems.record`` does."""
        for item, kind, ts_ms in counts:
            k = _KIND[kind]
            for window in self.windows.values():
                window.add(item, k, ts_ms)
            if kind == "exp":
                if ts_ms < self.first.get(item, ts_ms + 1):
                    self.first[item] = ts_ms
                minutes = self.minutes.setdefault(item, [])
                m = ts_ms // _MINUTE
                if m not in minutes:
                    bisect.insort(minutes, m)
                    del minutes[:-_RECENT_MINUTES]
        for user, item, kind, ts_ms in user_items:
            members, heap = self.users.setdefault(user, ({}, []))
            if ts_ms - self.user_last.get(user, ts_ms) > self.ttl_ms:
                members.clear()  # the Redis key would have expired
                heap.clear()
            self.user_last[user] = max(ts_ms, self.user_last.get(user, ts_ms))
            member = f"{kind}:{item}"
            if member not in members:
                members[member] = ts_ms
                heapq.heappush(heap, (ts_ms, member))
            while len(members) > self.cap:
                del members[heapq.heappop(heap)[1]]

    def read(self, user_id: str, item_ids: Sequence[str], at_ms: int, history: Iterable[str]) -> list[dict[str, float]]:
        """Every feature (``feature_store.featurize.FEATURES``) of each item for ``user_id`` as of ``at_ms``."""
        for window in self.windows.values():
            window.advance(at_ms)
        now_m = at_ms // _MINUTE
        members = self.users.get(user_id, ({}, []))[0]
        if at_ms - self.user_last.get(user_id, at_ms) > self.ttl_ms:
            members = {}
        seen = set(history)
        out = []
        for item in item_ids:
            row: dict[str, float] = {}
            for name, window in self.windows.items():
                exp, clk, pos = window.sums.get(item) or (0.0, 0.0, 0.0)
                row[f"exp_{name}"], row[f"clk_{name}"], row[f"pos_{name}"] = exp, clk, pos
                row[f"ctr_{name}"] = smoothed_ctr(clk, exp)
            first = self.first.get(item)
            row["age_h"] = 0.0 if first is None else max(0.0, at_ms - first) / 3_600_000
            closed = [m for m in self.minutes.get(item, ()) if now_m - SINCE_LAST_MAX_M <= m < now_m]
            if closed:
                row["since_last_m"] = float(now_m - closed[-1] - 1)
            row.update(user_item_values(members.get(f"{SHOWN}:{item}"), members.get(f"{CLICKED}:{item}"), at_ms,
                                        item in seen))
            out.append(row)
        return out
