"""Hot swap: keep the freshest consistent model version and replace it between requests.

:class:`ModelHolder` runs a background thread that listens on the store's notification
channel (and polls every ``poll_s`` as a fallback), loads a new version (applying only the
delta blobs it lacks), builds an immutable :class:`ServingModel` and swaps one reference.
A request reads ``holder.current`` once and scores with that object only, so it never sees
two versions. When Redis is down or a version is corrupt, the last good version keeps
serving and ``staleness_s`` grows.

Versions only go up, except by a recorded rollback: a manifest with a lower version than the
served one is taken only when it records ``rollback`` of the served version or a later one
(``hap models rollback``); otherwise it comes from a stale writer (or a Redis replica behind),
and is refused, logged once and counted (``hap_router_errors_total{kind="stale_version"}``)
while the served version goes on (:func:`backwards`).

A pin (``hap models pin``) is honoured: while one is set the router serves the pinned version,
from the manifest's kept history when the manifest names another (a writer that bypassed the fence,
e.g. an older learner during a rolling update); a pinned version that is not kept any more is
logged, counted (``kind="pin_unavailable"``) once, and the router keeps the version it serves (or,
serving none, takes the manifest's). ``hap_router_model_pinned`` is 1 while the served version is
the pinned one; :attr:`ModelHolder.pin` holds the pin.

Every version is verified before it is swapped in (:func:`verify`): the manifest's fields the
router reads, each tier's tensor names and shapes against the architecture its spec describes
(the learner's own model built from the spec and exported: the same code path that produced
the blobs, so nothing here names a tensor), finite values, and a probe request at the bounds
of the featurization (highest id rows, every content type) scored to finite numbers. A version
that fails is counted (``hap_router_errors_total{kind="model_rejected"}``), logged once and
never retried; any other failure of the loop is counted (``kind="swap_loop"``) and the loop
goes on, so the served version, ``staleness_s`` and the model-age gauge never freeze.

The reference shapes need torch; a router process never imports it (hundreds of MB): they are
computed in a short-lived child process, once per distinct spec (in-process where torch is
already loaded, as in the tests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from feature_store.featurize import (
    CONTENT_TYPE_BUCKETS,
    DENSE_DIM,
    HISTORY_LEN,
    ID_BUCKETS,
    ITEM_DIM,
    ItemBatch,
    UserInput,
)
from feature_store.model_store import LoadedVersion, ModelStore, ModelStoreError
from router import metrics
from router.features import INLINE, NEVER, FeatureCache, Lookup
from router.serving import ExpressiveTier, LightTier

log = logging.getLogger("hap.router")
SERVED_TIERS = ("light", "expressive")
MANIFEST_NUMBERS = ("published_ts_ms", "trained_until_event_ts_ms")
REFERENCE_TIMEOUT_S = 120.0
REFERENCE_RETRY_S = 300.0
REFERENCE_KEPT = 32


class VersionRejected(Exception):
    """A loaded version that must not be served; ``reason`` says why, ``tier`` and ``tensor`` where."""

    def __init__(self, version: Any, reason: str, tier: str | None = None, tensor: str | None = None) -> None:
        where = "".join(f" {x}" for x in (tier, tensor) if x)
        super().__init__(f"version {version}{where}: {reason}")
        self.version, self.reason, self.tier, self.tensor = version, reason, tier, tensor


class ItemVectors:
    """Light item vectors of one version, in rows aligned with the feature table's slots: a row
    is valid while its stamp and content type are the ones it was computed from; a row computed
    from inline statistics (stamp ``INLINE``) while the item and its statistics' item columns (all a
    light item vector reads) are the ones it was computed from, so a client that sends the same
    statistics again gets the cached vector, and one that sends others a new one."""

    def __init__(self) -> None:
        self.vec = np.zeros((0, 0), np.float32)
        self.stamp = np.zeros(0, np.int64)  # 0: nothing cached (feature stamps start at 1)
        self.ctype = np.zeros(0, np.int64)
        self.item = np.zeros(0, np.int64)  # of inline rows: the item and the item columns of its statistics
        self.dense = np.zeros((0, ITEM_DIM), np.float32)

    def ensure(self, rows: int, width: int) -> None:
        """Room for ``rows`` slots of vectors ``width`` wide (grows by doubling; lazily paged)."""
        if rows <= len(self.stamp) and width == self.vec.shape[1]:
            return
        size = max(rows, 2 * len(self.stamp), 1024)
        vec, stamp, ctype = np.zeros((size, width), np.float32), np.zeros(size, np.int64), np.zeros(size, np.int64)
        item, dense = np.zeros(size, np.int64), np.zeros((size, ITEM_DIM), np.float32)
        if width == self.vec.shape[1]:
            n = len(self.stamp)
            vec[:n], stamp[:n], ctype[:n], item[:n], dense[:n] = self.vec, self.stamp, self.ctype, self.item, self.dense
        self.vec, self.stamp, self.ctype, self.item, self.dense = vec, stamp, ctype, item, dense

    def store(self, slots: np.ndarray, stamps: np.ndarray, items: ItemBatch, vectors: np.ndarray) -> None:
        """Cache ``vectors`` of ``slots``, computed from ``items`` (their features, stamped ``stamps``)."""
        if not len(slots):
            return
        self.ensure(int(slots.max()) + 1, vectors.shape[1])
        self.vec[slots] = vectors
        self.ctype[slots] = items.ctype_idx
        self.stamp[slots] = stamps
        inline = stamps == INLINE
        if inline.any():
            self.item[slots[inline]] = items.item_idx[inline]
            self.dense[slots[inline]] = items.dense[inline, :ITEM_DIM]

    def valid(self, found: Lookup) -> tuple[np.ndarray, np.ndarray]:
        """``(valid, rows)``: which of ``found``'s candidates have their vector cached, and the cache's row
        of each (0 for a slot past the cache)."""
        slots, stamps, items = found.slots, found.stamps, found.items
        inside = slots < len(self.stamp)
        safe = np.where(inside, slots, 0)
        kind = inside & (self.ctype[safe] == items.ctype_idx)
        valid = kind & (self.stamp[safe] == stamps) & (stamps > 0)
        inline = np.flatnonzero(kind & (stamps == INLINE) & (self.stamp[safe] == INLINE))
        if len(inline):
            cached = safe[inline]
            valid[inline] = (self.item[cached] == items.item_idx[inline]) & (
                self.dense[cached] == items.dense[inline, :ITEM_DIM]).all(axis=1)
        return valid, safe


@dataclasses.dataclass(eq=False)
class ServingModel:
    """One version of both tiers plus its item-vector cache (never shared across versions)."""

    loaded: LoadedVersion
    light: LightTier
    expressive: ExpressiveTier
    loaded_at: float
    vectors: ItemVectors = dataclasses.field(default_factory=ItemVectors)

    @property
    def version(self) -> int:
        return self.loaded.version

    def item_vectors(self, found: Lookup) -> np.ndarray:
        """Light item vectors of a lookup's candidates: cached rows where the features (their stamp, or
        the inline statistics themselves) and content type are unchanged, the rest computed in one batch
        and cached."""
        cache, slots = self.vectors, found.slots
        if not len(cache.stamp):
            fresh = self.light.item_vectors(found.items)
            cache.store(slots, found.stamps, found.items, fresh)
            return fresh
        valid, safe = cache.valid(found)
        if valid.all():
            return cache.vec[slots]
        misses = np.flatnonzero(~valid)
        missed = found.items.take(misses)
        fresh = self.light.item_vectors(missed)
        out = cache.vec[safe] if cache.vec.shape[1] == fresh.shape[1] else np.empty((len(slots), fresh.shape[1]),
                                                                                     np.float32)
        out[misses] = fresh
        cache.store(slots[misses], found.stamps[misses], missed, fresh)
        return out

    def warm(self, table: FeatureCache, chunk: int = 8192) -> int:
        """Compute the item vectors of every row ``table`` holds (before this version serves, so
        the first requests after a swap find them cached); returns how many. Safe beside the
        request thread: stamps are read before the rows, so a row rewritten meanwhile is stale."""
        slots = np.flatnonzero(table.occupied & (table.refresh_at != NEVER))
        if not len(slots):
            return 0
        stamps = table.stamp[slots].copy()
        for start in range(0, len(slots), chunk):
            part = slice(start, start + chunk)
            rows = slots[part]
            items = ItemBatch(table.item_idx[rows], table.ctype_idx[rows], table.dense[rows])
            self.vectors.store(rows, stamps[part], items, self.light.item_vectors(items))
        return len(slots)


def backwards(manifest: dict[str, Any], served: int | None) -> str | None:
    """Why ``manifest`` must not replace the ``served`` version: a lower version that no recorded
    rollback explains; None when it may be loaded (a rollback of ``served`` or of a later version).

    Examples
    --------
    >>> backwards({"version": 2, "rollback": {"of_version": 3}}, 3) is None
    True
    >>> backwards({"version": 2}, 3)
    'version 2 is lower than the served 3 and records no rollback of it'
    """
    version = manifest.get("version")
    if served is None or not isinstance(version, int) or version >= served:
        return None
    rollback = manifest.get("rollback")
    replaced = rollback.get("of_version") if isinstance(rollback, dict) else None
    if isinstance(replaced, int) and replaced >= served:
        return None
    return f"version {version} is lower than the served {served} and records no rollback of it"


def pinned_manifest(manifest: dict[str, Any], pin: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest to serve under ``pin``: ``manifest`` itself when nothing is pinned or it is the
    pinned version, the kept entry of the pinned version (recorded as a rollback of the manifest's,
    so :func:`backwards` takes it) when it names another, None when the pinned version is not kept.

    Examples
    --------
    >>> m = {"version": 5, "history": [{"version": 3}]}
    >>> pinned_manifest(m, None)["version"], pinned_manifest(m, {"version": 5})["version"]
    (5, 5)
    >>> pinned_manifest(m, {"version": 3, "ts_ms": 1, "reason": "r"})["rollback"]["of_version"]
    5
    >>> pinned_manifest(m, {"version": 2}) is None
    True
    """
    if pin is None or manifest.get("version") == pin["version"]:
        return manifest
    history = manifest.get("history")
    for entry in history if isinstance(history, list) else []:
        if isinstance(entry, dict) and entry.get("version") == pin["version"]:
            reason = f"pinned: {pin.get('reason')}"
            return {**entry, "rollback": {"of_version": manifest["version"], "ts_ms": pin.get("ts_ms"),
                                          "reason": reason}}
    return None


def build(loaded: LoadedVersion) -> ServingModel:
    light_t, light_spec = loaded.tiers["light"]
    expr_t, expr_spec = loaded.tiers["expressive"]
    return ServingModel(loaded, LightTier.from_form(light_t, light_spec),
                        ExpressiveTier.from_form(expr_t, expr_spec), time.time())


def verify(loaded: LoadedVersion, served: ServingModel | None = None) -> ServingModel:
    """The serving model of ``loaded`` once it passed every check; raises :class:`VersionRejected`.

    Tensors that are the very arrays of the ``served`` version (unchanged since it was verified)
    are not scanned again.
    """
    manifest, version = loaded.manifest, loaded.version
    if not isinstance(version, int) or isinstance(version, bool):
        raise VersionRejected(version, "version is not an integer")
    for field in MANIFEST_NUMBERS:
        value = manifest.get(field)
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value):
            raise VersionRejected(version, f"manifest field {field} is missing or not a number ({value!r})")
    old = served.loaded.tiers if served is not None else {}
    prepare_references([loaded.tiers[t][1] for t in SERVED_TIERS if t in loaded.tiers])
    for tier in SERVED_TIERS:
        if tier not in loaded.tiers:
            raise VersionRejected(version, "tier missing from the manifest", tier)
        tensors, spec = loaded.tiers[tier]
        try:
            expected = reference_shapes(spec)
        except ReferenceUnavailable as exc:
            raise VersionRejected(version, f"no reference architecture: {exc}", tier) from None
        if set(tensors) != set(expected):
            raise VersionRejected(version, f"tensors {sorted(set(tensors) ^ set(expected))} differ from the "
                                  f"architecture of its spec {spec}", tier)
        previous = old.get(tier, ({}, None))[0]
        for name, array in tensors.items():
            if array.shape != expected[name] or array.dtype != np.float32:
                raise VersionRejected(version, f"{array.dtype}{list(array.shape)} where the architecture has "
                                      f"float32{list(expected[name])}", tier, name)
            if previous.get(name) is not array and not np.isfinite(array).all():
                raise VersionRejected(version, "non-finite values", tier, name)
    try:
        model = build(loaded)
        scores = _probe(model)
    except Exception as exc:  # noqa: BLE001 - whatever the serving code raises on these tensors
        raise VersionRejected(version, f"probe request failed: {exc!r}") from None
    for tier, values in scores.items():
        if values.shape != (2,) or not np.isfinite(values).all():
            raise VersionRejected(version, f"probe request scored {values!r}", tier)
    return model


def _probe(model: ServingModel) -> dict[str, np.ndarray]:
    """Scores of a request at the bounds of the featurization: the last id rows, every content type."""
    history = np.zeros(HISTORY_LEN, np.int64)
    history[:2] = ID_BUCKETS - 1, 1
    user = UserInput(ID_BUCKETS - 1, history)
    items = ItemBatch(np.array([1, ID_BUCKETS - 1]), np.array([0, CONTENT_TYPE_BUCKETS - 1]),
                      np.zeros((2, DENSE_DIM), np.float32))
    light = model.light.score(model.light.user_vector(user), model.light.item_vectors(items), items.dense)
    return {"light": np.asarray(light), "expressive": np.asarray(model.expressive.score(user, items))}


class ReferenceUnavailable(RuntimeError):
    """The tensor shapes a spec implies could not be derived (unknown tier, no such architecture)."""


def reference_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the serving form the learner exports for ``spec`` (cached per spec;
    a failure is remembered for ``REFERENCE_RETRY_S``, so a new version a second does not start a
    child process each)."""
    key = json.dumps(spec, sort_keys=True)
    prepare_references([spec])
    if key in _REFERENCE:
        return {name: tuple(shape) for name, shape in _REFERENCE[key].items()}
    raise ReferenceUnavailable(_REFERENCE_FAILED[key][1])


def prepare_references(specs: list[dict[str, Any]]) -> None:
    """Derive the reference shapes of every spec not known yet (nor failed within
    ``REFERENCE_RETRY_S``) in one child process: a router's first version pays for one torch
    import, not one per tier. The outcomes go to the caches :func:`reference_shapes` reads."""
    now = time.monotonic()
    wanted = list(dict.fromkeys(
        key for key in (json.dumps(spec, sort_keys=True) for spec in specs)
        if key not in _REFERENCE and now - _REFERENCE_FAILED.get(key, (-math.inf, ""))[0] >= REFERENCE_RETRY_S))
    if not wanted:
        return
    for key, outcome in zip(wanted, _derive(wanted), strict=True):
        cache, value = ((_REFERENCE, outcome["shapes"]) if "shapes" in outcome
                        else (_REFERENCE_FAILED, (time.monotonic(), str(outcome["error"])[:1000])))
        if len(cache) >= REFERENCE_KEPT:  # bounded: forget the oldest
            del cache[next(iter(cache))]
        cache[key] = value  # type: ignore[assignment]


_REFERENCE: dict[str, dict[str, list[int]]] = {}
_REFERENCE_FAILED: dict[str, tuple[float, str]] = {}


def _derive(spec_jsons: list[str]) -> list[dict[str, Any]]:
    """``{"shapes": ...}`` or ``{"error": ...}`` per spec, in this process when torch is already
    loaded, else in one child process."""
    if "torch" in sys.modules:  # already paid for in this process
        return _outcomes([json.loads(k) for k in spec_jsons])
    try:
        done = subprocess.run([sys.executable, "-c", "from router.holder import _reference_main; _reference_main()"],
                              input=json.dumps([json.loads(k) for k in spec_jsons]).encode(), capture_output=True,
                              timeout=REFERENCE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [{"error": f"reference process failed: {exc}"}] * len(spec_jsons)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return [{"error": lines[-1] if lines else f"reference process exited {done.returncode}"}] * len(spec_jsons)
    return json.loads(done.stdout)


def _outcomes(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for spec in specs:
        try:
            out.append({"shapes": reference_form_shapes(spec)})
        except ReferenceUnavailable as exc:
            out.append({"error": str(exc)})
    return out


def _reference_main() -> None:
    """Child process: read a JSON list of specs on stdin, write their outcomes (JSON) on stdout."""
    sys.stdout.write(json.dumps(_outcomes(json.loads(sys.stdin.read()))))


def reference_form_shapes(spec: dict[str, Any]) -> dict[str, list[int]]:
    """Build the learner's tier for ``spec`` and export its serving form: the shapes of its tensors.

    The tier is the :class:`learner.models.Tier` whose ``name`` is ``spec["tier"]``, built with
    ``from_spec(spec)``; its exported spec must equal ``spec``.
    """
    import torch

    from learner import models

    tiers = {cls.name: cls for cls in _subclasses(models.Tier) if cls.name}
    cls = tiers.get(spec.get("tier"))
    if cls is None:
        raise ReferenceUnavailable(f"no tier architecture named {spec.get('tier')!r} (known: {sorted(tiers)})")
    want = json.loads(json.dumps(spec))
    try:
        with torch.random.fork_rng():
            tensors, exported = cls.from_spec(spec).export()
    except Exception as exc:  # noqa: BLE001 - a spec whose values the architecture does not take
        raise ReferenceUnavailable(f"{cls.__name__} cannot be built from the spec {spec} ({exc!r})") from exc
    if json.loads(json.dumps(exported)) != want:
        raise ReferenceUnavailable(f"{cls.__name__} built from the spec {spec} exports {exported}")
    return {name: list(array.shape) for name, array in tensors.items()}


def _identity(manifest: dict[str, Any]) -> tuple[Any, str]:
    """What tells manifests apart: the version, and the rollback that brought it back if any."""
    return manifest["version"], json.dumps(manifest.get("rollback"), sort_keys=True)


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


class ModelHolder:
    """Owner of the served version; ``start()`` once, ``stop()`` once (not restartable)."""

    def __init__(self, client: redis.Redis, *, prefix: str, poll_s: float = 2.0) -> None:
        self.store = ModelStore(client, prefix=prefix)
        self.client = client
        self.poll_s = poll_s
        self.current: ServingModel | None = None
        self.last_contact = time.monotonic()
        self.rejected: tuple[Any, str] | None = None  # the last manifest rejected (not retried): _identity
        #: the pin (``{"version", "ts_ms", "reason"}``) as last read, None while no version is pinned
        self.pin: dict[str, Any] | None = None
        self._pin_unavailable: int | None = None  # the pinned version found missing, -1: a corrupt pin (logged once)
        #: called with a verified version before it is swapped in (the app warms its item vectors)
        self.prepare: Callable[[ServingModel], Any] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def staleness_s(self) -> float:
        return time.monotonic() - self.last_contact

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._loop, daemon=True, name="hap-swap"),
                         threading.Thread(target=self._listen, daemon=True, name="hap-updates")]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh(self) -> bool:
        """Load, verify and swap in the manifest's version if it differs from the served one (and
        was not rejected before); True on a swap. Never raises."""
        manifest: dict[str, Any] | None = None
        try:
            manifest = self.store.manifest()
            self._read_pin()
            self.last_contact = time.monotonic()
            served = self.current.version if self.current is not None else None
            if manifest is not None:
                manifest = self._under_pin(manifest, served)
            if manifest is None or manifest["version"] == served or _identity(manifest) == self.rejected:
                return False
            stale = backwards(manifest, served)
            if stale is not None:
                self.rejected = _identity(manifest)
                metrics.ERRORS.labels("stale_version").inc()
                log.error("keeping version %s: %s (a stale writer?)", served, stale)
                return False
            started = time.perf_counter()
            current = self.current.loaded if self.current is not None else None
            loaded = self.store.load(current=current, manifest=manifest)  # the manifest checked, not a re-read
            model = verify(loaded, self.current)
        except (redis.RedisError, OSError) as exc:
            metrics.ERRORS.labels("redis").inc()
            log.warning("model store unreachable: %s", exc)
            return False
        except (ModelStoreError, VersionRejected) as exc:
            self._reject("model_load" if isinstance(exc, ModelStoreError) else "model_rejected", exc, manifest)
            return False
        except Exception as exc:  # noqa: BLE001 - malformed data of any shape: reject it, keep serving
            self._reject("model_rejected", exc, manifest)
            return False
        self._prepare(model)
        self.current = model  # the swap: one reference assignment, atomic between requests
        self._observe(model, time.perf_counter() - started)
        self._observe_pin()
        if served is not None and model.version < served:
            log.warning("rolled back from version %s to %s: %s", served, model.version, manifest["rollback"])
        return True

    def _read_pin(self) -> None:
        """Read the pin into :attr:`pin` (logged when it changes); a corrupt one is counted
        (``kind="pin"``) and ignored: the manifest, which no publish can move while the key exists,
        is served."""
        try:
            pin = self.store.pinned()
        except ModelStoreError as exc:
            if self._pin_unavailable != -1:  # once, not at every poll
                self._pin_unavailable = -1
                metrics.ERRORS.labels("pin").inc()
                log.error("ignoring the pin: %s", exc)
            pin = None
        if pin != self.pin:
            if pin is not None:
                log.warning("version %s pinned (%s): serving it until it is unpinned", pin["version"],
                            pin.get("reason"))
            else:
                log.warning("version %s unpinned", self.pin and self.pin["version"])
        self.pin = pin
        self._observe_pin()

    def _observe_pin(self) -> None:
        pinned = self.pin is not None and self.current is not None and self.current.version == self.pin["version"]
        metrics.PINNED.set(1 if pinned else 0)

    def _under_pin(self, manifest: dict[str, Any], served: int | None) -> dict[str, Any] | None:
        """What to serve of ``manifest`` under the pin (see :func:`pinned_manifest`); None (keep the
        served version) when the pinned version is not kept and a version is served."""
        target = pinned_manifest(manifest, self.pin)
        if target is not None:
            return target
        assert self.pin is not None
        if self._pin_unavailable != self.pin["version"]:
            self._pin_unavailable = self.pin["version"]
            metrics.ERRORS.labels("pin_unavailable").inc()
            log.error("version %s is pinned but not kept (the manifest holds %s): %s", self.pin["version"],
                      manifest["version"], f"keeping version {served}" if served is not None else
                      "serving the manifest's")
        return manifest if served is None else None

    def _prepare(self, model: ServingModel) -> None:
        """Run the prepare hook; a failure there is counted and the version serves anyway (cold)."""
        if self.prepare is None:
            return
        try:
            self.prepare(model)
        except Exception:  # noqa: BLE001 - warming is an optimisation, never a reason to keep an old version
            metrics.ERRORS.labels("warm").inc()
            log.exception("warming version %s", model.version)

    def _reject(self, kind: str, exc: Exception, manifest: dict[str, Any] | None) -> None:
        """Count and log a version that cannot be served; the ``manifest`` that failed is not retried
        (only that one: a newer manifest that landed meanwhile is loaded at the next refresh). Without
        one (the manifest itself could not be read) nothing is recorded and the next poll reads again."""
        try:
            self.rejected = _identity(manifest) if manifest is not None else None
        except (KeyError, TypeError):  # a manifest without a usable version
            self.rejected = None
        metrics.ERRORS.labels(kind).inc()
        log.error("keeping version %s: %r", self.current and self.current.version, exc)

    def _observe(self, model: ServingModel, seconds: float) -> None:
        now = time.time()
        manifest: dict[str, Any] = model.loaded.manifest
        metrics.SWAPS.inc()
        metrics.SWAP_SECONDS.observe(seconds)
        metrics.VERSION.set(model.version)
        metrics.PUBLISHED_TO_LOADED.observe(max(0.0, now - manifest["published_ts_ms"] / 1000))
        samples = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
        for key, histogram in (("finalized_sample_ms", metrics.FRESHNESS),
                               ("event_sample_ms", metrics.MODEL_AGE_AT_LOAD)):
            values = samples.get(key)
            for ts in values if isinstance(values, list) else []:
                if isinstance(ts, numbers.Real):
                    histogram.observe(max(0.0, now - ts / 1000))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - refresh never raises; if it ever does, the loop goes on
                metrics.ERRORS.labels("swap_loop").inc()
                log.exception("swap loop")
            try:
                if self.current is not None:
                    trained = self.current.loaded.manifest["trained_until_event_ts_ms"] / 1000
                    metrics.MODEL_AGE.set(max(0.0, time.time() - trained))
                metrics.STORE_CONTACT_AGE.set(self.staleness_s)
                metrics.STALENESS.set(self.staleness_s)
            except Exception:  # noqa: BLE001 - a gauge must never end the loop
                metrics.ERRORS.labels("swap_loop").inc()
                log.exception("swap loop gauges")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.store.channel)
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - any failure: fall back to polling, retry later
                log.debug("notification channel lost: %r", exc)
                self._stop.wait(self.poll_s)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
