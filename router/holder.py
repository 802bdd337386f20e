"""Hot swap: keep the freshest consistent model version and replace it between requests.

:class:`ModelHolder` runs a background thread that listens on the store's notification
channel (and polls every ``poll_s`` as a fallback), loads a new version (applying only the
delta blobs it lacks), builds an immutable :class:`ServingModel` and swaps one reference.
A request reads ``holder.current`` once and scores with that object only, so it never sees
two versions. When Redis is down or a version is corrupt, the last good version keeps
serving and ``staleness_s`` grows. A rollback (a lower version in the manifest) is honoured.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import numpy as np
import redis

from feature_store.featurize import ItemBatch
from feature_store.model_store import LoadedVersion, ModelStore, ModelStoreError
from router import metrics
from router.serving import ExpressiveTier, LightTier

log = logging.getLogger("hap.router")
ITEM_CACHE = 100_000


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
        out = np.empty((len(item_ids), self.light.spec["dim"]), np.float32)
        misses = []
        cache = self.item_cache
        for n, (item_id, stamp) in enumerate(zip(item_ids, stamps, strict=True)):
            hit = cache.get(item_id) if stamp is not None else None
            if hit is not None and hit[0] == stamp and hit[1] == items.ctype_idx[n]:
                out[n] = hit[2]
            else:
                misses.append(n)
        if misses:
            rows = np.array(misses)
            out[rows] = self.light.item_vectors(items.take(rows))
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


class ModelHolder:
    """Owner of the served version; ``start()`` once, ``stop()`` once (not restartable)."""

    def __init__(self, client: redis.Redis, *, poll_s: float = 2.0, prefix: str = "hap:") -> None:
        self.store = ModelStore(client, prefix=prefix)
        self.client = client
        self.poll_s = poll_s
        self.current: ServingModel | None = None
        self.last_contact = time.monotonic()
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
        """Load the manifest's version if it differs from the served one; True on a swap."""
        try:
            manifest = self.store.manifest()
            self.last_contact = time.monotonic()
            if manifest is None or (self.current is not None and manifest["version"] == self.current.version):
                return False
            started = time.perf_counter()
            current = self.current.loaded if self.current is not None else None
            loaded = self.store.load(current=current)
        except ModelStoreError as exc:
            metrics.ERRORS.labels("model_load").inc()
            log.error("keeping version %s: %s", self.current and self.current.version, exc)
            return False
        except (redis.RedisError, OSError) as exc:
            metrics.ERRORS.labels("redis").inc()
            log.warning("model store unreachable: %s", exc)
            return False
        model = build(loaded)
        self.current = model  # the swap: one reference assignment, atomic between requests
        self._observe(model, time.perf_counter() - started)
        return True

    def _observe(self, model: ServingModel, seconds: float) -> None:
        now = time.time()
        manifest: dict[str, Any] = model.loaded.manifest
        metrics.SWAPS.inc()
        metrics.SWAP_SECONDS.observe(seconds)
        metrics.VERSION.set(model.version)
        metrics.PUBLISHED_TO_LOADED.observe(max(0.0, now - manifest["published_ts_ms"] / 1000))
        for ts in manifest.get("metrics", {}).get("finalized_sample_ms", []):
            metrics.FRESHNESS.observe(max(0.0, now - ts / 1000))
        for ts in manifest.get("metrics", {}).get("event_sample_ms", []):
            metrics.MODEL_AGE_AT_LOAD.observe(max(0.0, now - ts / 1000))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            if self.current is not None:
                trained = self.current.loaded.manifest["trained_until_event_ts_ms"] / 1000
                metrics.MODEL_AGE.set(max(0.0, time.time() - trained))
            metrics.STALENESS.set(self.staleness_s)
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
