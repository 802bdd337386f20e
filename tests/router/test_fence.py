"""The holder tells a recorded rollback (taken) from a version going backwards without one (a stale
writer, a Redis replica behind: refused, counted once, the served version kept)."""

import json

from prometheus_client import REGISTRY

from deploy.settings import REDIS_PREFIX
from feature_store.lease import WriterLease
from feature_store.model_store import ModelStore
from router import holder as holder_module
from router.holder import ModelHolder

from .conftest import publish


def stale_versions() -> float:
    return REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "stale_version"}) or 0.0


def test_a_recorded_rollback_is_taken_and_a_stale_lower_version_is_not(redis_client):
    lease = WriterLease(redis_client, prefix=REDIS_PREFIX)
    assert lease.acquire()
    learner = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=100, lease=lease)
    v1, v2 = publish(redis_client, 1, learner), publish(redis_client, 2, learner)
    holder = ModelHolder(redis_client, prefix=REDIS_PREFIX)
    assert holder.refresh() and holder.current.version == v2

    ModelStore(redis_client, prefix=REDIS_PREFIX).rollback(v1, reason="test")
    rollback = redis_client.get(learner.keys.manifest)
    assert holder.refresh() and holder.current.version == v1  # lower, and recorded: taken

    v3 = publish(redis_client, 3, learner)
    assert holder.refresh() and holder.current.version == v3
    before = stale_versions()
    previous = learner.manifest()["history"][0]
    assert previous["version"] < v3 and "rollback" not in previous
    for stale in (previous, rollback):  # an unfenced writer's older version; the old rollback written again
        redis_client.set(learner.keys.manifest, stale if isinstance(stale, bytes) else json.dumps(stale))
        assert not holder.refresh() and not holder.refresh()
        assert holder.current.version == v3
    assert stale_versions() - before == 2  # each counted once, not at every poll



def test_a_newer_version_landing_while_a_bad_one_is_verified_is_loaded(redis_client, monkeypatch):
    """Version N fails verification; N+1, published while N was being verified, is still loaded
    (only N is recorded as rejected, not whatever the manifest holds when N fails)."""
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=100)
    good = publish(redis_client, 1, store)
    holder = ModelHolder(redis_client, prefix=REDIS_PREFIX)
    assert holder.refresh() and holder.current.version == good
    bad = publish(redis_client, 2, store)
    real_verify = holder_module.verify

    def verify_while_newer_lands(loaded, served=None):
        if loaded.version == bad:
            publish(redis_client, 3, store)
            raise holder_module.VersionRejected(bad, "bad for the test")
        return real_verify(loaded, served)

    monkeypatch.setattr(holder_module, "verify", verify_while_newer_lands)
    assert not holder.refresh() and holder.current.version == good
    assert holder.refresh() and holder.current.version == bad + 1


def test_a_manifest_that_goes_backwards_after_the_check_is_not_loaded(redis_client, monkeypatch):
    """The manifest read for the stale-version check is the one loaded: a failover that puts an older
    manifest in place between the check and the load does not sneak it in."""
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=100)
    v1 = publish(redis_client, 1, store)
    old = redis_client.get(store.keys.manifest)
    holder = ModelHolder(redis_client, prefix=REDIS_PREFIX)
    assert holder.refresh() and holder.current.version == v1
    v2 = publish(redis_client, 2, store)
    read = holder.store.manifest

    def read_then_fail_over():
        manifest = read()
        redis_client.set(store.keys.manifest, old)  # a replica behind is promoted right after the check
        return manifest

    monkeypatch.setattr(holder.store, "manifest", read_then_fail_over)
    before = stale_versions()
    assert holder.refresh() and holder.current.version == v2
    monkeypatch.setattr(holder.store, "manifest", read)
    assert not holder.refresh() and holder.current.version == v2  # the old manifest now: refused, counted
    assert stale_versions() - before == 1


def test_the_pinned_version_is_served_even_when_a_writer_bypasses_the_pin(redis_client):
    """``hap models pin`` of an older version: taken as a rollback; a manifest that a writer unaware of
    the pin (an older learner) switches to a newer version is not served while the pin holds; a pinned
    version no longer kept is counted once and the served one kept; unpinned, the newest is taken."""
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=3)
    v1, v2 = publish(redis_client, 1, store), publish(redis_client, 2, store)
    holder = ModelHolder(redis_client, prefix=REDIS_PREFIX)
    assert holder.refresh() and holder.current.version == v2
    ModelStore(redis_client, prefix=REDIS_PREFIX).pin(v1, reason="test")
    assert holder.refresh() and holder.current.version == v1 and holder.pin["version"] == v1
    assert REGISTRY.get_sample_value("hap_router_model_pinned") == 1
    pin = redis_client.get(store.keys.pin)

    def publish_over_the_pin(seed: int) -> int:  # an older learner, which does not know the pin
        redis_client.delete(store.keys.pin)
        try:
            return publish(redis_client, seed, store)
        finally:
            redis_client.set(store.keys.pin, pin)

    v3 = publish_over_the_pin(3)
    assert not holder.refresh() and holder.current.version == v1  # v1 is kept in v3's history: still served
    before = REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "pin_unavailable"}) or 0.0
    publish_over_the_pin(4), publish_over_the_pin(5)  # v1 leaves the history
    assert not holder.refresh() and not holder.refresh() and holder.current.version == v1
    assert REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "pin_unavailable"}) - before == 1
    assert ModelStore(redis_client, prefix=REDIS_PREFIX).unpin()["version"] == v1
    assert holder.refresh() and holder.current.version > v3 and holder.pin is None
    assert REGISTRY.get_sample_value("hap_router_model_pinned") == 0
