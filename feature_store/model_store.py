"""Versioned model weights in Redis: safetensors blobs, one atomic manifest, a notification.

Publishing a version: (1) each tier's blob is written under an immutable key
``{prefix}model:blob:{version}:{tier}``; (2) the manifest ``{prefix}model:manifest`` is
switched with one ``SET`` (readers see the old or the new version, both tiers together);
(3) the version number is published on ``{prefix}model:updates``. Embedding tables travel as
deltas (rows touched since the previous version) with a full snapshot every ``full_every``
versions, so each tier's manifest entry lists its ``chain``: the blobs from the last full
snapshot up to this version, applied in order. Blobs that no kept version references get a
TTL. Nothing here unpickles: blobs are safetensors, the manifest is JSON.

Examples
--------
>>> import numpy as np, redis                                   # doctest: +SKIP
>>> store = ModelStore(redis.Redis())                            # doctest: +SKIP
>>> form = TierForm({"w": np.ones(2, np.float32)}, {"embeddings": []})  # doctest: +SKIP
>>> v = store.publish({"light": form, "expressive": form}, trained_until_event_ts_ms=0,
...                   trained_until_finalized_ts_ms=0, samples_seen=0)   # doctest: +SKIP
>>> store.load().version == v                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from typing import Any

import numpy as np
import redis
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

MAX_BLOB_BYTES = 256 << 20
MAX_MANIFEST_BYTES = 4 << 20
TIERS = ("light", "expressive")


class ModelStoreError(RuntimeError):
    """A version that cannot be published or loaded: missing blob, corrupt data, bad manifest."""


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
    """Publisher and reader of model versions; one publisher (the learner) per key prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str = "hap:", keep_versions: int = 5,
                 superseded_ttl_s: int = 3600, full_every: int = 20) -> None:
        self.r = client
        self.prefix = prefix
        self.keep_versions = max(1, keep_versions)
        self.superseded_ttl_s = superseded_ttl_s
        self.full_every = max(1, full_every)
        self.manifest_key = f"{prefix}model:manifest"
        self.channel = f"{prefix}model:updates"
        self.last_publish_bytes = 0
        self._last_version: int | None = None  # deltas are relative to this store's own last publish
        self._newest = 0  # versions only grow, even when Redis lost the counter

    # -- publishing -------------------------------------------------------------------
    def publish(self, tiers: dict[str, TierForm], *, trained_until_event_ts_ms: int,
                trained_until_finalized_ts_ms: int, samples_seen: int,
                metrics: dict[str, Any] | None = None) -> int:
        """Write one version holding every tier; returns its number."""
        try:
            return self._publish(tiers, trained_until_event_ts_ms, trained_until_finalized_ts_ms, samples_seen,
                                 metrics)
        except (redis.RedisError, OSError):
            self._last_version = None  # Redis may hold part of this version: the next one is full
            raise

    def _publish(self, tiers: dict[str, TierForm], trained_until_event_ts_ms: int,
                 trained_until_finalized_ts_ms: int, samples_seen: int, metrics: dict[str, Any] | None) -> int:
        previous = self.manifest()
        counter = f"{self.prefix}model:version_counter"
        version = int(self.r.incr(counter))
        if version <= self._newest:  # Redis lost its data
            version = self._newest + 1
            self.r.set(counter, version)
        entries, written = {}, 0
        ours = previous is not None and previous["version"] == self._last_version
        for name, form in tiers.items():
            prev = previous["tiers"].get(name) if ours else None
            full = prev is None or form.touched_rows is None or len(prev["chain"]) >= self.full_every
            blob = _encode(form, full)
            key = f"{self.prefix}model:blob:{version}:{name}"
            self.r.set(key, blob)
            written += len(blob)
            entries[name] = {"key": key, "kind": "full" if full else "delta", "spec": form.spec,
                             "chain": [key] if full else [*prev["chain"], key]}
        entry = {
            "version": version, "tiers": entries, "published_ts_ms": int(time.time() * 1000),
            "trained_until_event_ts_ms": trained_until_event_ts_ms,
            "trained_until_finalized_ts_ms": trained_until_finalized_ts_ms,
            "samples_seen": samples_seen, "metrics": metrics or {}, "bytes": written,
        }
        history = ([_summary(previous)] + previous.get("history", []) if previous else [])[: self.keep_versions - 1]
        self.r.set(self.manifest_key, json.dumps({**entry, "history": history}))
        self.r.publish(self.channel, str(version))
        self._expire_unreferenced(previous, {**entry, "history": history})
        self.last_publish_bytes = written
        self._last_version = self._newest = version
        return version

    def rollback(self, version: int) -> dict[str, Any]:
        """Serve a kept older ``version`` again (as the newest manifest); returns the manifest."""
        current = self.manifest()
        if current is None:
            raise ModelStoreError("no model published yet")
        kept = {e["version"]: e for e in [_summary(current), *current.get("history", [])]}
        if version not in kept:
            raise ModelStoreError(f"version {version} is not kept; kept: {sorted(kept)}")
        target = kept[version]
        for tier in target["tiers"].values():
            for key in tier["chain"]:
                if not self.r.exists(key):
                    raise ModelStoreError(f"version {version}: blob {key} has expired")
                self.r.persist(key)
        history = [e for v, e in kept.items() if v != version]
        manifest = {**target, "rolled_back_ts_ms": int(time.time() * 1000), "history": history}
        self.r.set(self.manifest_key, json.dumps(manifest))
        self.r.publish(self.channel, str(version))
        return manifest

    def _expire_unreferenced(self, previous: dict | None, current: dict) -> None:
        if previous is None:
            return
        keep = _chain_keys(current)
        for key in _chain_keys(previous) - keep:
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

    def load(self, version: int | None = None, current: LoadedVersion | None = None) -> LoadedVersion:
        """Load ``version`` (default: the manifest's). With ``current``, only the blobs its
        chain lacks are read and applied (the router's incremental hot-swap path)."""
        manifest = self.manifest()
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
            have = (current.manifest["tiers"].get(name, {}).get("chain", []) if current else [])
            if have and chain[: len(have)] == have:
                tensors, todo = dict(current.tiers[name][0]), chain[len(have):]
            else:
                tensors, todo = {}, chain
            for key in todo:
                tensors = _apply(tensors, self._read(key))
            tiers[name] = (tensors, entry["spec"])
        return LoadedVersion(manifest["version"], tiers, manifest)

    def _read(self, key: str) -> dict[str, np.ndarray]:
        raw = self.r.get(key)
        if raw is None:
            raise ModelStoreError(f"blob {key} is missing")
        if len(raw) > MAX_BLOB_BYTES:
            raise ModelStoreError(f"blob {key} of {len(raw)} bytes exceeds the cap")
        try:
            _header(raw)
            return st_load(raw)
        except Exception as exc:  # safetensors raises its own error types for corrupt bytes
            raise ModelStoreError(f"blob {key} is not valid safetensors: {exc}") from None


def _encode(form: TierForm, full: bool) -> bytes:
    embeddings = set(form.spec.get("embeddings", []))
    out: dict[str, np.ndarray] = {}
    for name, array in form.tensors.items():
        if full or name not in embeddings:
            out[name] = np.ascontiguousarray(array, dtype=np.float32)
        else:
            rows = np.unique(np.asarray(form.touched_rows.get(name, []), dtype=np.int64))  # type: ignore[union-attr]
            out[f"{name}::rows"] = rows
            out[f"{name}::values"] = np.ascontiguousarray(array[rows], dtype=np.float32)
    return st_save(out, metadata={"kind": "full" if full else "delta"})


def _apply(tensors: dict[str, np.ndarray], blob: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply a full or delta blob without mutating arrays another version may be serving."""
    out = dict(tensors)
    for name, array in blob.items():
        if name.endswith("::rows"):
            base = name[: -len("::rows")]
            if base not in out:
                raise ModelStoreError(f"delta for {base} has no base tensor")
            table = out[base].copy()
            table[array] = blob[f"{base}::values"]
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


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in ("history", "rolled_back_ts_ms")}


def _chain_keys(manifest: dict[str, Any]) -> set[str]:
    entries = [manifest, *manifest.get("history", [])]
    return {key for e in entries for tier in e["tiers"].values() for key in tier["chain"]}
