"""Three brokers: `hap stack up --brokers 3` starts a KRaft cluster from the same jars; the
pipeline's topics and changelogs are created with replication factor 3 and min ISR 2 (checked
through the admin client); a broker SIGKILLed mid-produce loses no acknowledged record.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from deploy.settings import Settings
from deploy.stack.process import port_is_free
from deploy.stack.services import Kafka
from streams.kafka.topics import Replication, create_missing, pipeline_topics, worker_topics

BROKERS = 3


def hap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _free_base() -> int:
    """A port p such that p .. p + 2 * BROKERS are free: broker i on p + 2i, its controller on p + 2i + 1,
    Redis on p + 2 * BROKERS. Below the kernel's ephemeral range (32768 up), so that no outgoing
    connection takes one of them between this check and the servers' start."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32000)
        if all(port_is_free(base + i) for i in range(2 * BROKERS + 1)):
            return base
    raise RuntimeError("no run of free ports found")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Settings]]:
    """A three-broker stack started and stopped by the CLI; (its environment, its settings)."""
    if os.environ.get("HAP_KAFKA_BOOTSTRAP"):
        pytest.skip("HAP_KAFKA_BOOTSTRAP is set: this test starts brokers of its own")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAP_") or k == "HAP_CACHE_DIR"}
    base = _free_base()
    env.update(HAP_DATA_DIR=str(tmp_path_factory.mktemp("brokers")), HAP_KAFKA_PORT=str(base),
               HAP_KAFKA_CONTROLLER_PORT=str(base + 1), HAP_REDIS_PORT=str(base + 2 * BROKERS))
    up = hap(env, "stack", "up", "--brokers", str(BROKERS), "--no-prometheus")
    try:
        assert up.returncode == 0, up.stderr
        yield env, Settings.load(env)
    finally:
        down = hap(env, "stack", "down", "--no-prometheus")
        assert down.returncode == 0, down.stderr
    # the data dir holds a three-node cluster: a single-broker `up` on it is refused, nothing started
    single = hap(env, "stack", "up", "--no-prometheus")
    assert single.returncode == 2 and "another size than 1 broker" in single.stderr, single.stderr


def test_stack_records_three_brokers(cluster):
    env, settings = cluster
    assert settings.kafka_brokers == BROKERS
    assert settings.kafka_bootstrap == ",".join(f"127.0.0.1:{int(env['HAP_KAFKA_PORT']) + 2 * i}"
                                                for i in range(BROKERS))
    assert settings.kafka_replication == Replication(3, 2)
    status = json.loads(hap(env, "stack", "status", "--json", "--no-prometheus").stdout)
    assert [status[n]["healthy"] for n in ("kafka", "kafka-1", "kafka-2")] == [True] * BROKERS


def test_topics_and_changelogs_are_created_with_rf3_min_isr2(cluster):
    _, settings = cluster
    specs = {**pipeline_topics("rf.", settings.kafka_partitions, settings.kafka_replication),
             **worker_topics("hap-streams-rf", ["pending", "finalized"], settings.kafka_partitions,
                             settings.kafka_replication)}
    assert set(create_missing(settings.kafka_bootstrap, specs)) == set(specs)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        # the broker answering may not have the new topics' metadata yet (it spreads through the cluster
        # asynchronously: once CI saw rf.ranking with no partitions right after its creation)
        deadline = time.monotonic() + 30
        while True:
            described = {t["name"]: t["partitions"] for t in admin.describe_topics(list(specs))}
            if all(described.get(name) for name in specs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in specs])["topic"]
    finally:
        admin.close()
    for name, spec in specs.items():
        assert len(described[name]) == spec.partitions, name
        assert all(len(p["replica_nodes"]) == len(p["isr_nodes"]) == BROKERS for p in described[name]), name
        assert configs[name]["min.insync.replicas"]["value"] == "2", name
    # co-partitioned: the joined inputs and the tables' changelogs have the same count
    assert len(described["rf.ranking"]) == len(described["hap-streams-rf-pending-changelog"]) \
        == settings.kafka_partitions


def test_hap_streams_creates_its_topics_and_changelogs_replicated(cluster, tmp_path):
    """The worker itself, on the stack's settings alone: every topic it uses, its tables' changelogs
    included, has 3 replicas and min ISR 2."""
    env, settings = cluster
    env = {**env, "HAP_TOPIC_PREFIX": "wk.", "HAP_STREAMS_METRICS_PORT": str(_free_base())}
    worker = subprocess.Popen([sys.executable, "-m", "deploy.cli", "streams"], env=env, start_new_session=True,
                              stdout=open(tmp_path / "streams.log", "wb"), stderr=subprocess.STDOUT)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        def created() -> list[str]:
            return [t for t in admin.list_topics() if t.startswith("wk.") or t.startswith("hap-streams-wk-")]

        _wait(lambda: sum(t.endswith("-changelog") for t in created()) >= 4 and len(created()) >= 10, 120,
              "the worker's topics: " + (tmp_path / "streams.log").read_text()[-2000:])
        topics = created()
        described = {t["name"]: t["partitions"] for t in admin.describe_topics(topics)}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])["topic"]
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(30)
        admin.close()
    for name in topics:
        assert {len(p["replica_nodes"]) for p in described[name]} == {BROKERS}, name
        assert configs[name]["min.insync.replicas"]["value"] == "2", name


def test_sigkill_of_a_broker_mid_produce_loses_nothing_acknowledged(cluster):
    env, settings = cluster
    topic = "kill.samples"
    create_missing(settings.kafka_bootstrap, {topic: pipeline_topics("kill.", settings.kafka_partitions,
                                                                     settings.kafka_replication)["kill.samples"]})
    acked: list[bytes] = []
    failed: list[BaseException] = []
    killed_at = threading.Event()
    acked_after_kill = Counter()
    stop = threading.Event()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                             retries=2**31 - 1, delivery_timeout_ms=120_000, request_timeout_ms=10_000,
                             linger_ms=5)

    def on_ack(value: bytes) -> None:
        acked.append(value)
        if killed_at.is_set():
            acked_after_kill["n"] += 1

    def produce() -> None:
        n = 0
        while not stop.is_set():
            value = f"record-{n}".encode()
            future = producer.send(topic, key=str(n).encode(), value=value)
            future.add_callback(lambda _meta, v=value: on_ack(v))
            future.add_errback(failed.append)
            n += 1
            time.sleep(0.0005)
        producer.flush(120)

    sender = threading.Thread(target=produce, daemon=True)
    sender.start()
    _wait(lambda: len(acked) >= 2000, 60, "2000 records acknowledged before the kill")
    victim = _busiest_leader(settings.kafka_bootstrap, topic, settings)
    assert victim.process.kill(), f"{victim.name} was not running"
    killed_at.set()
    _wait(lambda: acked_after_kill["n"] >= 2000, 120, "2000 records acknowledged after the kill")
    stop.set()
    sender.join(180)
    producer.close(30)
    assert not sender.is_alive()
    assert failed == [], failed[:3]

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=15_000)
    parts = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
    consumer.assign(parts)
    end = consumer.end_offsets(parts)
    seen = set()
    for message in consumer:
        seen.add(message.value)
        if all(consumer.position(p) >= end[p] for p in parts):
            break
    consumer.close()
    lost = set(acked) - seen
    assert not lost, f"{len(lost)} acknowledged records lost of {len(acked)}, e.g. {sorted(lost)[:3]}"


def _busiest_leader(bootstrap: str, topic: str, settings: Settings) -> Kafka:
    """The node leading most partitions of ``topic``: killing it moves leadership mid-produce."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        leaders = Counter(p["leader_id"] for p in admin.describe_topics([topic])[0]["partitions"])
    finally:
        admin.close()
    node_id = leaders.most_common(1)[0][0]
    return Kafka(settings, node_id - 1)


def _wait(check, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_replication_default_follows_the_brokers(tmp_path: Path):
    """Unit check of the settings' defaults: what the cluster holds, and the explicit settings win."""
    base = {"HAP_DATA_DIR": str(tmp_path)}
    assert Settings.load(base).kafka_replication == Replication(1, 1)
    assert Settings.load({**base, "HAP_KAFKA_BROKERS": "2"}).kafka_replication == Replication(2, 1)
    assert Settings.load({**base, "HAP_KAFKA_BROKERS": "5"}).kafka_replication == Replication(3, 2)
    explicit = Settings.load({**base, "HAP_KAFKA_REPLICATION_FACTOR": "3", "HAP_KAFKA_MIN_INSYNC_REPLICAS": "3"})
    assert explicit.kafka_replication == Replication(3, 3)
    with pytest.raises(SystemExit, match="min.insync.replicas"):
        Settings.load({**base, "HAP_KAFKA_MIN_INSYNC_REPLICAS": "2"})


def test_down_stops_every_node_after_a_failed_up(tmp_path: Path):
    """`up --brokers 3` that fails on its third node leaves two running and records no count; a plain
    `down` still stops every node of the data dir."""
    import socket

    base = _free_base()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAP_") or k == "HAP_CACHE_DIR"}
    env.update(HAP_DATA_DIR=str(tmp_path / "stack"), HAP_KAFKA_PORT=str(base),
               HAP_KAFKA_CONTROLLER_PORT=str(base + 1), HAP_REDIS_PORT=str(base + 2 * BROKERS))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 4))  # the third broker's port
        taken.listen()
        up = hap(env, "stack", "up", "--brokers", str(BROKERS), "--no-prometheus")
    assert up.returncode == 2 and f"port {base + 4} for kafka-2 is taken" in up.stderr, up.stderr
    nodes = [Kafka(Settings.load({**env, "HAP_KAFKA_BROKERS": str(BROKERS)}), n) for n in range(BROKERS)]
    assert [n.process.pid() is not None for n in nodes] == [True, True, False]
    down = hap(env, "stack", "down", "--no-prometheus")
    assert down.returncode == 0 and "kafka-1" in down.stdout, down.stdout
    assert [n.process.pid() for n in nodes] == [None] * BROKERS
