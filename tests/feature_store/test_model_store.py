"""Versions in a real Redis: atomic manifest, deltas, rollback, corrupt data rejected (SHA-256 per
blob, finite values), memory bounded by the count of kept versions; the fence: one writer (a
lease and its term), a compare-and-set switch, versions lower only by a recorded rollback."""

import hashlib
import json
import time

import numpy as np
import pytest
import redis
from safetensors.numpy import save as st_save

from deploy.settings import REDIS_PREFIX
from feature_store.lease import WriterLease
from feature_store.model_store import (
    BlobCorrupt,
    FencedError,
    ModelKeys,
    ModelStore,
    ModelStoreError,
    NonFiniteWeights,
    TierForm,
)

SPEC = {"embeddings": ["emb"]}
KEYS = ModelKeys(REDIS_PREFIX)


def form(emb, w, touched=None):
    return TierForm({"emb": emb, "w": w}, SPEC, None if touched is None else {"emb": np.array(touched)})


def publish(store, light, expressive):
    return store.publish({"light": light, "expressive": expressive}, trained_until_event_ts_ms=1,
                         trained_until_finalized_ts_ms=2, samples_seen=3)


def test_deltas_reconstruct_the_full_tensors_and_are_smaller(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, full_every=3)
    emb, w = np.zeros((1000, 8), np.float32), np.ones(4, np.float32)
    publish(store, form(emb, w), form(emb, w))
    full_bytes, kinds = store.last_publish_bytes, []
    for step in range(1, 5):
        emb = emb.copy()
        emb[step] = step
        publish(store, form(emb, w * step, [step]), form(emb, w, [step]))
        kinds.append(store.manifest()["tiers"]["light"]["kind"])
        if kinds[-1] == "delta":
            assert store.last_publish_bytes < full_bytes / 10
    loaded = store.load()
    np.testing.assert_array_equal(loaded.tiers["light"][0]["emb"], emb)
    np.testing.assert_array_equal(loaded.tiers["light"][0]["w"], w * 4)
    assert kinds == ["delta", "delta", "full", "delta"]  # a full snapshot every 3 chain links


def test_incremental_load_reads_only_new_blobs_and_keeps_old_arrays(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((10, 2), np.float32)
    publish(store, form(emb, emb[0]), form(emb, emb[0]))
    first = store.load()
    emb2 = emb.copy()
    emb2[3] = 7
    publish(store, form(emb2, emb[0], [3]), form(emb2, emb[0], [3]))
    second = store.load(current=first)
    assert second.tiers["light"][0]["emb"][3, 0] == 7
    assert first.tiers["light"][0]["emb"][3, 0] == 0  # the served version never changes under a reader


def test_rollback_serves_an_older_version_and_next_publish_is_full(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((10, 2), np.float32)
    v1 = publish(store, form(emb, emb[0]), form(emb, emb[0]))
    publish(store, form(emb + 1, emb[0], [0]), form(emb, emb[0], [0]))
    store.rollback(v1)
    assert store.load().version == v1 and store.load().tiers["light"][0]["emb"].sum() == 0
    v3 = publish(store, form(emb + 2, emb[0], [1]), form(emb, emb[0], [1]))
    assert store.manifest()["tiers"]["light"]["kind"] == "full"
    assert store.load().version == v3 and store.load().tiers["light"][0]["emb"][5, 0] == 2
    with pytest.raises(ModelStoreError, match="not kept"):
        store.rollback(999)


def test_a_rollback_is_recorded_and_a_leased_writer_supersedes_it(redis_client, monkeypatch):
    lease = WriterLease(redis_client, prefix=REDIS_PREFIX)
    assert lease.acquire()
    learner = ModelStore(redis_client, prefix=REDIS_PREFIX, lease=lease)
    emb = np.zeros((4, 2), np.float32)
    v1 = publish(learner, form(emb, emb[0]), form(emb, emb[0]))
    v2 = publish(learner, form(emb + 1, emb[0], [0]), form(emb, emb[0], [0]))
    operator = ModelStore(redis_client, prefix=REDIS_PREFIX)
    stale_view = operator.manifest()
    manifest = operator.rollback(v1, reason="bad model")  # no lease needed: an operator's act
    assert manifest["version"] == v1 and manifest["term"] == lease.term
    assert manifest["rollback"] == {"of_version": v2, "ts_ms": manifest["rollback"]["ts_ms"], "reason": "bad model"}
    assert "rollback" not in json.dumps(manifest["history"])
    with pytest.raises(ModelStoreError, match="already the current"):
        operator.rollback(v1)
    monkeypatch.setattr(operator, "manifest", lambda: stale_view)  # a rollback decided on a manifest since replaced
    with pytest.raises(FencedError) as info:
        operator.rollback(v1)
    assert info.value.kind == "version_moved" and info.value.retriable
    v3 = publish(learner, form(emb + 3, emb[0], [1]), form(emb, emb[0], [1]))
    assert v3 > v2 and learner.manifest()["tiers"]["light"]["kind"] == "full"
    assert "rollback" not in learner.manifest()


def test_a_second_writer_is_refused_while_the_lease_is_held(redis_client):
    first = WriterLease(redis_client, prefix=REDIS_PREFIX, holder="a")
    second = WriterLease(redis_client, prefix=REDIS_PREFIX, holder="b")
    assert first.acquire() and not second.acquire()
    assert second.current() == (first.token, pytest.approx(10, abs=0.5))
    emb = np.zeros((4, 2), np.float32)
    v1 = publish(ModelStore(redis_client, prefix=REDIS_PREFIX, lease=first), form(emb, emb[0]), form(emb, emb[0]))
    tool = ModelStore(redis_client, prefix=REDIS_PREFIX)
    for writer in (tool, ModelStore(redis_client, prefix=REDIS_PREFIX, lease=second)):  # a tool; one still waiting
        with pytest.raises(FencedError) as info:
            publish(writer, form(emb, emb[0]), form(emb, emb[0]))
        assert info.value.kind in ("lease_held", "lease_lost")
        if writer.lease is None:
            assert info.value.kind == "lease_held" and info.value.retriable and info.value.detail == first.token
    manifest = ModelStore(redis_client, prefix=REDIS_PREFIX).manifest()
    assert (manifest["version"], manifest["term"]) == (v1, first.term)
    assert all(redis_client.ttl(k) > 0 for k in blob_ttls(redis_client) if k not in manifest["tiers"]["light"]["chain"]
               and k not in manifest["tiers"]["expressive"]["chain"])  # the refused versions' blobs expire


def test_a_writer_whose_lease_was_taken_over_is_fenced_by_the_switch(redis_client):
    """The old holder does not know yet (no renewal ran): the switch itself refuses it."""
    old = WriterLease(redis_client, prefix=REDIS_PREFIX, ttl_s=0.2, holder="old")
    assert old.acquire()
    emb = np.zeros((4, 2), np.float32)
    stale = ModelStore(redis_client, prefix=REDIS_PREFIX, lease=old)
    publish(stale, form(emb, emb[0]), form(emb, emb[0]))
    time.sleep(0.3)
    new = WriterLease(redis_client, prefix=REDIS_PREFIX, holder="new")
    assert new.acquire() and new.term == old.term + 1
    v2 = publish(ModelStore(redis_client, prefix=REDIS_PREFIX, lease=new), form(emb, emb[0]), form(emb, emb[0]))
    with pytest.raises(FencedError) as info:
        publish(stale, form(emb + 1, emb[0], [0]), form(emb, emb[0], [0]))
    assert (info.value.kind, info.value.retriable, info.value.detail) == ("lease_lost", False, new.token)
    with pytest.raises(FencedError, match="taken over"):
        old.renew()
    assert old.token is None and old.lost is not None
    assert ModelStore(redis_client, prefix=REDIS_PREFIX).manifest()["version"] == v2
    old.release()  # not its lease any more: left alone
    assert redis_client.get(KEYS.lease) == new.token.encode()


def test_an_expired_lease_nobody_took_is_taken_back_with_its_term(redis_client):
    lease = WriterLease(redis_client, prefix=REDIS_PREFIX, ttl_s=0.2)
    assert lease.acquire()
    time.sleep(0.3)
    emb = np.zeros((4, 2), np.float32)
    # nobody wrote since
    publish(ModelStore(redis_client, prefix=REDIS_PREFIX, lease=lease), form(emb, emb[0]), form(emb, emb[0]))
    lease.renew()
    assert redis_client.get(KEYS.lease) == lease.token.encode() and redis_client.pttl(KEYS.lease) > 0
    assert not WriterLease(redis_client, prefix=REDIS_PREFIX).acquire()
    lease.release()
    assert redis_client.get(KEYS.lease) is None
    successor = WriterLease(redis_client, prefix=REDIS_PREFIX)
    assert successor.acquire() and successor.term == lease.term + 1


def test_interleaved_writers_cannot_move_the_version_backwards(redis_client, monkeypatch):
    """Two stores without a lease (as two learners were before the fence): the second switches while
    the first is between its read and its switch; the first is refused, not written over it."""
    first, second = ModelStore(redis_client, prefix=REDIS_PREFIX), ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((4, 2), np.float32)
    v1 = publish(first, form(emb, emb[0]), form(emb, emb[0]))
    switch = first._switch

    def interleaved(*args, **kwargs):
        publish(second, form(emb + 2, emb[0]), form(emb, emb[0]))
        return switch(*args, **kwargs)

    monkeypatch.setattr(first, "_switch", interleaved)
    with pytest.raises(FencedError) as info:
        publish(first, form(emb + 1, emb[0], [0]), form(emb, emb[0], [0]))
    monkeypatch.undo()
    v3 = second.manifest()["version"]
    assert info.value.kind == "version_moved" and info.value.retriable and v3 > v1
    refused = v3 - 1  # allocated by the first store before the second's
    assert not redis_client.exists(KEYS.blob(refused, "light"))  # never adopted: deleted at once
    v4 = publish(first, form(emb + 1, emb[0], [0]), form(emb, emb[0], [0]))
    assert v4 > v3 and first.manifest()["tiers"]["light"]["kind"] == "full"
    assert [e["version"] for e in first.versions()] == [v4, v3, v1]


def test_corrupt_blob_and_dangling_manifest_are_errors(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((4, 2), np.float32)
    publish(store, form(emb, emb[0]), form(emb, emb[0]))
    key = store.manifest()["tiers"]["light"]["key"]
    redis_client.set(key, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(BlobCorrupt, match="SHA-256"):
        store.load()
    redis_client.delete(key)
    with pytest.raises(ModelStoreError, match="missing"):
        store.load()
    redis_client.set(store.manifest_key, b"{]")
    with pytest.raises(ModelStoreError, match="corrupt manifest"):
        store.load()


def test_superseded_blobs_get_a_ttl_kept_ones_do_not(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=2, full_every=1)
    emb = np.zeros((4, 2), np.float32)
    versions = [publish(store, form(emb, emb[0]), form(emb, emb[0])) for _ in range(4)]
    ttl = {v: redis_client.ttl(store.keys.blob(v, "light")) for v in versions}
    assert ttl[versions[-1]] == -1 and ttl[versions[-2]] == -1
    assert ttl[versions[0]] > 0 and ttl[versions[1]] > 0


def test_a_blob_whose_bytes_changed_is_rejected_by_its_sha256(redis_client):
    """A blob replaced by valid safetensors of the same size (one weight changed) still parses; only
    the digest the manifest recorded tells it apart."""
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((4, 2), np.float32)
    publish(store, form(emb, emb[0]), form(emb, emb[0]))
    key = store.manifest()["tiers"]["expressive"]["key"]
    forged = st_save({"emb": emb + 1, "w": emb[0]}, metadata={"kind": "full"})
    assert len(forged) == len(redis_client.get(key))
    redis_client.set(key, forged)
    with pytest.raises(BlobCorrupt, match="SHA-256") as info:
        store.load()
    assert info.value.key == key


def test_nonfinite_weights_are_refused_at_publish_and_rejected_at_load(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((4, 2), np.float32)
    v1 = publish(store, form(emb, emb[0]), form(emb, emb[0]))
    bad = emb.copy()
    bad[1, 1] = np.inf
    with pytest.raises(NonFiniteWeights) as info:
        publish(store, form(emb, emb[0]), form(bad, emb[0]))
    assert (info.value.tier, info.value.tensor) == ("expressive", "emb")
    assert store.manifest()["version"] == v1 and not redis_client.keys(store.keys.blob(2, "*"))  # nothing written
    # a NaN blob that reached Redis anyway (another writer), digest and all, is rejected at load
    blob = st_save({"emb": np.full((4, 2), np.nan, np.float32), "w": emb[0]}, metadata={"kind": "full"})
    manifest = json.loads(redis_client.get(store.manifest_key))
    tier = manifest["tiers"]["light"]
    redis_client.set(tier["key"], blob)
    tier["sha256"] = {tier["key"]: hashlib.sha256(blob).hexdigest()}
    redis_client.set(store.manifest_key, json.dumps(manifest))
    with pytest.raises(NonFiniteWeights, match="NaN or inf"):
        store.load()


def test_delta_rows_outside_the_table_are_rejected(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    emb = np.zeros((4, 2), np.float32)
    publish(store, form(emb, emb[0]), form(emb, emb[0]))
    publish(store, form(emb, emb[0], [1]), form(emb, emb[0], [1]))
    manifest = json.loads(redis_client.get(store.manifest_key))
    tier = manifest["tiers"]["light"]
    assert tier["kind"] == "delta"
    blob = st_save({"emb::rows": np.array([9]), "emb::values": np.ones((1, 2), np.float32), "w": emb[0]})
    redis_client.set(tier["key"], blob)
    tier["sha256"][tier["key"]] = hashlib.sha256(blob).hexdigest()
    redis_client.set(store.manifest_key, json.dumps(manifest))
    with pytest.raises(BlobCorrupt, match="outside its 4 rows"):
        store.load()


def blob_ttls(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): client.ttl(k) for k in client.keys(KEYS.blob_pattern)}


def test_memory_is_bounded_by_the_count_of_kept_versions(redis_client):
    """With the defaults, a blob no kept version references expires within a minute (it was an hour,
    ~6 GB at one publish per second), and only the kept versions' blobs have no TTL."""
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=3, full_every=4)
    emb = np.zeros((64, 2), np.float32)
    for step in range(30):
        publish(store, form(emb, emb[0], [step % 64]), form(emb, emb[0], [step % 64]))
    kept = {key for v in store.versions() for tier in v["tiers"].values() for key in tier["chain"]}
    ttls = blob_ttls(redis_client)
    assert {k for k, ttl in ttls.items() if ttl == -1} == kept
    assert all(0 < ttl <= 60 for k, ttl in ttls.items() if k not in kept)
    assert len(kept) <= 2 * (3 + 4)  # both tiers: the kept versions' chains back to their full snapshots


def test_blobs_of_a_failed_publish_are_deleted_and_leftover_blobs_expire(own_redis):
    """Redis at ``maxmemory`` (noeviction) refuses the second blob of a publish: the first one, already
    written, is deleted at once (it used to keep its 10-minute pending TTL, pinning memory while the
    learner retried full versions every second and item statistics writes failed), and the retry
    publishes. A blob left without a TTL (an older learner's crash) gets one at the next store's first
    publish."""
    client = redis.Redis.from_url(own_redis.endpoint())
    try:
        client.set(KEYS.blob(0, "light"), b"left by a crash")  # no TTL
        ModelStore(client, prefix=REDIS_PREFIX).publish(
            {"light": form(np.zeros((4, 2), np.float32), np.ones(2, np.float32))},
            trained_until_event_ts_ms=1, trained_until_finalized_ts_ms=1, samples_seen=1)
        assert 0 < client.ttl(KEYS.blob(0, "light")) <= 60
        small, big = np.zeros((4, 2), np.float32), np.zeros((1 << 21, 4), np.float32)  # 32 MiB
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + (16 << 20))  # room for the light blob, not the expressive one
        client.config_set("maxmemory-policy", "noeviction")
        store = ModelStore(client, prefix=REDIS_PREFIX)
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):  # Redis OOM
            store.publish({"light": form(small, small[0]), "expressive": form(big, big[0])},
                          trained_until_event_ts_ms=1, trained_until_finalized_ts_ms=1, samples_seen=1)
        assert set(blob_ttls(client)) == {KEYS.blob(0, "light"), KEYS.blob(1, "light")}  # the light one deleted
        client.connection_pool.disconnect()  # frees the refused 32 MiB argument's query buffer in Redis
        version = store.publish({"light": form(small, small[0]), "expressive": form(small, small[0])},
                                trained_until_event_ts_ms=1, trained_until_finalized_ts_ms=1, samples_seen=1)
        assert store.load().version == version
    finally:
        client.close()


def test_an_incremental_load_after_redis_lost_its_data_never_mixes_two_models(redis_client):
    """Redis loses its data; a learner restarted from a checkpoint numbers versions again from the
    same floor, so the new chain's blob keys repeat the served chain's. The router's incremental load
    must not keep the old arrays under the same key names: the digests differ, so it reads the chain."""
    emb, w = np.zeros((16, 2), np.float32), np.ones(2, np.float32)
    before = ModelStore(redis_client, prefix=REDIS_PREFIX)
    publish(before, form(emb, w), form(emb, w))
    publish(before, form(emb, w, [1]), form(emb, w, [1]))
    served = before.load()
    redis_client.flushdb()  # data lost; the learner restarts with the floor of its checkpoint (0 here)
    after = ModelStore(redis_client, prefix=REDIS_PREFIX)
    other = np.full((16, 2), 5, np.float32)
    publish(after, form(other, w * 2), form(other, w * 2))
    publish(after, form(other, w * 2, [2]), form(other, w * 2, [2]))
    publish(after, form(other, w * 3, [3]), form(other, w * 3, [3]))
    assert served.manifest["tiers"]["light"]["chain"] == after.manifest()["tiers"]["light"]["chain"][:2]
    loaded = after.load(current=served)
    for tier in ("light", "expressive"):
        np.testing.assert_array_equal(loaded.tiers[tier][0]["emb"], other)
        np.testing.assert_array_equal(loaded.tiers[tier][0]["w"], w * 3)


def test_a_pinned_version_is_served_and_nothing_supersedes_it_until_unpinned(redis_client):
    lease = WriterLease(redis_client, prefix=REDIS_PREFIX)
    assert lease.acquire()
    learner = ModelStore(redis_client, prefix=REDIS_PREFIX, lease=lease)
    emb = np.zeros((4, 2), np.float32)
    v1, v2, v3 = (publish(learner, form(emb + n, emb[0], [0]), form(emb, emb[0], [0])) for n in range(3))
    operator = ModelStore(redis_client, prefix=REDIS_PREFIX)
    pin = operator.pin(v1, reason="bad model")
    assert (pin["version"], pin["reason"]) == (v1, "bad model") and operator.pinned() == pin
    manifest = operator.manifest()
    assert manifest["version"] == v1 and manifest["rollback"]["of_version"] == v3  # routers take it (recorded)
    blobs = set(redis_client.keys(KEYS.blob_pattern))
    with pytest.raises(FencedError) as info:
        publish(learner, form(emb + 9, emb[0], [1]), form(emb, emb[0], [1]))
    assert (info.value.kind, info.value.retriable, info.value.detail) == ("pinned", True, str(v1))
    assert set(redis_client.keys(KEYS.blob_pattern)) == blobs  # refused before any blob was written
    with pytest.raises(FencedError, match=f"version {v1} is pinned"):
        operator.rollback(v2)
    assert operator.manifest() == manifest and operator.load().tiers["light"][0]["emb"].sum() == 0
    moved = operator.pin(v2)  # pinning another kept version moves the pin
    assert operator.manifest()["version"] == v2 and operator.pinned() == moved
    assert operator.unpin() == moved and operator.pinned() is None and operator.unpin() is None
    v4 = publish(learner, form(emb + 4, emb[0], [1]), form(emb, emb[0], [1]))
    assert v4 > v3 and learner.manifest()["tiers"]["light"]["kind"] == "full"  # publishing resumes, above all


def test_pinning_the_current_version_leaves_the_manifest_and_an_unkept_one_is_refused(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=2)
    emb = np.zeros((4, 2), np.float32)
    versions = [publish(store, form(emb, emb[0]), form(emb, emb[0])) for _ in range(3)]
    before = redis_client.get(KEYS.manifest)
    with pytest.raises(ModelStoreError, match="not kept"):
        store.pin(versions[0])
    assert store.pinned() is None
    store.pin(versions[-1])
    assert redis_client.get(KEYS.manifest) == before and store.pinned()["version"] == versions[-1]
    with pytest.raises(FencedError, match="pinned"):
        publish(store, form(emb, emb[0]), form(emb, emb[0]))


def test_snapshots_reach_back_their_window_beside_the_last_versions(redis_client):
    """A version a minute, a snapshot every 10 minutes kept 1 hour, 3 recent versions: after 2 hours the
    history holds the 3 newest and 6 snapshots 10 minutes apart back to an hour; each snapshot is full
    (one blob a tier); a blob of an expired snapshot gets the grace TTL; a snapshot can be pinned."""
    now = [1_000_000.0]
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=3, full_every=50, snapshot_every_s=600,
                       snapshot_keep_s=3600, clock=lambda: now[0])
    emb = np.zeros((64, 2), np.float32)
    published = {}
    for minute in range(121):
        now[0] = 1_000_000.0 + 60 * minute
        published[minute] = publish(store, form(emb, emb[0], [minute % 64]), form(emb, emb[0], [minute % 64]))
    kept = store.versions()
    assert [e["version"] for e in kept[:3]] == [published[m] for m in (120, 119, 118)]
    snapshots = kept[3:]
    assert all(e.get("snapshot") for e in snapshots)
    ages = [(now[0] * 1000 - e["published_ts_ms"]) / 60_000 for e in snapshots]
    assert ages == [10, 20, 30, 40, 50, 60], ages
    assert all(len(t["chain"]) == 1 and t["kind"] == "full" for e in snapshots for t in e["tiers"].values())
    ttls = blob_ttls(redis_client)
    referenced = {key for e in kept for t in e["tiers"].values() for key in t["chain"]}
    assert {k for k, ttl in ttls.items() if ttl == -1} == referenced
    oldest = snapshots[-1]["version"]
    store.pin(oldest)
    assert store.load().version == oldest and store.manifest()["rollback"]["of_version"] == published[120]
