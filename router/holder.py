"""Hot swap: keep the freshest consistent model version and replace it between requests.

:class:`ModelHolder` runs a background thread that listens on the store's notification
channel (and polls every ``poll_s`` as a fallback), loads a new version (applying only the
delta blobs it lacks), builds an immutable :class:`ServingModel` and swaps one reference.
A request reads ``holder.current`` once and scores with that object only, so it never sees
two versions. When Redis is down or a version is corrupt, the last good version keeps
serving and ``staleness_s`` grows. A rollback (a lower version in the manifest) is honoured.

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
import functools
import json
import logging
import numbers
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import redis

from feature_store.featurize import CONTENT_TYPE_BUCKETS, DENSE_DIM, HISTORY_LEN, ID_BUCKETS, ItemBatch, UserInput
from feature_store.model_store import LoadedVersion, ModelStore, ModelStoreError
from router import metrics
from router.serving import ExpressiveTier, LightTier

log = logging.getLogger("hap.router")
ITEM_CACHE = 100_000
SERVED_TIERS = ("light", "expressive")
MANIFEST_NUMBERS = ("published_ts_ms", "trained_until_event_ts_ms")
REFERENCE_TIMEOUT_S = 120.0
REFERENCE_RETRY_S = 300.0


class VersionRejected(Exception):
    """A loaded version that must not be served; ``reason`` says why, ``tier`` and ``tensor`` where."""

    def __init__(self, version: Any, reason: str, tier: str | None = None, tensor: str | None = None) -> None:
        where = "".join(f" {x}" for x in (tier, tensor) if x)
        super().__init__(f"version {version}{where}: {reason}")
        self.version, self.reason, self.tier, self.tensor = version, reason, tier, tensor


@dataclasses.dataclass(eq=False)
class ServingModel:
    """One version of both tiers plus its item-vector cache (never shared across versions)."""

    loaded: LoadedVersion
    light: LightTier
    expressive: ExpressiveTier
    loaded_at: float
    item_cache: dict[str, tuple[float, int, np.ndarray]] = dataclasses.field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.loaded.version

    def item_vectors(self, items: ItemBatch, item_ids: list[str], stamps: list[float | None]) -> np.ndarray:
        """Light item vectors; an item's vector is cached for this version while its features
        keep the same stamp (a refreshed feature row, or inline features, recompute it)."""
        hits: dict[int, np.ndarray] = {}
        misses = []
        cache = self.item_cache
        for n, (item_id, stamp) in enumerate(zip(item_ids, stamps, strict=True)):
            hit = cache.get(item_id) if stamp is not None else None
            if hit is not None and hit[0] == stamp and hit[1] == items.ctype_idx[n]:
                hits[n] = hit[2]
            else:
                misses.append(n)
        fresh = self.light.item_vectors(items.take(np.array(misses, dtype=np.int64))) if misses else None
        width = fresh.shape[1] if fresh is not None else next(iter(hits.values())).shape[0] if hits else 0
        out = np.empty((len(item_ids), width), np.float32)  # the tier's vector width, whatever its layout
        for n, vector in hits.items():
            out[n] = vector
        if misses:
            rows = np.array(misses)
            out[rows] = fresh
            if len(cache) + len(misses) > ITEM_CACHE:
                cache.clear()
            for n in misses:
                if stamps[n] is not None:
                    cache[item_ids[n]] = (stamps[n], int(items.ctype_idx[n]), out[n])
        return out


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
    light = model.light.score(model.light.user_vector(user), model.light.item_vectors(items))
    return {"light": np.asarray(light), "expressive": np.asarray(model.expressive.score(user, items))}


class ReferenceUnavailable(RuntimeError):
    """The tensor shapes a spec implies could not be derived (unknown tier, no such architecture)."""


def reference_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the serving form the learner exports for ``spec`` (cached per spec;
    a failure is remembered for ``REFERENCE_RETRY_S``, so a new version a second does not start a
    child process each)."""
    key = json.dumps(spec, sort_keys=True)
    failed = _REFERENCE_FAILED.get(key)
    if failed is not None and time.monotonic() - failed[0] < REFERENCE_RETRY_S:
        raise ReferenceUnavailable(failed[1])
    try:
        shapes = _reference_cached(key)
    except ReferenceUnavailable as exc:
        _REFERENCE_FAILED[key] = (time.monotonic(), str(exc))
        raise
    return {name: tuple(shape) for name, shape in shapes.items()}


_REFERENCE_FAILED: dict[str, tuple[float, str]] = {}


@functools.lru_cache(maxsize=32)
def _reference_cached(spec_json: str) -> dict[str, list[int]]:
    if "torch" in sys.modules:  # already paid for in this process
        return reference_form_shapes(json.loads(spec_json))
    try:
        done = subprocess.run([sys.executable, "-c", "from router.holder import _reference_main; _reference_main()"],
                              input=spec_json.encode(), capture_output=True, timeout=REFERENCE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReferenceUnavailable(f"reference process failed: {exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise ReferenceUnavailable(lines[-1] if lines else f"reference process exited {done.returncode}")
    return json.loads(done.stdout)


def _reference_main() -> None:
    """Child process: read a spec (JSON) on stdin, write the reference shapes (JSON) on stdout."""
    try:
        shapes = reference_form_shapes(json.loads(sys.stdin.read()))
    except ReferenceUnavailable as exc:
        sys.exit(f"ReferenceUnavailable: {exc}")
    sys.stdout.write(json.dumps(shapes))


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


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


class ModelHolder:
    """Owner of the served version; ``start()`` once, ``stop()`` once (not restartable)."""

    def __init__(self, client: redis.Redis, *, poll_s: float = 2.0, prefix: str = "hap:") -> None:
        self.store = ModelStore(client, prefix=prefix)
        self.client = client
        self.poll_s = poll_s
        self.current: ServingModel | None = None
        self.last_contact = time.monotonic()
        self.rejected: int | None = None  # the last version rejected (not retried)
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
        try:
            manifest = self.store.manifest()
            self.last_contact = time.monotonic()
            if manifest is None or (self.current is not None and manifest["version"] == self.current.version) \
                    or manifest["version"] == self.rejected:
                return False
            started = time.perf_counter()
            current = self.current.loaded if self.current is not None else None
            loaded = self.store.load(current=current)
            model = verify(loaded, self.current)
        except (redis.RedisError, OSError) as exc:
            metrics.ERRORS.labels("redis").inc()
            log.warning("model store unreachable: %s", exc)
            return False
        except (ModelStoreError, VersionRejected) as exc:
            self._reject("model_load" if isinstance(exc, ModelStoreError) else "model_rejected", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - malformed data of any shape: reject it, keep serving
            self._reject("model_rejected", exc)
            return False
        self.current = model  # the swap: one reference assignment, atomic between requests
        self._observe(model, time.perf_counter() - started)
        return True

    def _reject(self, kind: str, exc: Exception) -> None:
        """Count and log a version that cannot be served, once; it is not retried."""
        try:
            self.rejected = self.store.manifest()["version"]  # type: ignore[index]
        except Exception:  # noqa: BLE001 - the manifest itself is what failed
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
