"""Versions in a real Redis: atomic manifest, deltas, rollback, corrupt data rejected."""

import numpy as np
import pytest

from feature_store.model_store import ModelStore, ModelStoreError, TierForm

SPEC = {"embeddings": ["emb"]}


def form(emb, w, touched=None):
    return TierForm({"emb": emb, "w": w}, SPEC, None if touched is None else {"emb": np.array(touched)})


def publish(store, light, expressive):
    return store.publish({"light": light, "expressive": expressive}, trained_until_event_ts_ms=1,
                         trained_until_finalized_ts_ms=2, samples_seen=3)


def test_deltas_reconstruct_the_full_tensors_and_are_smaller(redis_client):
    store = ModelStore(redis_client, full_every=3)
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
    store = ModelStore(redis_client)
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
    store = ModelStore(redis_client)
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


def test_corrupt_blob_and_dangling_manifest_are_errors(redis_client):
    store = ModelStore(redis_client)
    emb = np.zeros((4, 2), np.float32)
    publish(store, form(emb, emb[0]), form(emb, emb[0]))
    key = store.manifest()["tiers"]["light"]["key"]
    redis_client.set(key, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelStoreError, match="not valid safetensors"):
        store.load()
    redis_client.delete(key)
    with pytest.raises(ModelStoreError, match="missing"):
        store.load()
    redis_client.set(store.manifest_key, b"{]")
    with pytest.raises(ModelStoreError, match="corrupt manifest"):
        store.load()


def test_superseded_blobs_get_a_ttl_kept_ones_do_not(redis_client):
    store = ModelStore(redis_client, keep_versions=2, full_every=1)
    emb = np.zeros((4, 2), np.float32)
    versions = [publish(store, form(emb, emb[0]), form(emb, emb[0])) for _ in range(4)]
    ttl = {v: redis_client.ttl(f"hap:model:blob:{v}:light") for v in versions}
    assert ttl[versions[-1]] == -1 and ttl[versions[-2]] == -1
    assert ttl[versions[0]] > 0 and ttl[versions[1]] > 0
