"""Shared stack fixtures: a real Kafka broker (KRaft), Redis and Prometheus on free ports.

Each server starts on first use (session scope) under a temporary data dir and is stopped
at the end of the session. With ``HAP_KAFKA_BOOTSTRAP`` / ``HAP_REDIS_URL`` set, the tests
use those services instead and start nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deploy.settings import Settings
from deploy.stack.process import free_port
from deploy.stack.services import Kafka, Prometheus, Redis, Service

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind_small_subset"


@pytest.fixture(scope="session")
def hap_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of the test stack: a private data dir and free ports."""
    env = {k: v for k, v in os.environ.items() if k in ("HAP_KAFKA_BOOTSTRAP", "HAP_REDIS_URL", "HAP_CACHE_DIR")}
    env["HAP_DATA_DIR"] = str(tmp_path_factory.mktemp("hapstack"))
    for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "REDIS_PORT", "PROMETHEUS_PORT"):
        env[f"HAP_{name}"] = str(free_port())
    return Settings.load(env)


def _serve(service: Service) -> Iterator[None]:
    service.start(timeout_s=90)
    try:
        yield
    finally:
        service.process.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(hap_settings: Settings) -> Iterator[str]:
    """``host:port`` of a real Kafka broker."""
    if hap_settings.external_kafka:
        yield hap_settings.kafka_bootstrap
        return
    kafka = Kafka(hap_settings)
    for _ in _serve(kafka):
        yield kafka.endpoint()


@pytest.fixture(scope="session")
def redis_url(hap_settings: Settings) -> Iterator[str]:
    """URL of a real Redis server."""
    if hap_settings.external_redis:
        yield hap_settings.redis_url
        return
    server = Redis(hap_settings)
    for _ in _serve(server):
        yield server.endpoint()


@pytest.fixture(scope="session")
def prometheus_url(hap_settings: Settings) -> Iterator[str]:
    """URL of a real Prometheus scraping the targets in ``<data_dir>/prometheus/targets.json``."""
    server = Prometheus(hap_settings)
    for _ in _serve(server):
        yield server.endpoint()


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
