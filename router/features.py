"""Router-side features as arrays: item statistics in a slot table, user history and user-by-item
events from Redis.

:class:`FeatureCache` keeps every item it has seen in one row (a *slot*) of fixed arrays: the
dense statistics, the hashed id, the time the row was read and a *stamp* (a number that changes
whenever the row's contents do, so a cached item vector knows whether it is still valid). A
request maps its ids to slots with one C-level pass (``map(dict.get)``) and gathers its rows
with one fancy index: no Python loop per candidate.

Refresh without a tail (stale-while-revalidate): a row is re-read once per bucket of the item
statistics (a minute, ``stats_period_s``), since its windows sum closed buckets only and a re-read
before the next close would read the same counts (issue 34: re-reading every 2.5-5 s was the
5,000-candidate tail, and ~16 reads of every row a minute). See :func:`next_read_s`: a row is due
``stats_settle_s`` or more after the first close its read did not see settled (time for the close's
late writes), at its slot's own phase of the period, so a table's rows spread their re-reads evenly
over the minute instead of all expiring, and loading Redis and the process, in one instant. So a
closed minute's counts reach a row within one period of the close (late writes that land more than
``stats_settle_s`` after it: within two). A stale row is still served, and its id is queued for a
background thread that reads it again from Redis; the thread never touches the arrays: the request
thread applies finished reads at the start of its next lookup (one vectorised write), so a request
always sees whole rows. The thread gathers the stale rows of the requests of ``REFRESH_GATHER_S``
into one read (a round trip and a reply's parse cost about as much as 30 rows) and turns them into
dense rows itself, so the request thread only compares and copies them. Only items never seen before
are read synchronously (in one round trip for all of them). A lookup never fails a request: when
Redis is down, unseen items get the defaults (counted as ``missing_features{kind="item"}``) and
stale rows keep serving; while Redis is failing, lookups skip it for ``backoff_s``, and queue no
refresh (each request queued its stale rows again, and the thread dropped them, for as long as the
backoff lasted).
``missing_features{kind="item_stats"}`` counts items with no statistics at all (not items whose
windows are merely empty); a malformed statistics hash or user history gives the defaults,
counted as ``errors{kind="bad_item_stats"|"bad_user_features"}``.

The table is bounded in bytes (``max_bytes``, ids at their longest): when it is full, the least
recently used eighth of the rows is evicted. User histories are kept the same way (read once,
re-read in the background once older than ``ttl_s``) in an LRU bounded by ``user_max_bytes``,
so a request in the steady state makes no Redis round trip at all.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import redis

from feature_store.backoff import Backoff
from feature_store.featurize import (
    CONTENT_TYPE_BUCKETS,
    DENSE_DIM,
    FEATURES,
    ItemBatch,
    dense_stats_matrix,
    hash_id,
)
from feature_store.item_stats import WINDOWS
from feature_store.user_features import user_features_key
from feature_store.user_items import USER_ITEM_CAP, parse_user_items, user_items_key
from router import metrics
from router.limits import ID_CHARS, MAX_HISTORY
from router.stats_reader import ABSENT, MALFORMED, StatsReader

log = logging.getLogger("hap.router")
#: bytes a row may hold at most: its arrays, the id (at its longest) and the id's dict entry
ROW_BYTES = DENSE_DIM * 4 + 8 * 5 + 1 + ID_CHARS + 120
NEVER = -np.inf
#: a lookup's stamp of a row whose features came inline (never the table's: its stamps start at 1)
INLINE = -1
#: a cached user's bytes beyond its item ids' characters, and per id (history, shown, clicked)
USER_BYTES, HISTORY_ENTRY_BYTES = 400, 60
#: the dense row of a candidate without any feature (what a row holds until Redis is read)
_DEFAULT_DENSE = dense_stats_matrix(np.full((1, DENSE_DIM), np.nan))[0]
#: at least four requests of the largest size fit, whatever ``max_bytes`` says
MIN_ROWS = 20_000
#: items per round trip of a background refresh: parsing a reply holds the GIL (~2.5 us per item), so a
#: request waits behind at most ~0.6 ms of it instead of ~5 ms for a request's 2000 stale rows at once
REFRESH_BATCH = 256
#: how long the refresh thread lets stale rows queue before it reads them: the rows of every request
#: in that time go in one round trip instead of one each (issue 34: the round trip, not the rows, was
#: most of the refresh's CPU at 30 rows per read). Rows come due spread over the minute (:func:`next_read_s`):
#: for 20,000 rows in use, ~330 a second, so half a second gathers ~170 rows per read where 20 ms gathered ~7
REFRESH_GATHER_S = 0.5


#: item statistics change when a bucket closes (the windows sum closed buckets only): a minute
STATS_PERIOD_S = WINDOWS["10m"][1] / 1000
#: a close's late writes (the streams' lag, p99 ~1.2 s at half their top rate) land within this
STATS_SETTLE_S = 5.0
#: the golden ratio's fraction: slot n's phase is frac(n * it), so any run of slots spreads evenly
_PHASE_STEP = (5 ** 0.5 - 1) / 2


def next_read_s(read_s: float, slots: np.ndarray, period_s: float = STATS_PERIOD_S,
                settle_s: float = STATS_SETTLE_S) -> np.ndarray:
    """When rows read at wall time ``read_s`` are due for a re-read (wall time, s): after the first
    bucket close that read did not see settled (``settle_s`` after the close), at each slot's own
    phase in ``[settle_s, period_s)`` after it. A row is read once per period, and rows read together
    come due spread over the period.

    >>> next_read_s(125.0, np.array([0, 1, 2]), 60.0, 5.0).round(1)  # 5 s after the close at 120: settled
    array([185., 219., 198.])
    >>> next_read_s(122.0, np.array([0, 1, 2]), 60.0, 5.0).round(1)  # 2 s after it: read again once settled
    array([125., 159., 138.])
    """
    close = (np.floor((read_s - settle_s) / period_s) + 1) * period_s
    return close + settle_s + (period_s - settle_s) * ((slots * _PHASE_STEP) % 1.0)


class DuplicateCandidate(ValueError):
    """Two candidates of a lookup name the same item: ``index`` repeats the id of ``first``."""

    def __init__(self, index: int, first: int) -> None:
        super().__init__(f"candidates[{index}].item_id: duplicate of candidates[{first}]")
        self.index, self.first = index, first


def first_duplicate(item_ids: Sequence[str]) -> tuple[int, int]:
    """The first index whose id an earlier one has, and that earlier one's (ids known to repeat).

    >>> first_duplicate(["a", "b", "c", "b", "a"])
    (3, 1)
    """
    seen: dict[str, int] = {}
    for i, item_id in enumerate(item_ids):
        first = seen.setdefault(item_id, i)
        if first != i:
            return i, first
    raise ValueError("the ids are distinct")


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    """A request's candidates as arrays: features, their slots, and each row's stamp (``INLINE``: the
    features came with the request)."""

    items: ItemBatch
    slots: np.ndarray
    stamps: np.ndarray


class FeatureCache:
    """Slot table of item features (stale-while-revalidate) plus user histories from Redis."""

    def __init__(self, client: redis.Redis, *, max_bytes: int = 64 << 20, ttl_s: float = 5.0,
                 backoff_s: float = 1.0, prefix: str, capacity: int | None = None,
                 user_max_bytes: int = 16 << 20, stats_period_s: float = STATS_PERIOD_S,
                 stats_settle_s: float = STATS_SETTLE_S) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s  # user histories' (an item row's re-read: :func:`next_read_s`)
        self.stats_period_s, self.stats_settle_s = stats_period_s, stats_settle_s
        self.capacity = capacity or max(MIN_ROWS, max_bytes // ROW_BYTES)
        cap = self.capacity
        self.dense = np.tile(_DEFAULT_DENSE, (cap, 1))
        self.item_idx = np.zeros(cap, np.int64)
        self.ctype_idx = np.zeros(cap, np.int64)  # the content type the slot was last asked with
        self.stamp = np.zeros(cap, np.int64)
        #: monotonic time after which a row read from Redis is stale; NEVER: not read yet
        self.refresh_at = np.full(cap, NEVER)
        self.last_used = np.zeros(cap, np.float64)
        self.pending = np.zeros(cap, bool)  # queued for a background refresh
        self.occupied = np.zeros(cap, bool)
        self.slot_of: dict[str, int] = {}
        self.id_of: list[str | None] = [None] * cap
        self.free = list(range(cap - 1, -1, -1))
        self._next_stamp = 1
        self.reader = StatsReader(client, prefix)
        self.redis = Backoff(backoff_s)
        self._queue: collections.deque[tuple[np.ndarray, np.ndarray, list[str]]] = collections.deque()
        self._done: collections.deque[
            tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int]] = collections.deque()
        #: scratch: each slot's row in the request in hand (:meth:`rows_among`; the duplicate check of :meth:`lookup`)
        self._row_of_slot = np.zeros(cap, np.int64)
        #: user id -> (monotonic time read, features); LRU, at most ``user_max_bytes`` (estimated)
        self.users: collections.OrderedDict[str, tuple[float, dict[str, Any], int]] = collections.OrderedDict()
        self.user_bytes, self.user_max_bytes = 0, user_max_bytes
        self._user_queue: collections.deque[str] = collections.deque()
        self._user_done: collections.deque[tuple[str, dict[str, Any] | None]] = collections.deque()
        self._user_pending: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request path --------------------------------------------------------------------
    def lookup(self, item_ids: Sequence[str], content_types: Sequence[str],
               inline: np.ndarray | None = None, inline_rows: np.ndarray | None = None) -> Lookup:
        """The candidates' features: ``inline`` (dense rows of ``inline_rows``) first, then the
        table, then (for items never seen) Redis. Raises :class:`DuplicateCandidate` (before it
        changes anything) when two ids are the same: the request's decode leaves that check here,
        where the ids' slots find it without a set of the ids."""
        self._apply_done()
        now = time.monotonic()
        n = len(item_ids)
        slots = np.fromiter(map(self.slot_of.get, item_ids, repeat(-1)), np.int64, n)
        new = np.flatnonzero(slots < 0)
        new_ids = [item_ids[i] for i in new.tolist()]
        known = slots[slots >= 0] if len(new) else slots
        # the ids are distinct when their slots are (a scatter, not a set of n strings) and the unseen ones are
        self._row_of_slot[known] = order = np.arange(len(known))
        if (self._row_of_slot[known] != order).any() or len(set(new_ids)) != len(new_ids):
            raise DuplicateCandidate(*first_duplicate(item_ids))
        if len(new):
            slots[new] = self._allocate(new_ids, protect=known)
            self._row_of_slot[slots] = np.arange(n)  # each slot's row, for rows_among
        self.last_used[slots] = now
        ctypes = ctype_codes(content_types)
        self.ctype_idx[slots] = ctypes
        from_store = np.ones(n, bool)
        if inline_rows is not None and len(inline_rows):
            from_store[inline_rows] = False
        due = self.refresh_at[slots]
        cold = np.flatnonzero(from_store & (due == NEVER))
        if len(cold):
            self._read_now(slots[cold], [item_ids[i] for i in cold.tolist()])
        stale = from_store & (due != NEVER) & (due < now) & ~self.pending[slots]
        if stale.any() and self.redis.ready:  # while Redis backs off, stale rows serve without a read queued
            self._enqueue(slots[stale], [item_ids[i] for i in np.flatnonzero(stale).tolist()])
        dense = self.dense[slots]
        stamps = self.stamp[slots]
        if inline_rows is not None and len(inline_rows):
            dense[inline_rows] = inline
            stamps[inline_rows] = INLINE
        return Lookup(ItemBatch(self.item_idx[slots], ctypes, dense), slots, stamps)

    def rows_among(self, found: Lookup, item_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Those of ``item_ids`` that are candidates of ``found`` (the latest lookup, which left each of its
        slots' row in the scratch array), and their rows: a probe of the table per id, not a probe per
        candidate (issue 34: a user's few hundred items against 5,000 candidates)."""
        n = len(found.slots)
        slots = np.fromiter(map(self.slot_of.get, item_ids, repeat(-1)), np.int64, len(item_ids))
        rows = self._row_of_slot[slots]  # a stale row of another request where the slot is not a candidate
        rows[slots < 0] = 0
        np.minimum(rows, n - 1, out=rows)
        hit = np.flatnonzero((slots >= 0) & (found.slots[rows] == slots))
        return [item_ids[i] for i in hit.tolist()], rows[hit]

    def item_batch(self, item_ids: Sequence[str], content_types: Sequence[str],
                   inline: Sequence[dict[str, float] | None]) -> tuple[ItemBatch, np.ndarray]:
        """Feature arrays of the candidates (``inline`` statistics per candidate, or None) and their stamps."""
        rows = np.array([i for i, stats in enumerate(inline) if stats], np.int64)
        dense = inline_matrix([inline[i] for i in rows.tolist()]) if len(rows) else None
        found = self.lookup(item_ids, content_types, dense, rows)
        return found.items, found.stamps

    def put(self, item_ids: Sequence[str], stats: Sequence[dict[str, float]]) -> None:
        """Rows for ``item_ids`` as if just read from Redis with these statistics (a warm cache
        without Redis: benches, evaluation)."""
        slots = np.fromiter(map(self.slot_of.get, item_ids, repeat(-1)), np.int64, len(item_ids))
        new = np.flatnonzero(slots < 0)
        if len(new):
            slots[new] = self._allocate([item_ids[i] for i in new.tolist()], protect=slots[slots >= 0])
        self._write(slots, inline_matrix(stats), np.ones(len(slots), np.int8), int(time.time() * 1000))

    def _allocate(self, ids: list[str], protect: np.ndarray) -> np.ndarray:
        if len(ids) > len(self.free):
            self._evict(len(ids) - len(self.free) + self.capacity // 8, protect)
        slots = np.array([self.free.pop() for _ in range(len(ids))], np.int64)
        self.slot_of.update(zip(ids, slots.tolist(), strict=True))
        for slot, item_id in zip(slots.tolist(), ids, strict=True):
            self.id_of[slot] = item_id
        self.occupied[slots] = True
        self.dense[slots] = _DEFAULT_DENSE  # the no-features default until a read fills the row
        self.item_idx[slots] = np.fromiter((hash_id("item", i) for i in ids), np.int64, len(ids))
        self.refresh_at[slots] = NEVER
        self.pending[slots] = False
        self._restamp(slots)
        return slots

    def _evict(self, count: int, protect: np.ndarray) -> None:
        """Free the ``count`` least recently used slots (never those of the request in hand)."""
        used = np.flatnonzero(self.occupied)
        age = self.last_used[used].copy()
        keep = np.isin(used, protect)
        age[keep] = np.inf
        count = min(count, int((~keep).sum()))
        victims = used[np.argpartition(age, count - 1)[:count]] if count else used[:0]
        for slot in victims.tolist():
            del self.slot_of[self.id_of[slot]]
            self.id_of[slot] = None
            self.free.append(slot)
        self.occupied[victims] = False
        self._restamp(victims)
        metrics.FEATURE_EVICTIONS.inc(len(victims))

    def _restamp(self, slots: np.ndarray) -> None:
        self.stamp[slots] = np.arange(self._next_stamp, self._next_stamp + len(slots))
        self._next_stamp += len(slots)

    def _write(self, slots: np.ndarray, dense: np.ndarray, state: np.ndarray, read_ms: int) -> None:
        """Dense rows read from Redis as of ``read_ms`` (wall time) into the table (data first, then
        the stamp). Only a row whose values changed gets a new stamp: a refresh that read the same
        statistics keeps its item vectors."""
        changed = slots[(self.dense[slots] != dense).any(axis=1)]
        self.dense[slots] = dense
        due_s = next_read_s(read_ms / 1000, slots, self.stats_period_s, self.stats_settle_s)
        self.refresh_at[slots] = time.monotonic() + (due_s - time.time())
        self.pending[slots] = False
        self._restamp(changed)
        absent = int((state == ABSENT).sum())
        if absent:
            metrics.MISSING.labels("item_stats").inc(absent)
        malformed = int((state == MALFORMED).sum())
        if malformed:
            metrics.ERRORS.labels("bad_item_stats").inc(malformed)

    def _read_now(self, slots: np.ndarray, ids: list[str]) -> None:
        if self.redis.ready:
            read_ms = int(time.time() * 1000)
            try:
                raw, state = self.reader.read(ids, read_ms)
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            else:
                self._write(slots, dense_stats_matrix(raw), state, read_ms)
                return
        metrics.MISSING.labels("item").inc(len(ids))

    def _failed(self, exc: Exception) -> None:
        self.redis.failed()
        metrics.ERRORS.labels("redis").inc()
        log.debug("feature store unreachable: %r", exc)

    # -- background refresh --------------------------------------------------------------------
    def _enqueue(self, slots: np.ndarray, ids: list[str]) -> None:
        self.pending[slots] = True
        self._queue.append((slots, self.stamp[slots].copy(), ids))
        if self._thread is None:
            self.start()
        self._wake.set()

    def _apply_done(self) -> None:
        """Apply the background reads that finished (rows evicted or rewritten since are skipped)."""
        while self._done:
            slots, stamps, dense, state, read_ms = self._done.popleft()
            same = self.stamp[slots] == stamps
            if dense is None or state is None:  # the read failed: the rows stay as they are, and stale
                self.pending[slots[same]] = False
                continue
            self._write(slots[same], dense[same], state[same], read_ms)

    def start(self) -> None:
        """Start the refresh thread (done on the first stale row; idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._refresh_loop, daemon=True, name="hap-features")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._queue:
                self._stop.wait(REFRESH_GATHER_S)  # the next requests' stale rows join this read
            while self._queue and not self._stop.is_set():
                slots, stamps, ids = self._gather()
                dense = state = None
                read_ms = int(time.time() * 1000)
                if self.redis.ready:
                    try:
                        raw, state = self.reader.read(ids, read_ms, batch=REFRESH_BATCH)
                        dense = dense_stats_matrix(raw)
                    except (redis.RedisError, OSError) as exc:
                        self._failed(exc)
                    except Exception:  # noqa: BLE001 - the refresh must outlive anything it reads
                        metrics.ERRORS.labels("feature_refresh").inc()
                        log.exception("feature refresh")
                self._done.append((slots, stamps, dense, state, read_ms))
            while self._user_queue and not self._stop.is_set():
                user_id = self._user_queue.popleft()
                self._user_done.append((user_id, self._read_user(user_id) if self.redis.ready else None))

    def _gather(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Queued reads taken together (at least one, then others while fewer than ``REFRESH_BATCH`` rows)."""
        parts = [self._queue.popleft()]
        rows = len(parts[0][2])
        while self._queue and rows < REFRESH_BATCH:
            parts.append(self._queue.popleft())
            rows += len(parts[-1][2])
        if len(parts) == 1:
            return parts[0]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                [item_id for p in parts for item_id in p[2]])

    # -- users ----------------------------------------------------------------------------------
    def user_features(self, user_id: str) -> dict[str, Any]:
        """What the streams wrote for ``user_id``: ``{"history": [item ids]}``, and, where the user
        was shown or clicked items, ``"shown"`` and ``"clicked"`` (item id -> first event time, ms,
        :mod:`feature_store.user_items`); empty when unknown, malformed (counted) or Redis is down.
        Served from a local LRU once read; a stale entry is re-read in the background (as item
        rows are)."""
        self._apply_users()
        hit = self.users.get(user_id)
        if hit is not None:
            self.users.move_to_end(user_id)
            if hit[0] < time.monotonic() - self.ttl_s and user_id not in self._user_pending:
                self._user_pending.add(user_id)
                self._user_queue.append(user_id)
                if self._thread is None:
                    self.start()
                self._wake.set()
            return hit[1]
        if not self.redis.ready:
            metrics.MISSING.labels("user").inc()
            return {}
        features = self._read_user(user_id)
        if features is None:
            return {}
        self._put_user(user_id, features)
        return features

    def _read_user(self, user_id: str) -> dict[str, Any] | None:
        """Read and check one user's features (one round trip); None when Redis failed (counted)."""
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.get(user_features_key(user_id, self.prefix))
            pipe.zrange(user_items_key(user_id, self.prefix), -USER_ITEM_CAP, -1, withscores=True)
            raw, pairs = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        shown, clicked = parse_user_items(pairs)
        items = {name: times for name, times in (("shown", shown), ("clicked", clicked)) if times}
        if raw is None:
            metrics.MISSING.labels("user").inc()
            return items
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        history = value.get("history", []) if isinstance(value, dict) else None
        if not isinstance(history, list) or not all(isinstance(h, str) and 0 < len(h) <= ID_CHARS for h in history):
            metrics.ERRORS.labels("bad_user_features").inc()
            return items
        return {"history": history[-MAX_HISTORY:], **items}

    def _put_user(self, user_id: str, features: dict[str, Any]) -> None:
        old = self.users.pop(user_id, None)
        if old is not None:
            self.user_bytes -= old[2]
        ids = [*features.get("history", []), *features.get("shown", ()), *features.get("clicked", ())]
        size = USER_BYTES + len(user_id) + sum(map(len, ids)) + HISTORY_ENTRY_BYTES * len(ids)
        self.users[user_id] = (time.monotonic(), features, size)
        self.user_bytes += size
        while self.user_bytes > self.user_max_bytes and len(self.users) > 1:
            self.user_bytes -= self.users.popitem(last=False)[1][2]

    def _apply_users(self) -> None:
        while self._user_done:
            user_id, features = self._user_done.popleft()
            self._user_pending.discard(user_id)
            if features is not None and user_id in self.users:
                self._put_user(user_id, features)


def inline_matrix(stats: Sequence[dict[str, float]]) -> np.ndarray:
    """Dense rows of already validated inline statistics (one C-level pass per statistic)."""
    return dense_stats_matrix(_raw_of(stats))


_COLUMN = {name: j for j, name in enumerate(FEATURES)}


def _raw_of(stats: Sequence[dict[str, float]]) -> np.ndarray:
    """``(N, DENSE_DIM)`` float64 of feature dicts in ``FEATURES`` order, NaN where absent: one C-level
    pass per feature some dict names (not per feature there is: a client sends a few)."""
    raw = np.full((len(stats), DENSE_DIM), np.nan)
    for name in _COLUMN.keys() & set().union(*stats):
        raw[:, _COLUMN[name]] = np.fromiter(map(dict.get, stats, repeat(name), repeat(np.nan)), np.float64,
                                            len(stats))
    return raw


def ctype_codes(content_types: Sequence[str]) -> np.ndarray:
    """The content types' embedding rows, hashed once per distinct type (a request has one or a few).

    >>> ctype_codes(["video", "news", "video"]).tolist() == [_ctype("video"), _ctype("news"), _ctype("video")]
    True
    """
    n = len(content_types)
    if n and content_types.count(content_types[0]) == n:
        return np.full(n, _ctype(content_types[0]), np.int64)
    codes = {kind: _ctype(kind) for kind in dict.fromkeys(content_types)}
    return np.fromiter(map(codes.__getitem__, content_types), np.int64, n)


@functools.lru_cache(maxsize=4096)
def _ctype(content_type: str) -> int:
    return hash_id("ctype", content_type, CONTENT_TYPE_BUCKETS)
