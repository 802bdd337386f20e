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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from feature_store.connection import RedisEndpoint
from feature_store.lease import LEASE_TTL_S
from feature_store.model_store import SNAPSHOT_EVERY_S, SNAPSHOT_KEEP_S
from feature_store.policies import DAMR_BUDGET
from feature_store.registry import DEFAULT_METHOD, DEFAULT_POLICY, METHODS, POLICIES
from streams.kafka.security import KafkaSecurity
from streams.kafka.topics import DEFAULT_PARTITIONS, Replication

ENDPOINTS_FILE = "endpoints.json"
#: the key of endpoints.json that records how many brokers the local stack started
BROKERS_KEY = "kafka.brokers"
BROKERS_ENV = "HAP_KAFKA_BROKERS"
LOOPBACK = "127.0.0.1"
#: the prefix of every Redis key, unless HAP_REDIS_PREFIX names another
REDIS_PREFIX = "hap:"
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
    #: the prefix of every Redis key the components write and read (the key names are in feature_store/)
    redis_prefix: str = REDIS_PREFIX
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
    #: where the streams workers' tables keep their state: ``rocksdb://`` (local disk, under the worker's
    #: data dir) or ``memory://`` (the heap; rebuilt from the changelogs at every start)
    streams_store: str = "rocksdb://"
    #: worker processes `hap streams` runs and supervises, of one group (``--workers``)
    streams_workers: int = 1
    log_level: str = "WARNING"
    #: ``text`` or ``json`` (one object per line), for every command (:mod:`deploy.logging_config`)
    log_format: str = "text"
    learner_method: str = DEFAULT_METHOD
    publish_interval_s: float = 1.0
    #: the learner's writer lease: how long a killed learner blocks its successor, and how long a
    #: starting learner waits for a held lease (None: for as long as it takes)
    learner_lease_ttl_s: float = LEASE_TTL_S
    learner_lease_wait_s: float | None = None
    #: the model versions kept for rollback beyond the last few: a snapshot every N minutes, kept H hours
    model_snapshot_every_min: float = SNAPSHOT_EVERY_S / 60
    model_snapshot_keep_h: float = SNAPSHOT_KEEP_S / 3600
    router_policy: str = DEFAULT_POLICY
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
        """Resolve settings from ``env`` (default: ``os.environ``) and the running stack.

        Every variable read here is listed in :data:`VARIABLES` (a test checks it both ways)."""
        env = os.environ if env is None else env
        plain = {var.field: _PARSERS[type(FIELD_DEFAULTS[var.field])](env, var.name, FIELD_DEFAULTS[var.field])
                 for var in VARIABLES if var.plain}
        data_dir = Path(env.get("HAP_DATA_DIR", ".hap")).absolute()
        running = read_endpoints(data_dir)
        kafka_home = env.get("HAP_KAFKA_HOME")
        brokers = _int(env, BROKERS_ENV, int(running.get(BROKERS_KEY, 1)))
        factor = _int(env, "HAP_KAFKA_REPLICATION_FACTOR", Replication.for_brokers(brokers).factor)
        local_bootstrap = ",".join(f"{LOOPBACK}:{port}" for port, _ in broker_ports(
            plain["kafka_port"], plain["kafka_controller_port"], brokers))
        return cls(
            data_dir=data_dir,
            kafka_bootstrap=env.get("HAP_KAFKA_BOOTSTRAP") or running.get("kafka.bootstrap", local_bootstrap),
            redis_url=_redis_url(env.get("HAP_REDIS_URL")
                                 or running.get("redis.url", f"redis://{LOOPBACK}:{plain['redis_port']}/0")),
            prometheus_url=env.get("HAP_PROMETHEUS_URL")
            or running.get("prometheus.url", f"http://{LOOPBACK}:{plain['prometheus_port']}"),
            kafka_home=Path(kafka_home) if kafka_home else None,
            cache_dir=Path(env.get("HAP_CACHE_DIR", FIELD_DEFAULTS["cache_dir"])),
            external_kafka="HAP_KAFKA_BOOTSTRAP" in env,
            external_redis="HAP_REDIS_URL" in env,
            kafka_security=_security(env),
            redis_password=env.get(REDIS_PASSWORD_ENV) or None,
            redis_ca_file=env.get("HAP_REDIS_CA_FILE") or None,
            grafana_url=env.get(GRAFANA_URL_ENV) or None,
            grafana_token=env.get(GRAFANA_TOKEN_ENV) or None,
            kafka_brokers=brokers,
            kafka_replication=_replication(factor, _int(
                env, "HAP_KAFKA_MIN_INSYNC_REPLICAS", Replication.for_brokers(factor).min_insync)),
            router_host=env.get("HAP_ROUTER_HOST", plain["metrics_host"]),
            learner_lease_wait_s=_float(env, "HAP_LEARNER_LEASE_WAIT_S", 0.0) or None,
            **plain,
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


#: each field's default, where it has one (what an unset plain variable gives)
FIELD_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


@dataclasses.dataclass(frozen=True, slots=True)
class Variable:
    """One ``HAP_*`` environment variable as ``docs/settings.md`` documents it.

    A variable with a ``field`` and no ``default`` in words is *plain*: :meth:`Settings.load` parses
    it as that field's type and falls back to the field's default. The others are read by hand in
    :meth:`Settings.load` (their default depends on the running stack or on another setting), and
    ``default`` says what an unset one gives.
    """

    name: str
    meaning: str
    field: str | None = None
    default: str | None = None
    #: read from the environment only, never printed, handed only to the children that need it
    secret: bool = False

    @property
    def plain(self) -> bool:
        return self.field is not None and self.default is None


def env_name(field: str) -> str:
    """The variable that sets the :class:`Settings` field ``field``, for messages and help texts
    (a name is spelled only in :data:`VARIABLES`).

    >>> env_name("kafka_bootstrap")
    'HAP_KAFKA_BOOTSTRAP'
    """
    return next(v.name for v in VARIABLES if v.field == field)


#: every ``HAP_*`` variable the settings read, in the order the reference lists them
VARIABLES: tuple[Variable, ...] = (
    # where things are
    Variable("HAP_DATA_DIR", "stack data, logs, pid files, endpoints; the learner's checkpoint and the streams "
             "workers' state", "data_dir", "`.hap`"),
    Variable("HAP_CACHE_DIR", "where the Kafka jars are cached (also read by `make setup`)", "cache_dir",
             "`~/.cache/hap`"),
    Variable("HAP_KAFKA_BOOTSTRAP", "use an existing Kafka cluster; start no broker", "kafka_bootstrap",
             "the local stack"),
    Variable("HAP_KAFKA_HOME", "use an existing Kafka install's `libs/` for the local broker", "kafka_home",
             "the jars `make setup` resolved"),
    Variable("HAP_REDIS_URL", "use an existing Redis; start none. `redis+cluster://host:port[,host:port…]` "
             "(`rediss+cluster://` with TLS) for a Redis Cluster (`docs/deploy.md`)", "redis_url", "the local stack"),
    Variable("HAP_PROMETHEUS_URL", "Prometheus queried by tests and dashboards", "prometheus_url", "the local stack"),
    Variable("HAP_TOPIC_PREFIX", "prefix of every topic", "topic_prefix"),
    Variable("HAP_REDIS_PREFIX", "prefix of every Redis key: features, item statistics, model versions, the writer "
             "lease (two pipelines can share a Redis under different prefixes)", "redis_prefix"),
    # the local stack's ports and the components' servers
    Variable("HAP_KAFKA_PORT", "local broker port (broker i: + 2i)", "kafka_port"),
    Variable("HAP_KAFKA_CONTROLLER_PORT", "local KRaft controller port (broker i: + 2i)", "kafka_controller_port"),
    Variable("HAP_REDIS_PORT", "local Redis port", "redis_port"),
    Variable("HAP_PROMETHEUS_PORT", "local Prometheus port", "prometheus_port"),
    Variable("HAP_STREAMS_METRICS_PORT", "the streams worker's metrics port, scraped by the local Prometheus",
             "streams_metrics_port"),
    Variable("HAP_LEARNER_METRICS_PORT", "the learner's metrics port, scraped by the local Prometheus",
             "learner_metrics_port"),
    Variable("HAP_ROUTER_PORT", "the router's HTTP port (API and metrics)", "router_port"),
    Variable("HAP_METRICS_HOST", "address the streams, learner and router servers bind (`0.0.0.0` for a "
             "Prometheus elsewhere)", "metrics_host"),
    Variable("HAP_ROUTER_HOST", "address of the router's HTTP server alone", "router_host", "`HAP_METRICS_HOST`"),
    # Kafka
    Variable(BROKERS_ENV, "brokers of the cluster; the local stack starts that many", "kafka_brokers",
             "1, or what `hap stack up --brokers N` started"),
    Variable("HAP_KAFKA_PARTITIONS", "partitions of every pipeline topic and changelog: chosen once "
             "(`docs/deploy.md`)", "kafka_partitions"),
    Variable("HAP_KAFKA_REPLICATION_FACTOR", "replication factor of every topic the pipeline creates",
             "kafka_replication", "min(3, brokers)"),
    Variable("HAP_KAFKA_MIN_INSYNC_REPLICAS", "`min.insync.replicas` of every topic the pipeline creates",
             "kafka_replication", "factor − 1, at least 1"),
    Variable("HAP_KAFKA_SECURITY_PROTOCOL", "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`, for every Kafka "
             "client", "kafka_security", "`PLAINTEXT`"),
    Variable("HAP_KAFKA_SASL_MECHANISM", "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`", "kafka_security", "`PLAIN`"),
    Variable("HAP_KAFKA_SASL_USERNAME", "SASL user name", "kafka_security", "unset"),
    Variable(KAFKA_PASSWORD_ENV, "SASL password", "kafka_security", "unset", secret=True),
    Variable("HAP_KAFKA_SSL_CAFILE", "CA bundle that verifies the brokers' certificates", "kafka_security",
             "the system's CAs"),
    # Redis
    Variable(REDIS_PASSWORD_ENV, "Redis AUTH password; `rediss://` URLs use TLS", "redis_password", "unset",
             secret=True),
    Variable("HAP_REDIS_CA_FILE", "CA bundle that verifies Redis' certificate", "redis_ca_file", "the system's CAs"),
    # Grafana
    Variable(GRAFANA_URL_ENV, "Grafana's URL for `hap dashboards push`", "grafana_url", "unset"),
    Variable(GRAFANA_TOKEN_ENV, "Grafana API token for `hap dashboards push`", "grafana_token", "unset",
             secret=True),
    # streams
    Variable("HAP_JOIN_WINDOW_S", "`hap streams --window`: seconds of event time after a request's last event "
             "before its group is finalized", "join_window_s"),
    Variable("HAP_LATENESS_S", "`hap streams --lateness`: allowed lateness, seconds the watermark must pass a "
             "request's window by before its group is finalized", "lateness_s"),
    Variable("HAP_WORKER_ID", "a streams worker's name: its data dir and, with static membership, its name in "
             "the group", "worker_id"),
    Variable("HAP_STREAMS_STATIC_MEMBERSHIP", "streams workers join their group as static members (`true` in "
             "`deploy/k8s`): a worker back within the session timeout keeps its partitions, and a rolling restart "
             "rebalances once per worker; every worker then needs its own `HAP_WORKER_ID`",
             "streams_static_membership"),
    Variable("HAP_STREAMS_STALL_S", "`hap streams --stall-timeout`: seconds without progress (x10 while tables "
             "recover) before the worker is replaced", "streams_stall_s"),
    Variable("HAP_STREAMS_WORKERS", "`hap streams --workers`: worker processes of one group on this host, "
             "each supervised and named `<worker id>-<n>`, with its own data dir and metrics port (the "
             "streams metrics port + n)", "streams_workers"),
    Variable("HAP_STREAMS_STORE", "where the streams workers' tables keep their state: `rocksdb://` (local disk "
             "under the worker's data dir: memory bounded whatever the rate; a restart on the same dir reads only "
             "the changelog past it) or `memory://` (the heap)", "streams_store"),
    # learner
    Variable("HAP_LEARNER_METHOD", f"`hap learner --method`: the training method, one of {_names(METHODS)}",
             "learner_method"),
    Variable("HAP_PUBLISH_INTERVAL_S", "`hap learner --publish-interval`: seconds between published versions",
             "publish_interval_s"),
    Variable("HAP_LEARNER_LEASE_TTL_S", "the learner's writer lease: how long a killed learner blocks its "
             "successor (`docs/operations.md`, the fenced learner)", "learner_lease_ttl_s"),
    Variable("HAP_LEARNER_LEASE_WAIT_S", "how long a starting learner waits for a lease another learner holds, "
             "then exits 1", "learner_lease_wait_s", "unset (or 0): as long as it takes"),
    Variable("HAP_MODEL_SNAPSHOT_EVERY_MIN", "the learner keeps a snapshot (a full version) every this many minutes "
             "for rollback, beside its last `--keep-versions`; 0: none (`docs/operations.md`, rolling back)",
             "model_snapshot_every_min"),
    Variable("HAP_MODEL_SNAPSHOT_KEEP_H", "hours the snapshots are kept (each costs a full version of Redis "
             "memory: `docs/operations.md`)", "model_snapshot_keep_h"),
    # router
    Variable("HAP_ROUTER_POLICY", f"`hap router --policy`: the serving policy, one of {_names(POLICIES)}",
             "router_policy"),
    Variable("HAP_DAMR_BUDGET", "the expressive budget (fraction of the candidates, or a count >= 1) the router "
             "serves and the learner's `damr` metric measures", "damr_budget"),
    Variable("HAP_ROUTER_WORKERS", "`hap router --workers`: processes serving the port, one core each",
             "router_workers"),
    Variable("HAP_ROUTER_DRAIN_S", "seconds the router's readiness answers 503 after SIGTERM while it still "
             "serves, before its port closes (`hap router --drain`)", "router_drain_s"),
    # the rest
    Variable("HAP_LOG_LEVEL", "log level of every `hap` command (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`), "
             "the streams worker's Faust and Kafka clients included", "log_level"),
    Variable("HAP_LOG_FORMAT", "`text`, or `json`: one JSON object per line with `time`, `level`, `logger`, "
             "`message` (and `exception`), for every command (`docs/operations.md`, \"Logs\")", "log_format"),
    Variable("HAP_SIM_RATE", "events per second `hap simulate` emits (0: as fast as it can)", "sim_rate"),
)


def settings_env(**values: object) -> dict[str, str]:
    """The environment that gives a child process these plain settings (by field name).

    >>> settings_env(topic_prefix="run1.", data_dir="/tmp/run1")
    {'HAP_TOPIC_PREFIX': 'run1.', 'HAP_DATA_DIR': '/tmp/run1'}
    """
    names = {var.field: var.name for var in VARIABLES if var.field and var.field not in _COMPOSITE}
    unknown = set(values) - set(names)
    if unknown:
        raise KeyError(f"no variable sets {', '.join(sorted(unknown))}")
    return {names[field]: str(value) for field, value in values.items()}


#: fields set from several variables (no one variable gives them)
_COMPOSITE = frozenset({"kafka_replication", "kafka_security"})


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
    """The Kafka clients' security from ``HAP_KAFKA_*``; exits with the reason when it is incomplete."""
    try:
        return KafkaSecurity(
            protocol=env.get("HAP_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
            sasl_mechanism=env.get("HAP_KAFKA_SASL_MECHANISM", "PLAIN").upper(),
            username=env.get("HAP_KAFKA_SASL_USERNAME") or None,
            password=env.get(KAFKA_PASSWORD_ENV) or None,
            ca_file=env.get("HAP_KAFKA_SSL_CAFILE") or None,
        )
    except ValueError as exc:
        raise SystemExit(f"hap: {exc} (HAP_KAFKA_SECURITY_PROTOCOL, HAP_KAFKA_SASL_*)") from None


def _replication(factor: int, min_insync: int) -> Replication:
    try:
        return Replication(factor, min_insync)
    except ValueError as exc:
        raise SystemExit(f"hap: Kafka replication: {exc}") from None


def _str(env: Mapping[str, str], key: str, default: str) -> str:
    return env.get(key, default)


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


#: how a plain variable is parsed, by the type of its field's default
_PARSERS: dict[type, Callable[[Mapping[str, str], str, Any], Any]] = {
    str: _str, int: _int, float: _float, bool: _bool}
