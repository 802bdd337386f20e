"""Every component on a real Redis Cluster (three masters, three replicas of ``redis-server`` in cluster
mode, append-only, a password), through ``HAP_REDIS_URL=redis+cluster://...``: the streams' item statistics and user
histories written and read back, the router's feature reads (items spread over every master), a model
version published under the writer lease and loaded; then the master holding the model keys SIGKILLed:
the router's holder serves the last good version throughout, reads work again once its replica is
promoted, and publishing resumes with a higher version that the holder swaps in; then every node stopped:
each component sees Redis down (a ``redis.ConnectionError``: defaults, buffered counts, the last good
version), not an error it does not expect; a client made meanwhile connects once the cluster is back."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY
from redis.cluster import RedisCluster
from redis.crc import key_slot

from deploy.settings import REDIS_PREFIX, Settings
from deploy.stack.services import LocalRedisCluster, RedisClusterNode, cluster_ports, node_command
from feature_store.connection import RedisEndpoint
from feature_store.featurize import FEATURES, ITEM_STAT_FEATURES
from feature_store.item_stats import ItemStats
from feature_store.lease import WriterLease
from feature_store.model_store import ModelKeys, ModelStore
from router.features import FeatureCache
from router.holder import ModelHolder
from router.stats_reader import OK
from streams.contract.schemas import ExposureEvent
from streams.join.features import StreamFeatures
from tests.router.conftest import publish

pytestmark = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-cli")),
                       reason="redis-server and redis-cli are needed (Debian's redis-server package: make setup)")

NODE_TIMEOUT_MS = 2000
PASSWORD = "cluster-secret"  # every node requires it (requirepass; masterauth for the replicas)
FAILOVER_WAIT_S = 30.0
MINUTE_MS = 60_000
ITEMS = [f"item-{n}" for n in range(60)]
EXP_10M = ITEM_STAT_FEATURES.index("exp_10m")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A formed cluster of six nodes on free ports (and their bus ports); every node stopped afterwards,
    also when the start or the test fails."""
    settings = Settings.load({"HAP_DATA_DIR": str(tmp_path / "stack"), "HAP_REDIS_PASSWORD": PASSWORD})
    local = LocalRedisCluster(settings, cluster_ports(6), replicas=1, node_timeout_ms=NODE_TIMEOUT_MS)
    try:
        local.start(timeout_s=45)
        yield local
    finally:
        local.stop()


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float, during: Callable[[], None] = lambda: None,
             ) -> float:
    """Seconds until ``condition()``; ``during()`` runs at every poll (an invariant); fails naming ``what``."""
    started = time.monotonic()
    while not condition():
        during()
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - started


def cluster_nodes(cluster: LocalRedisCluster) -> dict[str, dict]:
    """CLUSTER NODES as a live node of ``cluster`` sees it: node id -> its entry, with ``node``, ours."""
    live = next(node for node in cluster.nodes if node.process.pid() is not None)
    by_port = {node.port: node for node in cluster.nodes}
    return {i["node_id"]: {**i, "node": by_port[int(addr.split("@")[0].rsplit(":", 1)[1])]}
            for addr, i in node_command(live, "CLUSTER NODES").items()}


def master_of(cluster: LocalRedisCluster, key: str) -> RedisClusterNode:
    """The node that serves ``key``'s slot as master (a failed one excluded)."""
    slot = key_slot(key.encode())
    return next(i["node"] for i in cluster_nodes(cluster).values() if "master" in i["flags"]
                and "fail" not in i["flags"] and any(int(r[0]) <= slot <= int(r[-1]) for r in i["slots"]))


def replica_of(cluster: LocalRedisCluster, master: RedisClusterNode) -> RedisClusterNode:
    nodes = cluster_nodes(cluster)
    master_id = next(node_id for node_id, i in nodes.items() if i["node"] is master)
    return next(i["node"] for i in nodes.values() if i["master_id"] == master_id)


def replicated(master: RedisClusterNode, replica: RedisClusterNode) -> bool:
    """True once the replica has every write its master acknowledged (offsets of INFO replication)."""
    return int(node_command(replica, "INFO", "replication")["slave_repl_offset"]) >= \
        int(node_command(master, "INFO", "replication")["master_repl_offset"])


def test_every_component_on_a_redis_cluster_and_a_failover_of_the_model_keys_master(cluster):
    settings = Settings.load({"HAP_DATA_DIR": str(cluster.settings.data_dir), "HAP_REDIS_URL": cluster.url,
                              "HAP_REDIS_PASSWORD": PASSWORD})
    client = settings.redis.client()
    assert isinstance(client, RedisCluster), f"{cluster.url} did not give a cluster client"
    with pytest.raises(redis.ConnectionError, match="(?i)auth"):
        RedisEndpoint(cluster.url).client().get("hap:anything")  # no password, no access
    stat_keys = [ItemStats(client, prefix=REDIS_PREFIX).key(i) for i in ITEMS]
    masters = {master_of(cluster, key).name for key in stat_keys}
    assert len(masters) == 3, f"the items' statistics should span every master, not only {masters}"

    # streams: item statistics and user histories written through the cluster, read back as of a time
    features = StreamFeatures(client, prefix=REDIS_PREFIX)
    for n, item in enumerate(ITEMS):
        features.count(ExposureEvent("r", "u1", item, MINUTE_MS, "exposure", position=0), 0, "hap.exposure", 0, 2 * n)
        if n % 2 == 0:
            features.count(ExposureEvent("r", "u1", item, MINUTE_MS, "feedback", click=True), 0, "hap.exposure", 0,
                           2 * n + 1)
    features.set_history("u1", ITEMS[:3])
    asyncio.run(features.write_counts())  # one script per item: each in its own slot
    features.flush()  # the history's write goes to the Redis thread; the read below runs after it on that thread
    read = asyncio.run(features.read_groups([(ITEMS, 3 * MINUTE_MS, "u1", [])]))[0]
    assert features.buffer == [] and features.redis.ready, "the streams' writes to the cluster failed"
    assert [s["exp_10m"] for s in read] == [1.0] * len(ITEMS)
    assert [s["clk_10m"] for s in read] == [float(n % 2 == 0) for n in range(len(ITEMS))]

    # router: the same statistics (read per item: one script cannot span slots) and the history
    now_ms = int(time.time() * 1000)
    ItemStats(client, prefix=REDIS_PREFIX).record([(item, "exp", now_ms - 2 * MINUTE_MS) for item in ITEMS])
    cache = FeatureCache(client, prefix=REDIS_PREFIX)
    raw, state = cache.reader.read(ITEMS, now_ms)
    assert (state == OK).all() and (raw[:, EXP_10M] == 1.0).all(), "the router read other statistics than written"
    served = cache.user_features("u1")  # the history and the user's shown / clicked items, one pipeline over slots
    assert served["history"] == ITEMS[:3]
    assert served["shown"] == dict.fromkeys(ITEMS, float(MINUTE_MS)) and set(served["clicked"]) == set(ITEMS[::2])

    # learner: the writer lease and two versions; the router's holder swaps them in
    lease = WriterLease(client, prefix=REDIS_PREFIX, ttl_s=10)
    assert lease.acquire() and lease.term == 1
    lease.keep()
    store = ModelStore(client, prefix=REDIS_PREFIX, keep_versions=100, lease=lease)
    keys = ModelKeys(REDIS_PREFIX)
    assert {key_slot(k.encode()) for k in (keys.manifest, keys.lease, keys.term, keys.blob(1, "light"))} \
        == {key_slot(keys.manifest.encode())}
    holder = ModelHolder(settings.redis.client(timeout_s=0.5), prefix=REDIS_PREFIX, poll_s=0.2)
    holder.start()
    try:
        v1 = publish(client, 1, store)
        wait_for(f"the holder serving version {v1}", lambda: holder.current and holder.current.version == v1, 30)
        v2 = publish(client, 2, store)
        wait_for(f"the holder serving version {v2}", lambda: holder.current.version == v2, 10)
        assert ModelStore(client, prefix=REDIS_PREFIX).load().version == v2

        # SIGKILL the master of the model keys, once its replica has every acknowledged write
        victim = master_of(cluster, keys.manifest)
        replica = replica_of(cluster, victim)
        wait_for(f"{replica.name} caught up with {victim.name}", lambda: replicated(victim, replica), 10)
        assert victim.process.kill()
        killed = time.monotonic()

        def still_serving() -> None:
            assert holder.current.version == v2, f"the holder dropped version {v2} during the failover"
            cache.lookup([f"cold-{time.monotonic()}"], ["video"])  # never raises: defaults while unreachable

        after: list[int] = []

        def published() -> bool:
            try:
                after.append(publish(client, 3, store))
                return True
            except (redis.RedisError, OSError):
                return False

        waited = wait_for("a publish after the failover", published, FAILOVER_WAIT_S, during=still_serving)
        v3 = after[0]
        assert v3 > v2, f"version {v3} published after the failover is not above {v2}"
        assert master_of(cluster, keys.manifest) is replica, f"{replica.name} was not promoted"
        assert lease.token is not None and lease.term == 1, "the learner lost its lease in the failover"
        wait_for(f"the holder serving version {v3}", lambda: holder.current.version == v3, 10)
        assert ModelStore(client, prefix=REDIS_PREFIX).load().version == v3
        raw, state = FeatureCache(settings.redis.client(), prefix=REDIS_PREFIX).reader.read(ITEMS, now_ms)
        assert (state == OK).all() and (raw[:, EXP_10M] == 1.0).all(), "statistics lost in the failover"
        assert np.isfinite(raw[:, :FEATURES.index("age_h") + 1]).all()  # absent recency / user-by-item: NaN
        print(f"failover: publishing resumed {waited:.1f}s after the SIGKILL "
              f"({time.monotonic() - killed:.1f}s to the holder's swap)")

        # no node left: every component sees Redis down (redis.ConnectionError), as with one Redis
        lease.release()
        cluster.stop()
        rejected = REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "model_rejected"}) or 0.0
        with pytest.raises(redis.ConnectionError):
            publish(client, 4)  # the learner counts it and retries (tests/deploy/test_faults.py)
        assert not holder.refresh() and holder.current.version == v3
        assert (REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "model_rejected"}) or 0.0) == rejected
        assert FeatureCache(client, prefix=REDIS_PREFIX).lookup(["never-seen"], ["video"]).items.dense.shape[0] == 1
        # as of a later minute (not read before): the no-statistics default while Redis is down
        assert asyncio.run(features.read_groups([(ITEMS[:1], 5 * MINUTE_MS, "u1", [])]))[0][0]["exp_10m"] == 0.0

        # a client made while no node answers connects once the cluster is back (restarted from its AOF)
        late = settings.redis.client()
        with pytest.raises(redis.ConnectionError):
            late.get(keys.manifest)
        cluster.start(timeout_s=45)
        manifest = ModelStore(late, prefix=REDIS_PREFIX).manifest()
        assert manifest["version"] == v3, "the restarted cluster lost the manifest"
    finally:
        holder.stop()
        with contextlib.suppress(redis.RedisError):
            lease.release()
