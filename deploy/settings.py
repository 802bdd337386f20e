"""One settings object for every `hap` command, resolved from `HAP_*` environment variables.

Resolution order for an endpoint: an explicit environment variable (``HAP_KAFKA_BOOTSTRAP``,
``HAP_REDIS_URL``, ``HAP_PROMETHEUS_URL``), then the endpoints file written by ``hap stack up``
into the data dir (so no flag is needed after ``up``), then the default local port.

Secrets (:data:`SECRETS`: the Kafka SASL password, the Redis password, the Grafana API token) are
read from the environment only, never from flags or files, and never appear in a repr, a log line
or ``stack status``. A child process gets only the secrets it needs (:func:`child_env`): the
stack's servers none (their credentials are in files only their owner reads), a component those
of the services it talks to.

Kafka durability: ``HAP_KAFKA_BROKERS`` is the size of the cluster (the local stack starts that
many, ``hap stack up --brokers N``); the replication factor and ``min.insync.replicas`` of every
topic default to what it holds (1/1 on one broker, 2/1 on two, 3/2 on three or more) and are set
with ``HAP_KAFKA_REPLICATION_FACTOR`` and ``HAP_KAFKA_MIN_INSYNC_REPLICAS``; ``HAP_KAFKA_PARTITIONS``
is the partition count of every pipeline topic and changelog, chosen once (see
:mod:`streams.kafka.topics`).

Redis: ``HAP_REDIS_URL`` names one node (``redis://``, ``rediss://``) or a Redis Cluster
(``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://``; see
:mod:`feature_store.connection`); a URL the client cannot take stops every command with the reason.

Examples
--------
>>> s = Settings.load({"HAP_DATA_DIR": "/tmp/hap-doc", "HAP_KAFKA_PORT": "19092"})
>>> s.kafka_bootstrap
'127.0.0.1:19092'
>>> s.topic("samples")
'hap.samples'
>>> three = Settings.load({"HAP_DATA_DIR": "/tmp/hap-doc", "HAP_KAFKA_BROKERS": "3"})
>>> three.kafka_bootstrap, three.kafka_replication
('127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096', Replication(factor=3, min_insync=2))
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from feature_store.connection import RedisEndpoint
from feature_store.lease import LEASE_TTL_S
from feature_store.policies import DAMR_BUDGET
from streams.kafka.security import KafkaSecurity
from streams.kafka.topics import DEFAULT_PARTITIONS, Replication

ENDPOINTS_FILE = "endpoints.json"
#: the key of endpoints.json that records how many brokers the local stack started
BROKERS_KEY = "kafka.brokers"
BROKERS_ENV = "HAP_KAFKA_BROKERS"
LOOPBACK = "127.0.0.1"
KAFKA_VERSION = "4.1.1"

KAFKA_PASSWORD_ENV = "HAP_KAFKA_SASL_PASSWORD"
REDIS_PASSWORD_ENV = "HAP_REDIS_PASSWORD"
GRAFANA_TOKEN_ENV = "HAP_GRAFANA_TOKEN"
GRAFANA_URL_ENV = "HAP_GRAFANA_URL"
#: every environment variable that holds a secret
SECRETS = (KAFKA_PASSWORD_ENV, REDIS_PASSWORD_ENV, GRAFANA_TOKEN_ENV)
#: the secrets each `hap` command run as a child process needs (a command not listed: Kafka's and Redis')
COMMAND_SECRETS: dict[str, tuple[str, ...]] = {
    "streams": (KAFKA_PASSWORD_ENV, REDIS_PASSWORD_ENV),
    "learner": (KAFKA_PASSWORD_ENV, REDIS_PASSWORD_ENV),
    "router": (REDIS_PASSWORD_ENV,),
    "simulate": (KAFKA_PASSWORD_ENV,),
    "models": (REDIS_PASSWORD_ENV,),
    "dashboards": (GRAFANA_TOKEN_ENV,),
}


def child_env(needs: Iterable[str] = (), base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) without the secrets not in ``needs``: the environment of a child.

    >>> child_env(["HAP_REDIS_PASSWORD"], {"PATH": "/bin", "HAP_REDIS_PASSWORD": "r", "HAP_GRAFANA_TOKEN": "g"})
    {'PATH': '/bin', 'HAP_REDIS_PASSWORD': 'r'}
    """
    keep = set(needs)
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in SECRETS or k in keep}


def command_env(command: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the child process `hap <command>`: only the secrets that command needs."""
    return child_env(COMMAND_SECRETS.get(command, (KAFKA_PASSWORD_ENV, REDIS_PASSWORD_ENV)), base)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Typed settings shared by the CLI, the stack and the test fixtures.

    Components never read this object: the CLI passes its fields to their constructors.
    """

    data_dir: Path
    kafka_bootstrap: str
    redis_url: str
    prometheus_url: str
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    prometheus_port: int = 9090
    topic_prefix: str = "hap."
    kafka_home: Path | None = None
    cache_dir: Path = Path.home() / ".cache" / "hap"
    external_kafka: bool = False
    external_redis: bool = False
    streams_metrics_port: int = 9101
    learner_metrics_port: int = 9102
    router_port: int = 8080
    kafka_security: KafkaSecurity = KafkaSecurity()
    redis_password: str | None = dataclasses.field(default=None, repr=False)
    redis_ca_file: str | None = None
    grafana_url: str | None = None
    grafana_token: str | None = dataclasses.field(default=None, repr=False)
    kafka_brokers: int = 1
    kafka_partitions: int = DEFAULT_PARTITIONS
    kafka_replication: Replication = Replication()
    #: the address the components' metrics servers bind (``0.0.0.0`` where Prometheus runs elsewhere)
    metrics_host: str = LOOPBACK
    #: the address the router's HTTP server (API and metrics) binds; default: ``metrics_host``
    router_host: str = LOOPBACK
    #: defaults of the components' flags (a flag given on the command line wins)
    join_window_s: float = 30.0
    lateness_s: float = 5.0
    worker_id: str = "0"
    #: streams workers join their group as static members named by ``worker_id`` (Kafka's
    #: ``group.instance.id``): a worker back within the session timeout keeps its partitions
    #: without a rebalance, and one that stops leaves none (a rolling restart rebalances once per
    #: worker, not twice). Every worker of the group needs its own ``HAP_WORKER_ID`` then.
    streams_static_membership: bool = False
    streams_stall_s: float = 30.0
    log_level: str = "WARNING"
    learner_method: str = "ghcl"
    publish_interval_s: float = 1.0
    #: the learner's writer lease: how long a killed learner blocks its successor, and how long a
    #: starting learner waits for a held lease (None: for as long as it takes)
    learner_lease_ttl_s: float = LEASE_TTL_S
    learner_lease_wait_s: float | None = None
    router_policy: str = "damr"
    #: the expressive budget the router serves and the learner's validation measures
    damr_budget: float = DAMR_BUDGET
    router_workers: int = 1
    #: after SIGTERM a router answers ``/readyz`` with 503 and keeps serving this long before it
    #: closes its port (load balancers take it out of rotation meanwhile); see ``router.drain``
    router_drain_s: float = 5.0
    #: events per second `hap simulate` emits (0: as fast as it can)
    sim_rate: float = 2000.0

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Resolve settings from ``env`` (default: ``os.environ``) and the running stack."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("HAP_DATA_DIR", ".hap")).absolute()
        ports = {
            name: _int(env, f"HAP_{name.upper()}", default)
            for name, default in (
                ("kafka_port", 9092),
                ("kafka_controller_port", 9093),
                ("redis_port", 6379),
                ("prometheus_port", 9090),
                ("streams_metrics_port", 9101),
                ("learner_metrics_port", 9102),
                ("router_port", 8080),
            )
        }
        running = read_endpoints(data_dir)
        kafka_home = env.get("HAP_KAFKA_HOME")
        brokers = _int(env, BROKERS_ENV, int(running.get(BROKERS_KEY, 1)))
        factor = _int(env, "HAP_KAFKA_REPLICATION_FACTOR", Replication.for_brokers(brokers).factor)
        metrics_host = env.get("HAP_METRICS_HOST", LOOPBACK)
        local_bootstrap = ",".join(f"{LOOPBACK}:{port}" for port, _ in broker_ports(
            ports["kafka_port"], ports["kafka_controller_port"], brokers))
        return cls(
            data_dir=data_dir,
            kafka_bootstrap=env.get("HAP_KAFKA_BOOTSTRAP") or running.get("kafka.bootstrap", local_bootstrap),
            redis_url=_redis_url(env.get("HAP_REDIS_URL")
                                 or running.get("redis.url", f"redis://127.0.0.1:{ports['redis_port']}/0")),
            prometheus_url=env.get("HAP_PROMETHEUS_URL")
            or running.get("prometheus.url", f"http://127.0.0.1:{ports['prometheus_port']}"),
            topic_prefix=env.get("HAP_TOPIC_PREFIX", "hap."),
            kafka_home=Path(kafka_home) if kafka_home else None,
            cache_dir=Path(env.get("HAP_CACHE_DIR", Path.home() / ".cache" / "hap")),
            external_kafka="HAP_KAFKA_BOOTSTRAP" in env,
            external_redis="HAP_REDIS_URL" in env,
            kafka_security=_security(env),
            redis_password=env.get(REDIS_PASSWORD_ENV) or None,
            redis_ca_file=env.get("HAP_REDIS_CA_FILE") or None,
            grafana_url=env.get(GRAFANA_URL_ENV) or None,
            grafana_token=env.get(GRAFANA_TOKEN_ENV) or None,
            kafka_brokers=brokers,
            kafka_partitions=_int(env, "HAP_KAFKA_PARTITIONS", DEFAULT_PARTITIONS),
            kafka_replication=_replication(factor, _int(
                env, "HAP_KAFKA_MIN_INSYNC_REPLICAS", Replication.for_brokers(factor).min_insync)),
            metrics_host=metrics_host,
            router_host=env.get("HAP_ROUTER_HOST", metrics_host),
            join_window_s=_float(env, "HAP_JOIN_WINDOW_S", 30.0),
            lateness_s=_float(env, "HAP_LATENESS_S", 5.0),
            worker_id=env.get("HAP_WORKER_ID", "0"),
            streams_static_membership=_bool(env, "HAP_STREAMS_STATIC_MEMBERSHIP", False),
            streams_stall_s=_float(env, "HAP_STREAMS_STALL_S", 30.0),
            log_level=env.get("HAP_LOG_LEVEL", "WARNING"),
            learner_method=env.get("HAP_LEARNER_METHOD", "ghcl"),
            publish_interval_s=_float(env, "HAP_PUBLISH_INTERVAL_S", 1.0),
            learner_lease_ttl_s=_float(env, "HAP_LEARNER_LEASE_TTL_S", LEASE_TTL_S),
            learner_lease_wait_s=_float(env, "HAP_LEARNER_LEASE_WAIT_S", 0.0) or None,
            router_policy=env.get("HAP_ROUTER_POLICY", "damr"),
            damr_budget=_float(env, "HAP_DAMR_BUDGET", DAMR_BUDGET),
            router_workers=_int(env, "HAP_ROUTER_WORKERS", 1),
            router_drain_s=_float(env, "HAP_ROUTER_DRAIN_S", 5.0),
            sim_rate=_float(env, "HAP_SIM_RATE", 2000.0),
            **ports,
        )

    @property
    def redis(self) -> RedisEndpoint:
        """The Redis endpoint with its credentials (see :class:`feature_store.connection.RedisEndpoint`)."""
        return RedisEndpoint(self.redis_url, self.redis_password, self.redis_ca_file)

    def topic(self, name: str) -> str:
        """Full topic name for ``name`` (``ranking``, ``exposure``, ``items``, ``samples``, ``dlq``)."""
        return f"{self.topic_prefix}{name}"

    @property
    def kafka_libs(self) -> Path:
        """Directory of the broker jars resolved by ``make setup`` (or ``$HAP_KAFKA_HOME/libs``)."""
        if self.kafka_home is not None:
            return self.kafka_home / "libs"
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def broker_ports(kafka_port: int, controller_port: int, brokers: int) -> list[tuple[int, int]]:
    """(client port, controller port) of each broker of the local stack: broker ``i`` listens on
    ``kafka_port + 2i`` and ``controller_port + 2i``.

    >>> broker_ports(9092, 9093, 3)
    [(9092, 9093), (9094, 9095), (9096, 9097)]
    """
    return [(kafka_port + 2 * i, controller_port + 2 * i) for i in range(brokers)]


def read_endpoints(data_dir: Path) -> dict[str, str]:
    """Endpoints recorded by ``hap stack up`` in ``data_dir``; empty when no stack ran there."""
    path = data_dir / ENDPOINTS_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _redis_url(url: str) -> str:
    """``url`` once it is a URL the Redis client takes (a cluster's: seeds, database 0); exits otherwise.

    >>> _redis_url("redis+cluster://127.0.0.1:7000/2")
    Traceback (most recent call last):
    ...
    SystemExit: hap: HAP_REDIS_URL: redis+cluster://127.0.0.1:7000/2: a Redis Cluster has only database 0
    """
    endpoint = RedisEndpoint(url)
    try:
        if endpoint.cluster:
            endpoint.seeds()
    except ValueError as exc:
        raise SystemExit(f"hap: HAP_REDIS_URL: {exc}") from None
    return url


def _security(env: Mapping[str, str]) -> KafkaSecurity:
    try:
        return KafkaSecurity.from_env(env)
    except ValueError as exc:
        raise SystemExit(f"hap: {exc}") from None


def _replication(factor: int, min_insync: int) -> Replication:
    try:
        return Replication(factor, min_insync)
    except ValueError as exc:
        raise SystemExit(f"hap: Kafka replication: {exc}") from None


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"hap: {key}={raw!r} is not an integer") from None


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise SystemExit(f"hap: {key}={raw!r} is not a boolean (true or false)")


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"hap: {key}={raw!r} is not a number") from None
