"""The servers of the local stack: Kafka (KRaft: one node, or a cluster of N from the same jars), Redis and
Prometheus."""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis

from deploy.settings import Settings, broker_ports, child_env, env_name
from deploy.stack.process import ManagedProcess, StackError, port_is_free
from feature_store.connection import RedisEndpoint
from streams.kafka.security import PLAINTEXT, KafkaSecurity
from streams.kafka.topics import Replication

KAFKA_HEAP = "-Xmx768m"
SCRAPE_INTERVAL = "2s"
#: a Redis Cluster node talks to the others on its port + this
CLUSTER_BUS_OFFSET = 10000
#: held while a Kafka node reads or writes the cluster id (the nodes of a cluster are prepared in threads)
_CLUSTER_ID_LOCK = threading.Lock()


class Service:
    """A server of the stack: its endpoint, how to start it and how to tell it is healthy."""

    name: str = ""
    port_setting: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.data_dir / self.name
        self.process = ManagedProcess(self.name, self.dir)

    @property
    def port(self) -> int:
        return getattr(self.settings, self.port_setting)

    def endpoint(self) -> str:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration and format storage before the first start."""

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server unless it runs; return once it is healthy."""
        self.launch()
        self.wait_healthy(timeout_s)

    def launch(self) -> None:
        """Start the server unless it runs, without waiting (the nodes of a cluster start together)."""
        if self.process.pid() is None:
            if not _port_freed(self.port, grace_s=5.0):
                raise StackError(f"port {self.port} for {self.name} is taken; {self.port_hint()}")
            self.prepare()
            self.process.start(self.argv())

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Return once the server answers; :class:`StackError` naming its log otherwise."""
        self.process.wait_ready(self.healthy, timeout_s)

    def port_hint(self) -> str:
        return f"set {env_name(self.port_setting)} to a free port"


def _voter_count(properties: str) -> int | None:
    """How many controllers a Kafka server.properties names (None: no such line).

    >>> _voter_count("node.id=1\\ncontroller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:9095\\n")
    2
    """
    for line in properties.splitlines():
        if line.startswith("controller.quorum.voters="):
            return len(line.split("=", 1)[1].split(","))
    return None


def _port_freed(port: int, grace_s: float) -> bool:
    """True once ``port`` is free, waiting up to ``grace_s`` (right after a crash the kernel may
    still hold the dead server's sockets for a moment)."""
    deadline = time.monotonic() + grace_s
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Kafka(Service):
    """Node ``node`` (0-based) of the local KRaft cluster of ``settings.kafka_brokers`` nodes, each a
    broker and a controller (the voters are all of them), in ``<data_dir>/kafka`` for node 0 and
    ``<data_dir>/kafka-<node>`` for the others. One node is the single-broker stack of earlier releases."""

    port_setting = "kafka_port"

    def __init__(self, settings: Settings, node: int = 0) -> None:
        self.node = node
        self.name = "kafka" if node == 0 else f"kafka-{node}"
        super().__init__(settings)
        self.nodes = broker_ports(settings.kafka_port, settings.kafka_controller_port, settings.kafka_brokers)
        if node >= len(self.nodes):
            raise ValueError(f"node {node} of a {len(self.nodes)}-broker stack")

    @property
    def port(self) -> int:
        return self.nodes[self.node][0]

    @property
    def controller_port(self) -> int:
        return self.nodes[self.node][1]

    @property
    def node_id(self) -> int:
        return self.node + 1

    def port_hint(self) -> str:
        if len(self.nodes) == 1:
            return super().port_hint()
        return (f"set {env_name('kafka_port')} and {env_name('kafka_controller_port')} so that broker i's ports "
                "(each + 2i) are free")

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        """True once this node answers and lists itself among the cluster's live brokers."""
        return self.node_id in kafka_brokers(self.endpoint(), self.settings.kafka_security)

    def prepare(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise StackError(f"Java 17+ is required for Kafka: install a JDK, or set {env_name('kafka_bootstrap')}")
        libs = self.settings.kafka_libs
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars not found in {libs}: run `make setup` or set {env_name('kafka_home')}")
        if not port_is_free(self.controller_port):
            raise StackError(
                f"port {self.controller_port} for the Kafka controller is taken; "
                + (f"set {env_name('kafka_controller_port')} to a free port" if len(self.nodes) == 1
                   else self.port_hint())
            )
        sec = self.settings.kafka_security
        if sec.protocol not in ("PLAINTEXT", "SASL_PLAINTEXT") or sec.sasl_mechanism != "PLAIN":
            raise StackError(f"the local broker speaks PLAINTEXT or SASL_PLAINTEXT with PLAIN, not {sec.protocol} "
                             f"{sec.sasl_mechanism}: point {env_name('kafka_bootstrap')} at a cluster that does")
        self.dir.mkdir(parents=True, exist_ok=True)
        props = self.dir / "server.properties"  # may hold the SASL password: owner-only
        if (self.dir / "data" / "meta.properties").exists() and props.exists() \
                and _voter_count(props.read_text()) not in (None, len(self.nodes)):
            raise StackError(f"the Kafka data in {self.dir} belongs to a cluster of another size than "
                             f"{len(self.nodes)} broker(s): use another {env_name('data_dir')}, "
                             "or the same --brokers as before")
        props.touch(mode=0o600)
        props.chmod(0o600)
        props.write_text(self._properties())
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level=WARN\nrootLogger.appenderRef.out.ref=out\n"
            "appender.out.type=Console\nappender.out.name=out\n"
            "appender.out.layout.type=PatternLayout\nappender.out.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
        )
        if not (self.dir / "data" / "meta.properties").exists():
            with self.process.log_file.open("ab") as log:
                done = subprocess.run(
                    [*self._java(tool=True), "kafka.tools.StorageTool", "format", f"--cluster-id={self._cluster_id()}",
                     "-c", str(self.dir / "server.properties")],
                    stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
                )
            if done.returncode != 0:
                raise StackError(f"formatting Kafka storage failed; see {self.process.log_file}")

    def argv(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.dir / "server.properties")]

    def _voters(self) -> str:
        """The line of server.properties naming every controller of the cluster."""
        return "controller.quorum.voters=" + ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(self.nodes))

    def _cluster_id(self) -> str:
        """The id every node's storage is formatted with: one per data dir, kept in ``kafka/cluster.id``
        (the nodes of a cluster are prepared side by side: one of them writes it)."""
        path = self.settings.data_dir / "kafka" / "cluster.id"
        with _CLUSTER_ID_LOCK:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
            return path.read_text().strip()

    def _java(self, tool: bool = False) -> list[str]:
        """The JVM's command line; ``tool``: a short-lived tool (the storage format), which starts in half
        the time and CPU with the client compiler only and the serial collector (the broker keeps G1 and
        the full JIT)."""
        return [
            "java", KAFKA_HEAP, *(("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC") if tool else ("-XX:+UseG1GC",)),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp", f"{self.settings.kafka_libs}/*",
        ]

    def _properties(self) -> str:
        port, ctl, sec = self.port, self.controller_port, self.settings.kafka_security
        # internal topics and topics created by other clients: replicated like the pipeline's
        internal = Replication.for_brokers(len(self.nodes))
        replication = self.settings.kafka_replication
        listener = sec.protocol
        sasl = [
            f"inter.broker.listener.name={listener}", "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            f"listener.name.{listener.lower()}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain."
            f'PlainLoginModule required username="{sec.username}" password="{sec.password}" '
            f'user_{sec.username}="{sec.password}";',
        ] if sec.sasl else []
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            self._voters(),
            f"listeners={listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctl}",
            f"advertised.listeners={listener}://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
            *sasl,
            f"log.dirs={self.dir / 'data'}",
            f"num.partitions={self.settings.kafka_partitions}",
            f"default.replication.factor={replication.factor}",
            f"min.insync.replicas={replication.min_insync}",
            f"offsets.topic.replication.factor={internal.factor}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={internal.factor}",
            f"transaction.state.log.min.isr={internal.min_insync}",
            f"share.coordinator.state.topic.replication.factor={internal.factor}",
            f"share.coordinator.state.topic.min.isr={internal.min_insync}",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=24",
            "",
        ])


class Redis(Service):
    name = "redis"
    port_setting = "redis_port"

    def endpoint(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def healthy(self) -> bool:
        return redis_answers(RedisEndpoint(self.endpoint(), self.settings.redis_password))

    def prepare(self) -> None:
        # the password goes in a file only its owner reads, never on the command line (ps shows argv)
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        password = self.settings.redis_password
        conf.write_text(f"requirepass {password}\n" if password else "")

    def argv(self) -> list[str]:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(server).exists():
            raise StackError(f"redis-server is not installed: run `make setup` or set {env_name('redis_url')}")
        # append-only file, fsync every second: a restarted Redis keeps models and statistics
        return [
            server, str(self.dir / "redis.conf"), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--protected-mode", "yes",
            # bounded: a full Redis fails writes (counted and retried by every writer) rather than
            # evicting, which could drop a blob of the version being served
            "--maxmemory", "1gb", "--maxmemory-policy", "noeviction",
        ]


class RedisClusterNode(Redis):
    """Node ``node`` of a local Redis Cluster (see :class:`LocalRedisCluster`): ``redis-server`` in
    cluster mode on ``port`` (its cluster bus on ``port + 10000``), append-only like the stack's
    Redis, in ``<data_dir>/redis-cluster-<node>``; ``node_timeout_ms`` is how long the others wait
    before they take it for failed and promote its replica."""

    def __init__(self, settings: Settings, node: int, port: int, node_timeout_ms: int = 2000) -> None:
        self.node, self.name, self._port, self.node_timeout_ms = node, f"redis-cluster-{node}", port, node_timeout_ms
        super().__init__(settings)

    @property
    def port(self) -> int:
        return self._port

    def port_hint(self) -> str:
        return f"choose cluster ports whose bus ports (+{CLUSTER_BUS_OFFSET}) are free too"

    def prepare(self) -> None:
        super().prepare()
        password = self.settings.redis_password
        if password:  # a replica authenticates to its master with the same password
            conf = self.dir / "redis.conf"
            conf.write_text(conf.read_text() + f"masterauth {password}\n")

    def argv(self) -> list[str]:
        return [*super().argv(), "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms)]


class LocalRedisCluster:
    """A Redis Cluster on this machine: one :class:`RedisClusterNode` per port of ``ports``, formed by
    ``redis-cli --cluster create`` with ``replicas`` replicas per master (six ports, one replica: three
    masters, three replicas). For tests and trying failovers; ``url`` is its Redis URL setting.

    Examples
    --------
    >>> cluster = LocalRedisCluster(Settings.load(), [7000, 7001, 7002, 7003, 7004, 7005])  # doctest: +SKIP
    >>> cluster.start(); cluster.url                                   # doctest: +SKIP
    'redis+cluster://127.0.0.1:7000,127.0.0.1:7001,...'
    >>> cluster.stop()                                                 # doctest: +SKIP
    """

    def __init__(self, settings: Settings, ports: list[int], replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.settings, self.replicas = settings, replicas
        self.nodes = [RedisClusterNode(settings, i, port, node_timeout_ms) for i, port in enumerate(ports)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, form the cluster unless it was formed before (a restart), and return once
        every node reports ``cluster_state:ok`` and knows all the others; :class:`StackError` otherwise."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_healthy(timeout_s)
        if not any(int(cluster_info(node)["cluster_slots_assigned"]) for node in self.nodes):
            self._create(timeout_s)  # a restart finds its slots in nodes.conf and re-forms by itself
        self.nodes[0].process.wait_ready(self.formed, timeout_s)

    def formed(self) -> bool:
        """True when every live node says ``cluster_state:ok`` and sees every node, each a master with
        slots or a replica (``redis-cli`` makes the replicas after the slots are assigned)."""
        try:
            views = [(cluster_info(node), node_command(node, "CLUSTER NODES"))
                     for node in self.nodes if node.process.pid() is not None]
        except (redis.RedisError, OSError):
            return False
        return bool(views) and all(
            info["cluster_state"] == "ok" and len(nodes) == len(self.nodes)
            and all(n["slots"] or "slave" in n["flags"] for n in nodes.values()) for info, nodes in views)

    def stop(self) -> list[str]:
        """Stop every node this cluster started; return their names."""
        return [node.name for node in self.nodes if node.process.stop()]

    def _create(self, timeout_s: float) -> None:
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        if not Path(cli).exists():
            raise StackError("redis-cli is not installed: run `make setup`")
        env = child_env()
        if self.settings.redis_password:
            env["REDISCLI_AUTH"] = self.settings.redis_password  # never on the command line
        log = self.settings.data_dir / "redis-cluster-create.log"
        with log.open("ab") as out:
            done = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, check=False,
                timeout=timeout_s)
        if done.returncode != 0:
            raise StackError(f"forming the Redis Cluster failed; see {log}")


def node_command(node: Redis, *args: str) -> Any:
    """The reply of one node to one command (``CLUSTER INFO``, ``CLUSTER NODES``, ``INFO replication``,
    parsed by redis-py), on a connection of its own with the stack's password."""
    with redis.Redis(host="127.0.0.1", port=node.port, password=node.settings.redis_password,
                     socket_timeout=1, socket_connect_timeout=1) as client:
        return client.execute_command(*args)


def cluster_info(node: Redis) -> dict[str, str]:
    """``CLUSTER INFO`` of one node (``cluster_state``, ``cluster_slots_assigned``, ...)."""
    return dict(node_command(node, "CLUSTER INFO"))


def cluster_ports(count: int, low: int = 12000, high: int = 22000) -> list[int]:
    """``count`` ports in ``[low, high)`` that are free with their cluster bus ports (+10000), all below
    the ephemeral range (so no client socket takes one meanwhile); starting at a random place."""
    start, ports = random.randrange(low, high), []
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port_is_free(port) and port_is_free(port + CLUSTER_BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise StackError(f"not {count} free ports with free bus ports in {low}-{high}")


class Prometheus(Service):
    name = "prometheus"
    port_setting = "prometheus_port"

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return http_ok(f"{self.endpoint()}/-/ready")

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        targets = self.dir / "targets.json"
        if not targets.exists() or '"component"' not in targets.read_text():  # none yet, or unlabelled (older)
            s = self.settings
            write_targets(self.settings.data_dir, {
                "streams": f"127.0.0.1:{s.streams_metrics_port}", "learner": f"127.0.0.1:{s.learner_metrics_port}",
                "router": f"127.0.0.1:{s.router_port}"})
        from deploy.dashboards.alerts import JOB, prometheus_rules
        from deploy.dashboards.export import to_yaml

        rules = self.dir / "hap.rules.yml"  # the alerts of deploy/prometheus/hap.rules.yml
        rules.write_text(to_yaml(prometheus_rules()))
        (self.dir / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n"
            f"rule_files: ['{rules}']\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    file_sd_configs:\n"
            f"      - files: ['{targets}']\n        refresh_interval: 2s\n"
        )

    def argv(self) -> list[str]:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise StackError("prometheus is not installed: run `make setup`")
        return [
            binary, f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=2d",
        ]


def write_targets(data_dir: Path, targets: dict[str, str]) -> None:
    """Set the metrics endpoints (component -> ``host:port``) the stack's Prometheus scrapes, each
    labelled with its ``component`` (picked up within seconds)."""
    path = data_dir / "prometheus" / "targets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [target], "labels": {"stack": str(data_dir), "component": component}}
                               for component, target in targets.items()]))
    tmp.replace(path)


def kafka_answers(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> bool:
    """True when the broker answers a metadata request."""
    return bool(kafka_brokers(bootstrap, security))


def kafka_brokers(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> set[int]:
    """The node ids of the live brokers the cluster at ``bootstrap`` reports; empty when it does not answer."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # a short bootstrap with a short reconnect backoff: kafka-python's defaults (a 30 s bootstrap, the
    # backoff growing to 30 s) hold one probe of a broker that is still starting, or that refuses these
    # credentials, for 30 s, long after the broker answers (older clients have no bootstrap timeout)
    quick = {k: v for k, v in (("bootstrap_timeout_ms", 3000), ("reconnect_backoff_max_ms", 250))
             if k in KafkaAdminClient.DEFAULT_CONFIG}
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **quick,
                                 **security.client_options())
    except (KafkaError, ValueError, OSError):
        return set()
    try:
        return {b["broker_id"] for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")}
    except (KafkaError, OSError):
        return set()
    finally:
        admin.close()


def redis_answers(endpoint: RedisEndpoint) -> bool:
    """True when Redis answers PING (with the endpoint's credentials)."""
    import redis

    try:
        return bool(endpoint.client(timeout_s=1).ping())
    except (redis.RedisError, OSError):
        return False


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
