"""Shared stack fixtures: a real Kafka broker (KRaft), Redis and Prometheus on free ports.

Each server starts on first use (session scope) under a temporary data dir and is stopped
at the end of the session. With ``HAP_KAFKA_BOOTSTRAP`` / ``HAP_REDIS_URL`` set, the tests
use those services instead and start nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from deploy.pipeline import Component
from deploy.settings import Settings
from deploy.stack.process import free_port
from deploy.stack.services import Kafka, Prometheus, Redis, Service
from streams.kafka.topics import ensure_topics

os.environ.setdefault("PYTHONUNBUFFERED", "1")

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind_small_subset"

#: fixtures that start a service (or the whole stack, ``cli_env``): a test that uses one, directly or through
#: another fixture, is an integration test, and ``make test-fast`` leaves it out
STACK_FIXTURES = frozenset({"kafka_service", "redis_service", "own_redis", "prometheus_url", "cli_env"})
#: tests of several nodes (brokers, Redis Cluster, workers, routers), each starting its own
SCALE_TESTS = Path(__file__).parent / "scale"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that takes a stack fixture, or runs a cluster of its own, ``integration``: the marker
    follows from what the test uses, so it cannot fall behind the tests."""
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.path.is_relative_to(SCALE_TESTS):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def hap_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of the test stack: a private data dir and free ports."""
    env = {k: v for k, v in os.environ.items() if k in ("HAP_KAFKA_BOOTSTRAP", "HAP_REDIS_URL", "HAP_CACHE_DIR")}
    env["HAP_DATA_DIR"] = str(tmp_path_factory.mktemp("hapstack"))
    for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "REDIS_PORT", "PROMETHEUS_PORT"):
        env[f"HAP_{name}"] = str(free_port())
    return Settings.load(env)


def _serve(service: Service) -> Iterator[Service]:
    service.start(timeout_s=90)
    try:
        yield service
    finally:
        service.process.stop()


@pytest.fixture(scope="session")
def kafka_service(hap_settings: Settings) -> Iterator[Kafka | None]:
    """The broker these tests started (fault tests restart it); None when it is external."""
    if hap_settings.external_kafka:
        yield None
        return
    yield from _serve(Kafka(hap_settings))


@pytest.fixture(scope="session")
def kafka_bootstrap(hap_settings: Settings, kafka_service: Kafka | None) -> str:
    """``host:port`` of a real Kafka broker."""
    return kafka_service.endpoint() if kafka_service else hap_settings.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_service(hap_settings: Settings) -> Iterator[Redis | None]:
    """The Redis server these tests started (fault tests restart it); None when it is external."""
    if hap_settings.external_redis:
        yield None
        return
    yield from _serve(Redis(hap_settings))


@pytest.fixture(scope="session")
def redis_url(hap_settings: Settings, redis_service: Redis | None) -> str:
    """URL of a real Redis server."""
    return redis_service.endpoint() if redis_service else hap_settings.redis_url


@pytest.fixture(scope="session")
def prometheus_url(hap_settings: Settings) -> Iterator[str]:
    """URL of a real Prometheus scraping the targets in ``<data_dir>/prometheus/targets.json``."""
    for server in _serve(Prometheus(hap_settings)):
        yield server.endpoint()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    """A Redis server of the test's own on a free port, which the test may stop (an outage)."""
    server = Redis(Settings.load({"HAP_DATA_DIR": str(tmp_path / "own-redis"), "HAP_REDIS_PORT": str(free_port())}))
    server.start()
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test Redis, flushed before each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, so tests never read each other's events."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="session")
def mind_dataset() -> Path:
    """The real MIND subset from ../shared/data; the test is skipped when it is absent."""
    if not (DATA_DIR / "behaviors.tsv.gz").exists():
        pytest.skip(f"real dataset not found at {DATA_DIR} (shared/data is not checked out beside the repo)")
    return DATA_DIR


# -- the pipeline's processes against the stack -------------------------------------------
@pytest.fixture
def stack_env(kafka_bootstrap, redis_url, topic_prefix, tmp_path) -> dict[str, str]:
    """Environment for `hap` subprocesses: the test stack (Redis flushed), a private topic prefix
    (its topics created) and data dir."""
    ensure_topics(kafka_bootstrap, topic_prefix)
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()  # no model or statistics of an earlier test
    return {
        "HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_REDIS_URL": redis_url, "HAP_TOPIC_PREFIX": topic_prefix,
        "HAP_DATA_DIR": str(tmp_path / "data"), "HAP_STREAMS_METRICS_PORT": str(free_port()),
        "HAP_LEARNER_METRICS_PORT": str(free_port()), "HAP_ROUTER_PORT": str(free_port()),
    }


def simulate(env: dict[str, str], tmp_path: Path, *args: str) -> dict:
    """Run `hap simulate` to Kafka; returns its report."""
    sim = Component("simulate", ["simulate", "--no-progress", "--report", str(tmp_path / "sim.json"), *args],
                    tmp_path, env).start()
    assert sim.proc is not None and sim.proc.wait(180) == 0, sim.log_tail()
    return json.loads((tmp_path / "sim.json").read_text())


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60, **options) -> list[bytes]:
    """Values of ``topic`` until ``expected`` arrived or nothing came for ``timeout_s`` (``options``:
    more keyword arguments of the consumer, e.g. credentials)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000), **options)
    values = []
    for message in consumer:
        values.append(message.value)
        if len(values) >= expected:
            break
    consumer.close()
    return values


def truth(path: Path) -> dict[str, dict[str, int]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["request_id"]: r["exposed"] for r in rows}


def trained_exactly_once(learner: Component, metrics_url: str, data_dir: Path, groups: list) -> None:
    """Stop ``learner`` (it checkpoints) once it has seen every distinct group of ``groups``; its
    checkpoint holds exactly those groups' ids and samples (a replayed group keeps its id; its
    first copy counts)."""
    from learner import checkpoint
    from learner.trainer import OnlineTrainer

    unique: dict[str, object] = {}
    for g in groups:
        unique.setdefault(g.group_id, g)
    samples = sum(len(g.items) for g in unique.values())
    learner.wait_metric(metrics_url, "hap_learner_samples_total", samples, timeout_s=60)
    assert learner.stop() == 0, learner.log_tail()
    trainer = OnlineTrainer()
    state = checkpoint.load(data_dir / "learner" / "checkpoint.safetensors", trainer)
    assert set(state["seen"]) == set(unique) and trainer.samples_seen == samples


def dead_letters_of(bootstrap: str, prefix: str, request_ids: set[str]) -> str:
    """What the dead-letter topic says of ``request_ids`` (for a failure message): their letters'
    kinds, reasons and details, and how many letters there are in all."""
    import orjson

    letters = [orjson.loads(v) for v in read_topic(bootstrap, prefix + "dlq", 10**6, timeout_s=3)]
    mine = [(d["request_id"], d["reason_kind"], d["reason"][:200], orjson.dumps(d.get("details"))[:300])
            for d in letters if d["request_id"] in request_ids]
    return f"their dead letters ({len(mine)}): {mine[:3]}; dead letters in all: {len(letters)}"


def input_offsets(bootstrap: str, prefix: str) -> dict[str, str]:
    """The streams group's committed offset against the end of each input partition (for a failure
    message: a partition left unread shows as committed far below its end)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"hap-streams-{prefix.rstrip('.')}",
                             enable_auto_commit=False)
    inputs = [TopicPartition(prefix + topic, p) for topic in ("ranking", "exposure")
              for p in sorted(consumer.partitions_for_topic(prefix + topic) or ())]
    ends = consumer.end_offsets(inputs)
    out = {f"{tp.topic.removeprefix(prefix)}[{tp.partition}]": f"{consumer.committed(tp)}/{ends[tp]}" for tp in inputs}
    consumer.close()
    return out
