"""The Redis URL forms (one node, a Redis Cluster) without a server: parsing, refusals, the client kind,
an unreachable cluster failing as Redis down (the cluster itself: tests/scale/test_redis_cluster.py)."""

from __future__ import annotations

import time

import pytest
import redis
from redis.cluster import RedisCluster

from deploy.settings import REDIS_PREFIX, Settings
from deploy.stack.process import free_port
from feature_store.connection import RedisEndpoint
from feature_store.item_stats import ItemStats
from feature_store.lease import WriterLease
from feature_store.model_store import ModelStore


def seeds(url: str) -> list[tuple[str, int]]:
    return [(node.host, node.port) for node in RedisEndpoint(url).seeds()]


def test_cluster_urls_name_seeds_with_the_default_port_and_ipv6_hosts():
    assert seeds("redis+cluster://a:7000,b,[::1]:7002,[fe80::2]/0") == [
        ("a", 7000), ("b", 6379), ("::1", 7002), ("fe80::2", 6379)]
    assert seeds("rediss+cluster://user:p%40ss@redis.hap.svc:6379/") == [("redis.hap.svc", 6379)]
    assert RedisEndpoint("REDIS+CLUSTER://a:1").cluster and not RedisEndpoint("redis://a:1/0").cluster


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+cluster://a:7000/3", "only database 0"),
    ("redis+cluster://a:7000?ssl_cert_reqs=none", "takes no options"),
    ("redis+cluster://:secret@/", "no host"),
    ("redis+cluster://a:70x0", "is not host:port"),
])
def test_a_cluster_url_the_client_cannot_take_is_refused_with_the_reason(url, reason):
    with pytest.raises(ValueError, match=reason) as exc:
        RedisEndpoint(url).seeds()
    assert "secret" not in str(exc.value)
    with pytest.raises(SystemExit, match=f"HAP_REDIS_URL: .*{reason}"):
        Settings.load({"HAP_DATA_DIR": "/tmp/hap-test-connection", "HAP_REDIS_URL": url})


def test_the_password_of_a_cluster_url_is_masked():
    endpoint = RedisEndpoint("redis+cluster://:s3cret@a:7000,b:7001", password="env-secret")
    assert endpoint.redacted() == "redis+cluster://:***@a:7000,b:7001"
    assert "s3cret" not in repr(endpoint) and "env-secret" not in repr(endpoint)


def test_a_cluster_client_is_lazy_and_an_unreachable_cluster_is_redis_down():
    port = free_port()  # nothing listens there
    assert isinstance(RedisEndpoint(f"redis://127.0.0.1:{port}/0").client(), redis.Redis)
    client = RedisEndpoint(f"redis+cluster://127.0.0.1:{port}").client(timeout_s=0.5)
    assert isinstance(client, RedisCluster)
    # built at start-up, before any command
    store, lease = ModelStore(client, prefix=REDIS_PREFIX), WriterLease(client, prefix=REDIS_PREFIX)
    stats = ItemStats(client, prefix=REDIS_PREFIX)
    for attempt in (lambda: store.manifest(), lambda: lease.acquire(), lambda: stats.read(["i"], 0)):
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="Redis Cluster"):
            attempt()
        assert time.monotonic() - started < 5
    client.close()
