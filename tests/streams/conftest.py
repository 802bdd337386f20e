"""Helpers for the streams integration tests: run real `hap` processes against the fixtures' stack."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from deploy.pipeline import Component
from deploy.stack.process import free_port
from streams.topics import ensure_topics


@pytest.fixture
def stack_env(kafka_bootstrap, redis_url, topic_prefix, tmp_path) -> dict[str, str]:
    """Environment for `hap` subprocesses: the test stack, a private topic prefix (its topics
    created) and data dir."""
    ensure_topics(kafka_bootstrap, topic_prefix)
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


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[bytes]:
    """Values of ``topic`` until ``expected`` arrived or nothing came for ``timeout_s``."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000))
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


os.environ.setdefault("PYTHONUNBUFFERED", "1")
