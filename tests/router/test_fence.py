"""The holder tells a recorded rollback (taken) from a version going backwards without one (a stale
writer, a Redis replica behind: refused, counted once, the served version kept)."""

import json

from prometheus_client import REGISTRY

from deploy.settings import REDIS_PREFIX
from feature_store.lease import WriterLease
from feature_store.model_store import ModelStore
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

