"""How every component connects to Redis: one node or a Redis Cluster, AUTH password and TLS,
with bounded timeouts.

``redis://`` is one node over plain TCP, ``rediss://`` over TLS (``ca_file`` verifies the
server). ``redis+cluster://host:port[,host:port...]`` is a Redis Cluster, ``rediss+cluster://``
one over TLS: the hosts are seeds (any node of the cluster; the client discovers the others
with ``CLUSTER SLOTS`` and follows ``MOVED`` and failovers), the database can only be 0, and the
client is redis-py's :class:`redis.cluster.RedisCluster`. Keys that one command or script uses
together share a hash tag (``{...}``; see :class:`feature_store.model_store.ModelKeys`).

The password is passed in by the operator's settings (a secret) and is never printed: the
repr leaves it out and :meth:`RedisEndpoint.redacted` masks one written into the URL.

Examples
--------
>>> ep = RedisEndpoint("redis://:pw@127.0.0.1:6379/0", password="s3cret")
>>> ep.redacted(), "s3cret" in repr(ep)
('redis://:***@127.0.0.1:6379/0', False)
>>> cluster = RedisEndpoint("rediss+cluster://redis-0.redis:6379,redis-1.redis:6379")
>>> cluster.cluster, [(n.host, n.port) for n in cluster.seeds()]
(True, [('redis-0.redis', 6379), ('redis-1.redis', 6379)])
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any, TypeAlias

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import Encoder
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

TIMEOUT_S = 2.0
DEFAULT_PORT = 6379
#: the URL schemes of a Redis Cluster
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: how often a cluster command is sent again after a node failed (each time with the slot map
#: re-read from the nodes left): enough to reach a promoted replica, bounded like a timeout
CLUSTER_RETRIES = 2


class ClusterClient(RedisCluster):
    """redis-py's cluster client, made to fail like a single node's.

    It contacts the cluster at its first command, not when it is created (a single node's client
    connects lazily too), so a component started while the cluster is unreachable meets the outage
    where it expects one; and when the cluster cannot serve a command (no node answers, or no node
    serves the key's slot: a master lost with no replica to promote) it raises
    ``redis.ConnectionError``, which every component takes for "Redis is down" (defaults, buffered
    counts, retries), instead of redis-py's ``RedisClusterException``. A command whose keys span
    slots still raises ``RedisClusterException``: a bug, not an outage.

    Laziness: until the slot map was read, the instance holds only its options; the first lookup
    of an attribute :class:`RedisCluster` sets in its constructor runs that constructor (once, under
    a lock; again at the next use if it failed).
    """

    def __init__(self, **options: Any) -> None:
        state = self.__dict__
        state["_hap_options"], state["_hap_lock"], state["_hap_ready"], state["_hap_builder"] = \
            options, threading.Lock(), False, None
        # what register_script needs before any command (RedisCluster sets the same from the options)
        state["encoder"] = Encoder(options.get("encoding", "utf-8"), options.get("encoding_errors", "strict"),
                                   options.get("decode_responses", False))

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        if name.startswith("__") or state.get("_hap_ready", True) or state["_hap_builder"] == threading.get_ident():
            raise AttributeError(name)  # really missing, or looked up by the constructor itself
        with state["_hap_lock"]:
            if not state["_hap_ready"]:
                state["_hap_builder"] = threading.get_ident()
                try:
                    with _outage_as_connection_error():
                        RedisCluster.__init__(self, **state["_hap_options"])
                    state["_hap_ready"] = True
                finally:
                    state["_hap_builder"] = None
        return object.__getattribute__(self, name)

    def close(self) -> None:
        if self.__dict__.get("_hap_ready", True):  # never connect just to close
            super().close()

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _outage_as_connection_error():
            return super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def guarded(raise_on_error: bool = True) -> list[Any]:
            with _outage_as_connection_error():
                return execute(raise_on_error)

        pipe.execute = guarded  # type: ignore[method-assign]
        return pipe


#: what :meth:`RedisEndpoint.client` returns; both speak the commands the components use
RedisClient: TypeAlias = "redis.Redis | ClusterClient"


@dataclasses.dataclass(frozen=True, slots=True)
class RedisEndpoint:
    url: str
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None

    @property
    def cluster(self) -> bool:
        """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
        return self.url.split("://", 1)[0].lower() in CLUSTER_SCHEMES

    def seeds(self) -> list[ClusterNode]:
        """The nodes a cluster client starts from; ``ValueError`` names what is wrong with the URL.

        >>> RedisEndpoint("redis+cluster://127.0.0.1:7000/1").seeds()
        Traceback (most recent call last):
        ...
        ValueError: redis+cluster://127.0.0.1:7000/1: a Redis Cluster has only database 0
        """
        parts = urllib.parse.urlsplit(self.url)
        where = self.redacted()
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"{where}: a Redis Cluster has only database 0")
        if parts.query or parts.fragment:
            raise ValueError(f"{where}: a cluster URL takes no options (?...)")
        hosts = parts.netloc.rpartition("@")[2]
        if not hosts:
            raise ValueError(f"{where}: no host")
        return [_node(seed, where) for seed in hosts.split(",")]

    def client(self, timeout_s: float = TIMEOUT_S) -> RedisClient:
        """A new client (it connects at its first command); a dead server fails a call within
        ``timeout_s`` (a cluster: within a few of them, the retries) instead of hanging it."""
        options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if self.password:
            options["password"] = self.password
        tls = self.url.lower().startswith(("rediss://", "rediss+cluster://"))
        if self.ca_file and tls:
            options["ssl_ca_certs"] = self.ca_file
        if not self.cluster:
            return redis.Redis.from_url(self.url, **options)
        userinfo = urllib.parse.urlsplit(self.url).netloc.rpartition("@")[0]
        username, _, password = (urllib.parse.unquote(x) for x in userinfo.partition(":"))
        if username:
            options["username"] = username
        if password and "password" not in options:
            options["password"] = password
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CLUSTER_RETRIES)
        # without full coverage the slots of the masters left keep working while one has no master
        return ClusterClient(startup_nodes=self.seeds(), ssl=tls, retry=retry, require_full_coverage=False,
                             **options)

    def redacted(self) -> str:
        """The URL with any password in it masked, for logs and status output."""
        return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", self.url)

    def __repr__(self) -> str:
        return f"RedisEndpoint(url={self.redacted()!r}, ca_file={self.ca_file!r})"


@contextlib.contextmanager
def _outage_as_connection_error() -> Iterator[None]:
    try:
        yield
    except RedisClusterException as exc:
        unreachable = isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError, OSError))
        if isinstance(exc, SlotNotCoveredError) or unreachable:
            raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
        raise


def _node(seed: str, where: str) -> ClusterNode:
    """``host[:port]`` (an IPv6 host in brackets) as a cluster node."""
    host, colon, port = seed.rpartition(":")
    if not colon or host.endswith(":") or "]" in port:  # no port, or an IPv6 address without one
        host, port = seed, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"{where}: {seed!r} is not host:port")
    return ClusterNode(host, int(port))
