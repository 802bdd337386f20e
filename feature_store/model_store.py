"""Versioned model weights in Redis: safetensors blobs, one atomic manifest, a notification.

Publishing a version: (1) each tier's blob is written under an immutable key
``{hap:model:manifest}:blob:{version}:{tier}``; (2) the manifest ``hap:model:manifest`` is
switched by one compare-and-set (a Lua script: readers see the old or the new version, both
tiers together); (3) the version number is published on ``hap:model:updates``. Every key is
spelled once, in :class:`ModelKeys`; the others' hash tag is the manifest's name, so on Redis
Cluster all of them live in the manifest's slot and the switch reads and writes them in one
script.

One writer: the switch succeeds only for the holder of the writer lease (see
:mod:`feature_store.lease`; or, for a writer without one, while nobody holds it), only while
its term is the newest, and only if the manifest still holds the version read when the
publish began; the new version must be higher. Otherwise it raises :class:`FencedError`
and nothing changes. Versions go down only by :meth:`ModelStore.rollback`, which records
``rollback`` (the version it replaced, when, why) in the manifest. Embedding tables travel as
deltas (rows touched since the previous version) with a full blob every ``full_every``
versions, so each tier's manifest entry lists its ``chain``: the blobs from the last full
one up to this version, applied in order. Nothing here unpickles: blobs are safetensors,
the manifest is JSON.

Integrity: each tier entry records the SHA-256 of every blob of its chain (``sha256``); a blob
is read only if its bytes have that digest, its tensors are finite, and a delta's rows lie in
its table. Weights that are not finite are refused at publish time, before anything is written.

Pinning: :meth:`ModelStore.pin` makes a kept version the manifest's (a recorded rollback when it is
an older one) and sets the pin key ``{hap:model:manifest}:pin`` in the same script; while it is set
every publish is refused (:class:`FencedError`, ``pinned``, before any blob is written) and so is a
rollback, until :meth:`ModelStore.unpin`. Routers serve the pinned version even when the manifest
names another (a writer that bypassed the fence; see :mod:`router.holder`).

Kept history: the last ``keep_versions`` versions, plus snapshots reaching back
``snapshot_keep_s``: a version is published as a *snapshot* (full in every tier, so it holds one
blob per tier and no delta chain) when no kept snapshot is younger than ``snapshot_every_s``.

Memory is bounded by the count of kept versions (``keep_versions``, plus the snapshots), not by time: a blob is
written with a TTL (``pending_ttl_s``) that the manifest's switch removes, so a blob whose
publish failed expires on its own; a blob that no kept version references any more gets a short
grace TTL (``superseded_ttl_s``, time for a router to finish loading it) and is gone after it.
A publish that fails deletes the blobs it wrote at once (unless the manifest adopted them), so
Redis at ``maxmemory`` gets the room back for the retry; the TTL covers a Redis it cannot reach.
The first publish of a store also gives that grace TTL to any unreferenced blob without one
(left by a crash of an older learner). See docs/operations.md for the sizing.

Examples
--------
>>> import numpy as np, redis                                   # doctest: +SKIP
>>> store = ModelStore(redis.Redis(), prefix="run1:")                          # doctest: +SKIP
>>> form = TierForm({"w": np.ones(2, np.float32)}, {"embeddings": []})  # doctest: +SKIP
>>> v = store.publish({"light": form, "expressive": form}, trained_until_event_ts_ms=0,
...                   trained_until_finalized_ts_ms=0, samples_seen=0)   # doctest: +SKIP
>>> store.load().version == v                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import redis
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

MAX_BLOB_BYTES = 256 << 20
MAX_MANIFEST_BYTES = 4 << 20
TIERS = ("light", "expressive")
#: the learner's default: a snapshot (a full version kept for rollback) every 2 hours, kept a day (13 at most:
#: ~440 MB at the default sizes, docs/operations.md)
SNAPSHOT_EVERY_S = 7200.0
SNAPSHOT_KEEP_S = 86400.0
PENDING_TTL_S = 600  # a blob not yet adopted by the manifest: long enough for any publish to finish
SUPERSEDED_TTL_S = 60  # a blob no kept version references: time for a router to finish loading it


class ModelStoreError(RuntimeError):
    """A version that cannot be published or loaded: missing blob, corrupt data, bad manifest.

    ``key`` names the blob at fault where there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class FencedError(ModelStoreError):
    """The fence refused a manifest switch (or a lease); nothing was changed.

    ``kind`` is what callers branch on; ``retriable`` says whether the same writer may try again:

    - ``lease_held`` (retriable): another writer holds the lease; wait until it is released or expires;
    - ``version_moved`` (retriable): the manifest changed between the read and the switch (a rollback,
      another writer without a lease); the next publish re-reads it;
    - ``lease_lost`` (final): another writer acquired the lease since this one did; stop writing;
    - ``stale_term`` (final): the manifest was written under a later term than this writer's;
    - ``pinned`` (retriable): an operator pinned a version (``hap models pin``); nothing supersedes
      it until it is unpinned (``detail``: the pinned version).

    ``detail`` names what was found (the holder, the term or the version).

    Examples
    --------
    >>> exc = FencedError("held by b", "lease_held", "7:b")
    >>> exc.retriable, FencedError("taken", "lease_lost").retriable
    (True, False)
    """

    RETRIABLE = frozenset({"lease_held", "version_moved", "pinned"})

    def __init__(self, message: str, kind: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.detail = kind, detail

    @property
    def retriable(self) -> bool:
        return self.kind in self.RETRIABLE


class BlobCorrupt(ModelStoreError):
    """A blob whose bytes do not match the manifest's SHA-256, do not parse, or hold bad tensors."""


class NonFiniteWeights(ModelStoreError):
    """Weights with NaN or inf: refused at publish (nothing written) and at load."""

    def __init__(self, message: str, tier: str, tensor: str, key: str | None = None) -> None:
        super().__init__(message, key)
        self.tier, self.tensor = tier, tensor


@dataclasses.dataclass(frozen=True, slots=True)
class ModelKeys:
    """Every Redis key of the model store, spelled once; all in the manifest's Redis Cluster slot.

    The manifest keeps its name (``{prefix}model:manifest``: a key without braces hashes whole); the
    others carry it as their hash tag, so they hash to the same slot.

    Examples
    --------
    >>> from redis.crc import key_slot
    >>> keys = ModelKeys("run1:")
    >>> keys.manifest, keys.blob(3, "light"), keys.channel
    ('run1:model:manifest', '{run1:model:manifest}:blob:3:light', 'run1:model:updates')
    >>> len({key_slot(k.encode()) for k in (keys.manifest, keys.lease, keys.term, keys.pin, keys.blob(3, "light"))})
    1
    """

    prefix: str

    @property
    def manifest(self) -> str:
        return f"{self.prefix}model:manifest"

    @property
    def tag(self) -> str:
        return f"{{{self.manifest}}}"

    @property
    def version_counter(self) -> str:
        return f"{self.tag}:version_counter"

    @property
    def lease(self) -> str:
        """The writer lease: ``"<term>:<holder>"`` with a TTL, renewed by its holder."""
        return f"{self.tag}:lease"

    @property
    def term(self) -> str:
        """The writer term (fencing token): incremented by every acquisition of the lease."""
        return f"{self.tag}:term"

    @property
    def pin(self) -> str:
        """The pin: ``{"version", "ts_ms", "reason"}`` (JSON) while an operator holds a version."""
        return f"{self.tag}:pin"

    @property
    def blob_pattern(self) -> str:
        return f"{self.tag}:blob:*"

    def blob(self, version: int, tier: str) -> str:
        return f"{self.tag}:blob:{version}:{tier}"

    @property
    def channel(self) -> str:
        """The notification channel (pub/sub: not a key, no slot)."""
        return f"{self.prefix}model:updates"


class Writer(Protocol):
    """What the switch needs of a writer lease (:class:`feature_store.lease.WriterLease`)."""

    @property
    def token(self) -> str | None:
        """The lease's value while held, else None."""

    @property
    def term(self) -> int:
        """The term the lease was acquired with."""


# KEYS: manifest, lease, term, pin, then the blobs the new manifest references (checked, then PERSISTed).
# ARGV: mode (publish | rollback | pin), token ("" without a lease), term, expected version, new version,
# manifest ("": the manifest stays, pinning its current version), the pin's JSON (mode pin).
_SWITCH = """
local mode, token, term = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pin = redis.call('GET', KEYS[4])
if pin and mode ~= 'pin' then return {'pinned', pin} end
if mode == 'publish' then
  local holder = redis.call('GET', KEYS[2])
  local newest = redis.call('GET', KEYS[3])
  local current_term = not newest or tonumber(newest) == term
  if token ~= '' then
    if holder and holder ~= token then return {'lease_lost', holder} end
    if not current_term then return {'lease_lost', 'term ' .. newest} end
  elseif holder or not current_term then
    return {'lease_held', holder or ('term ' .. newest)}
  end
  if not newest and term > 0 then redis.call('SET', KEYS[3], term) end
end
local version, written_term = 0, 0
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' then
    version, written_term = tonumber(doc['version']) or 0, tonumber(doc['term']) or 0
  end
end
if mode == 'publish' and written_term > term then return {'stale_term', tostring(written_term)} end
if version ~= tonumber(ARGV[4]) or (mode == 'publish' and tonumber(ARGV[5]) <= version) then
  return {'version_moved', tostring(version)}
end
for i = 5, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {'missing', KEYS[i]} end
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[1], ARGV[6]) end
for i = 5, #KEYS do redis.call('PERSIST', KEYS[i]) end
if mode == 'pin' then redis.call('SET', KEYS[4], ARGV[7]) end
return {'ok', tostring(version)}
"""

# KEYS: manifest, then blobs a failed publish wrote. Deletes those the manifest (current or kept
# history) does not reference; an unreadable manifest: deletes nothing (their pending TTL remains).
_DISCARD = """
local raw = redis.call('GET', KEYS[1])
local used = {}
if raw then
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' then return 0 end
  local entries = {doc}
  if type(doc['history']) == 'table' then
    for _, e in ipairs(doc['history']) do entries[#entries + 1] = e end
  end
  for _, e in ipairs(entries) do
    if type(e) == 'table' and type(e['tiers']) == 'table' then
      for _, tier in pairs(e['tiers']) do
        if type(tier) == 'table' and type(tier['chain']) == 'table' then
          for _, key in ipairs(tier['chain']) do used[key] = true end
        end
      end
    end
  end
end
local n = 0
for i = 2, #KEYS do
  if not used[KEYS[i]] then n = n + redis.call('DEL', KEYS[i]) end
end
return n
"""

# KEYS: version counter. ARGV: the lowest version allowed. A version above the floor, unique.
_NEXT_VERSION = """
local v = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if v <= floor then v = floor + 1; redis.call('SET', KEYS[1], v) end
return v
"""


@dataclasses.dataclass(slots=True)
class TierForm:
    """A tier's serving form; ``touched_rows[name]`` = embedding rows changed since the last publish."""

    tensors: dict[str, np.ndarray]
    spec: dict[str, Any]
    touched_rows: dict[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedVersion:
    version: int
    tiers: dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]
    manifest: dict[str, Any]


class ModelStore:
    """Publisher and reader of model versions; one publisher at a time per key prefix.

    ``lease``: the writer lease the learner holds (its token and term go into every switch);
    without one, a publish succeeds only while nobody holds the lease (tools, tests).
    ``version_floor``: versions published are above it (the learner passes its checkpoint's last
    version, so a restart after Redis lost its data does not reuse numbers routers have served).
    ``snapshot_every_s`` / ``snapshot_keep_s``: the snapshots kept besides the last ``keep_versions``
    (``snapshot_every_s`` 0, the default of a store that is not the learner's: none). ``clock``: the
    wall clock (seconds) versions, rollbacks and pins are stamped with (a simulated day in
    ``bench/snapshots.py``).
    """

    def __init__(self, client: redis.Redis, *, prefix: str, keep_versions: int = 5,
                 superseded_ttl_s: int = SUPERSEDED_TTL_S, pending_ttl_s: int = PENDING_TTL_S,
                 full_every: int = 20, lease: Writer | None = None, version_floor: int = 0,
                 snapshot_every_s: float = 0.0, snapshot_keep_s: float = SNAPSHOT_KEEP_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.r = client
        self.keys = ModelKeys(prefix)
        self.keep_versions = max(1, keep_versions)
        self.superseded_ttl_s = superseded_ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.full_every = max(1, full_every)
        self.snapshot_every_s, self.snapshot_keep_s = snapshot_every_s, snapshot_keep_s
        self.clock = clock
        self.lease = lease
        self._swept = False  # unreferenced blobs without a TTL (an older learner's crash) get one once
        self.manifest_key = self.keys.manifest
        self.channel = self.keys.channel
        self.last_publish_bytes = 0
        self._last_version: int | None = None  # deltas are relative to this store's own last publish
        self.newest = version_floor  # versions only grow, even when Redis lost the counter
        self._switch_script = client.register_script(_SWITCH)
        self._next_version = client.register_script(_NEXT_VERSION)
        self._discard_script = client.register_script(_DISCARD)
        self._written: list[str] = []  # blobs of the publish in progress, deleted if it fails

    # -- publishing -------------------------------------------------------------------
    def publish(self, tiers: dict[str, TierForm], *, trained_until_event_ts_ms: int,
                trained_until_finalized_ts_ms: int, samples_seen: int,
                metrics: dict[str, Any] | None = None) -> int:
        """Write one version holding every tier; returns its number."""
        self._written = []
        try:
            return self._publish(tiers, trained_until_event_ts_ms, trained_until_finalized_ts_ms, samples_seen,
                                 metrics)
        except Exception:
            self._last_version = None  # Redis may hold part of this version, or another's: the next one is full
            self._discard()
            raise

    def _discard(self) -> None:
        """Delete the blobs a failed publish wrote, unless the manifest adopted them (a failure after
        the switch: the notification). Redis at ``maxmemory`` gets their memory back at once; when
        Redis is unreachable, their pending TTL removes them."""
        if not self._written:
            return
        try:
            self._discard_script([self.keys.manifest, *self._written])
        except redis.RedisError:
            pass  # the pending TTL is the fallback
        self._written = []

    def _publish(self, tiers: dict[str, TierForm], trained_until_event_ts_ms: int,
                 trained_until_finalized_ts_ms: int, samples_seen: int, metrics: dict[str, Any] | None) -> int:
        if self.lease is not None and self.lease.token is None:
            raise FencedError("this writer does not hold the lease", "lease_lost")
        pin = self.pinned()  # refused before anything is written (the switch checks again)
        if pin is not None:
            raise FencedError(f"publish refused: version {pin['version']} is pinned (`hap models unpin` lets "
                              f"versions supersede it)", "pinned", str(pin["version"]))
        previous = self.manifest()
        ours = previous is not None and previous["version"] == self._last_version
        now_ms = int(self.clock() * 1000)
        snapshot = self._snapshot_due(previous, now_ms)
        blobs = {}  # every blob is encoded (and its weights checked) before anything is written
        for name, form in tiers.items():
            prev = previous["tiers"].get(name) if ours else None
            full = snapshot or prev is None or form.touched_rows is None or len(prev["chain"]) >= self.full_every
            blobs[name] = (_encode(name, form, full), full, prev)
        expected = previous["version"] if previous is not None else 0
        if self.lease is not None:
            term, token = self.lease.term, self.lease.token or ""
        else:
            term, token = int(self.r.get(self.keys.term) or 0), ""
        # above every version this store published and the manifest's, even when Redis lost the counter
        version = int(self._next_version([self.keys.version_counter], [max(self.newest, expected)]))
        entries, written = {}, 0
        for name, (blob, full, prev) in blobs.items():
            key = self.keys.blob(version, name)
            self._written.append(key)  # before the write: a SET whose reply is lost may have happened
            self.r.set(key, blob, ex=self.pending_ttl_s)  # expires unless the manifest adopts it
            written += len(blob)
            digests = {key: hashlib.sha256(blob).hexdigest()}
            if not full:
                digests = {**{k: prev["sha256"][k] for k in prev["chain"]}, **digests}
            entries[name] = {"key": key, "kind": "full" if full else "delta", "spec": tiers[name].spec,
                             "chain": [key] if full else [*prev["chain"], key], "sha256": digests}
        entry = {
            "version": version, "tiers": entries, "published_ts_ms": now_ms,
            "trained_until_event_ts_ms": trained_until_event_ts_ms,
            "trained_until_finalized_ts_ms": trained_until_finalized_ts_ms,
            "samples_seen": samples_seen, "metrics": metrics or {}, "bytes": written, "term": term,
            **({"snapshot": True} if snapshot else {}),
        }
        current = {**entry, "history": self._kept_history(previous, now_ms)}
        # adopted blobs lose their TTL in the same step: kept as long as a kept version references them
        self._switch("publish", current, expected, token, term)
        self.r.publish(self.channel, str(version))
        self._expire_unreferenced(previous, current)
        self.last_publish_bytes = written
        self._last_version = self.newest = version
        return version

    def _snapshot_due(self, previous: dict[str, Any] | None, now_ms: int) -> bool:
        """True when the next version is a snapshot: no kept snapshot is younger than ``snapshot_every_s``."""
        if self.snapshot_every_s <= 0:
            return False
        kept = [] if previous is None else [previous, *previous.get("history", [])]
        return not any(e.get("snapshot") and now_ms - e["published_ts_ms"] < self.snapshot_every_s * 1000
                       for e in kept)

    def _kept_history(self, previous: dict[str, Any] | None, now_ms: int) -> list[dict[str, Any]]:
        """The history of the version that supersedes ``previous``: the ``keep_versions - 1`` newest
        versions, then the older snapshots published within ``snapshot_keep_s``."""
        if previous is None:
            return []
        entries = [_summary(previous), *previous.get("history", [])]
        recent, older = entries[: self.keep_versions - 1], entries[self.keep_versions - 1:]
        horizon = now_ms - self.snapshot_keep_s * 1000
        return recent + [e for e in older if e.get("snapshot") and e["published_ts_ms"] >= horizon]

    def _switch(self, mode: str, manifest: dict[str, Any], expected: int, token: str = "", term: int = 0,
                pin: dict[str, Any] | None = None) -> None:
        """Replace the manifest by ``manifest`` if the fence allows it (see the module's docstring); with
        ``pin`` (mode ``pin``) also set the pin, and when ``manifest`` is the current one leave it as it is."""
        blobs = sorted({key for tier in manifest["tiers"].values() for key in tier["chain"]})
        keys = [self.keys.manifest, self.keys.lease, self.keys.term, self.keys.pin, *blobs]
        version = manifest["version"]
        body = "" if mode == "pin" and version == expected else json.dumps(manifest)
        outcome, found = (x.decode() if isinstance(x, bytes) else str(x) for x in self._switch_script(
            keys, [mode, token, term, expected, version, body, json.dumps(pin) if pin else ""]))
        if outcome == "ok":
            return
        if outcome == "missing":
            raise ModelStoreError(f"version {version}: blob {found} has expired or is missing", found)
        if outcome == "pinned":
            found = str(_pin_version(found))
        reasons = {"lease_held": f"the writer lease is held by {found}",
                   "lease_lost": f"this writer's lease (term {term}) was taken over: now {found}",
                   "stale_term": f"the manifest was written under term {found}, later than this writer's {term}",
                   "version_moved": f"the manifest moved to version {found} (expected {expected})",
                   "pinned": f"version {found} is pinned (`hap models unpin` lets versions supersede it)"}
        raise FencedError(f"{mode} of version {version} refused: {reasons[outcome]}", outcome, found)

    def rollback(self, version: int, reason: str = "hap models rollback") -> dict[str, Any]:
        """Serve a kept older ``version`` again (as the newest manifest); returns the manifest.

        The manifest records ``rollback``: ``{"of_version"`` (the version it replaced), ``"ts_ms"``,
        ``"reason"}``, which routers require before they take a lower version. It needs no lease
        (an operator's act) and keeps the manifest's term; a learner's next publish supersedes it
        (:meth:`pin` keeps it). Raises :class:`FencedError` (``version_moved``) if the manifest changed
        meanwhile, (``pinned``) while a version is pinned.
        """
        current, manifest = self._rollback_manifest(version, reason)
        if manifest is None:
            raise ModelStoreError(f"version {version} is already the current one")
        self._switch("rollback", manifest, current["version"])
        self.r.publish(self.channel, str(version))
        return manifest

    def _rollback_manifest(self, version: int, reason: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The current manifest, and the manifest that serves the kept ``version`` instead (None when
        it is the current one already)."""
        current = self.manifest()
        if current is None:
            raise ModelStoreError("no model published yet")
        if version == current["version"]:
            return current, None
        kept = {e["version"]: e for e in [_summary(current), *current.get("history", [])]}
        if version not in kept:
            raise ModelStoreError(f"version {version} is not kept; kept: {sorted(kept)}")
        history = [e for v, e in kept.items() if v != version]
        rollback = {"of_version": current["version"], "ts_ms": int(self.clock() * 1000), "reason": reason}
        return current, {**kept[version], "term": current.get("term", 0), "rollback": rollback, "history": history}

    def pin(self, version: int, reason: str = "hap models pin") -> dict[str, Any]:
        """Pin the kept ``version``: it becomes the manifest's (a recorded rollback when it is an older
        one) and nothing supersedes it until :meth:`unpin`: every publish is refused (``pinned``), the
        learner trains and checkpoints on. Pinning another version while one is pinned moves the pin.
        Returns the pin (``{"version", "ts_ms", "reason"}``); raises :class:`ModelStoreError` for a
        version not kept, :class:`FencedError` (``version_moved``) if a publish came in between.

        Examples
        --------
        >>> store.pin(41)["version"], store.pinned()["version"]       # doctest: +SKIP
        (41, 41)
        >>> store.unpin()["version"], store.pinned()                  # doctest: +SKIP
        (41, None)
        """
        current, manifest = self._rollback_manifest(version, reason)
        record = {"version": version, "ts_ms": int(self.clock() * 1000), "reason": reason}
        self._switch("pin", manifest or current, current["version"], pin=record)
        self.r.publish(self.channel, str(version))
        return record

    def unpin(self) -> dict[str, Any] | None:
        """Remove the pin; returns it (None when no version was pinned). The learner's next publish
        supersedes the pinned version."""
        with self.r.pipeline(transaction=True) as pipe:
            raw, _ = pipe.get(self.keys.pin).delete(self.keys.pin).execute()
        if raw is None:
            return None
        record = _pin_record(raw)
        self.r.publish(self.channel, str(record.get("version")))
        return record

    def pinned(self) -> dict[str, Any] | None:
        """The pin (``{"version", "ts_ms", "reason"}``), or None while no version is pinned."""
        raw = self.r.get(self.keys.pin)
        return None if raw is None else _pin_record(raw)

    def _expire_unreferenced(self, previous: dict | None, current: dict) -> None:
        """Give the grace TTL to the blobs the new manifest no longer references (and, once per
        store, to any unreferenced blob that has no TTL at all)."""
        keep = _chain_keys(current)
        stale = _chain_keys(previous) - keep if previous is not None else set()
        for key in stale:
            self.r.expire(key, self.superseded_ttl_s)
        if not self._swept:
            self._swept = True
            for raw in self.r.scan_iter(match=self.keys.blob_pattern, count=1000):
                key = raw.decode() if isinstance(raw, bytes) else raw
                if key not in keep and self.r.ttl(key) == -1:
                    self.r.expire(key, self.superseded_ttl_s)

    # -- reading ----------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        """The current manifest, or None before the first publish."""
        raw = self.r.get(self.manifest_key)
        if raw is None:
            return None
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ModelStoreError(f"manifest of {len(raw)} bytes exceeds the cap")
        try:
            manifest = json.loads(raw)
            for tier in manifest["tiers"].values():
                if not tier["chain"]:
                    raise KeyError("chain")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelStoreError(f"corrupt manifest: {exc!r}") from None
        return manifest

    def versions(self) -> list[dict[str, Any]]:
        """Kept versions, newest first (the current one first)."""
        current = self.manifest()
        return [] if current is None else [_summary(current), *current.get("history", [])]

    def load(self, version: int | None = None, current: LoadedVersion | None = None,
             manifest: dict[str, Any] | None = None) -> LoadedVersion:
        """Load ``version`` (default: the manifest's). With ``current``, only the blobs its
        chain lacks are read and applied (the router's incremental hot-swap path), provided the blobs
        they share have the same SHA-256 (else the whole chain is read). With
        ``manifest`` (one :meth:`manifest` returned), that manifest is loaded instead of the one
        Redis holds now: a caller that checked it loads what it checked."""
        manifest = self.manifest() if manifest is None else manifest
        if manifest is None:
            raise ModelStoreError("no model published yet")
        if version is not None and version != manifest["version"]:
            matches = [e for e in manifest.get("history", []) if e["version"] == version]
            if not matches:
                raise ModelStoreError(f"version {version} is not kept")
            manifest = matches[0]
        tiers = {}
        for name, entry in manifest["tiers"].items():
            chain = entry["chain"]
            old = current.manifest["tiers"].get(name, {}) if current else {}
            have, old_digests = old.get("chain", []), old.get("sha256") or {}
            digests = entry.get("sha256") or {}
            # reused only where keys and digests match: after Redis lost its data, version numbers (and so
            # key names) can come back holding another model's blobs
            if have and chain[: len(have)] == have and all(
                    isinstance(digests.get(k), str) and digests.get(k) == old_digests.get(k) for k in have):
                tensors, todo = dict(current.tiers[name][0]), chain[len(have):]
            else:
                tensors, todo = {}, chain
            for key in todo:
                tensors = _apply(tensors, self._read(key, digests.get(key), name), key)
            tiers[name] = (tensors, entry["spec"])
        return LoadedVersion(manifest["version"], tiers, manifest)

    def _read(self, key: str, sha256: str | None, tier: str) -> dict[str, np.ndarray]:
        """The tensors of blob ``key``, once its bytes match ``sha256`` and its values are finite."""
        if not isinstance(sha256, str):
            raise BlobCorrupt(f"blob {key}: the manifest records no SHA-256 for it", key)
        raw = self.r.get(key)
        if raw is None:
            raise ModelStoreError(f"blob {key} is missing", key)
        if len(raw) > MAX_BLOB_BYTES:
            raise BlobCorrupt(f"blob {key} of {len(raw)} bytes exceeds the cap", key)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise BlobCorrupt(f"blob {key}: SHA-256 {digest} differs from the manifest's {sha256}", key)
        try:
            _header(raw)
            tensors = st_load(raw)
        except Exception as exc:  # safetensors raises its own error types for corrupt bytes
            raise BlobCorrupt(f"blob {key} is not valid safetensors: {exc}", key) from None
        for name, array in tensors.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise NonFiniteWeights(f"blob {key}: {name} holds NaN or inf", tier, name, key)
        return tensors


def _encode(tier: str, form: TierForm, full: bool) -> bytes:
    """The blob of ``form`` (full, or the touched rows of its embeddings); raises
    :class:`NonFiniteWeights` when any value written would be NaN or inf."""
    embeddings = set(form.spec.get("embeddings", []))
    out: dict[str, np.ndarray] = {}
    for name, array in form.tensors.items():
        if full or name not in embeddings:
            out[name] = np.ascontiguousarray(array, dtype=np.float32)
        else:
            rows = np.unique(np.asarray(form.touched_rows.get(name, []), dtype=np.int64))  # type: ignore[union-attr]
            out[f"{name}::rows"] = rows
            out[f"{name}::values"] = np.ascontiguousarray(array[rows], dtype=np.float32)
    for name, array in out.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise NonFiniteWeights(f"tier {tier}: {name} holds NaN or inf; version not published", tier, name)
    return st_save(out, metadata={"kind": "full" if full else "delta"})


def _apply(tensors: dict[str, np.ndarray], blob: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """Apply a full or delta blob without mutating arrays another version may be serving."""
    out = dict(tensors)
    for name, array in blob.items():
        if name.endswith("::rows"):
            base = name[: -len("::rows")]
            values = blob.get(f"{base}::values")
            if base not in out:
                raise BlobCorrupt(f"blob {key}: delta for {base} has no base tensor", key)
            table = out[base]
            if array.ndim != 1 or array.dtype.kind not in "iu" or values is None \
                    or values.shape != (len(array), *table.shape[1:]):
                raise BlobCorrupt(f"blob {key}: delta for {base} has rows {array.shape} and values "
                                  f"{None if values is None else values.shape} for a table {table.shape}", key)
            if len(array) and (array.min() < 0 or array.max() >= len(table)):
                raise BlobCorrupt(f"blob {key}: delta rows of {base} outside its {len(table)} rows", key)
            table = table.copy()
            table[array] = values
            out[base] = table
        elif not name.endswith("::values"):
            out[name] = array
    return out


def _header(raw: bytes) -> dict[str, Any]:
    if len(raw) < 8:
        raise ValueError("truncated header")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > len(raw) - 8:
        raise ValueError("header length exceeds the blob")
    return json.loads(raw[8 : 8 + size])


def _pin_record(raw: bytes | str) -> dict[str, Any]:
    """The pin's JSON as a dict; raises :class:`ModelStoreError` for one that is not a pin."""
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or not isinstance(record.get("version"), int):
            raise ValueError("no integer version")
    except ValueError as exc:
        raise ModelStoreError(f"corrupt pin {raw[:200]!r}: {exc}") from None
    return record


def _pin_version(raw: str) -> int | str:
    """The version a pin's JSON names (the JSON itself when it names none), for messages."""
    try:
        return _pin_record(raw)["version"]
    except ModelStoreError:
        return raw


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in ("history", "rollback")}


def _chain_keys(manifest: dict[str, Any] | None) -> set[str]:
    if manifest is None:
        return set()
    entries = [manifest, *manifest.get("history", [])]
    return {key for e in entries for tier in e["tiers"].values() for key in tier["chain"]}
