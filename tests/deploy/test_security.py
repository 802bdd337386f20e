"""A stack with Kafka SASL (PLAIN) and Redis AUTH: the pipeline works with the credentials from the
environment, fails clearly without them, and never shows the secrets (argv, logs, status)."""

import json
import os
from pathlib import Path

import pytest
import redis

from deploy.pipeline import Component
from deploy.settings import Settings
from deploy.stack.services import kafka_answers
from streams.contract.schemas import decode_sample_group
from streams.kafka.security import KafkaSecurity

from ..conftest import read_topic, simulate
from .conftest import hap, pids

KAFKA_SECRET, REDIS_SECRET = "k-s3cret-9f2", "r-s3cret-41c"


@pytest.fixture
def secure_env(cli_env):
    env = {**cli_env, "HAP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "HAP_KAFKA_SASL_USERNAME": "hap",
           "HAP_KAFKA_SASL_PASSWORD": KAFKA_SECRET, "HAP_REDIS_PASSWORD": REDIS_SECRET, "HAP_TOPIC_PREFIX": "sec."}
    up = hap(env, "stack", "up", "--no-prometheus")
    assert up.returncode == 0, up.stderr
    yield env
    hap(env, "stack", "down")


def test_sasl_and_auth_protect_the_stack_and_secrets_stay_hidden(secure_env, tmp_path):
    settings = Settings.load(secure_env)
    # the worker starts first: its start-up (seconds) overlaps the refused probes and the simulation
    worker = Component("streams", ["streams", "--window", "1", "--lateness", "0.5"], tmp_path, secure_env).start()
    try:
        assert not kafka_answers(settings.kafka_bootstrap)  # no credentials, no broker
        assert not kafka_answers(settings.kafka_bootstrap, KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "hap", "wrong"))
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(settings.redis_url).ping()
        assert settings.redis.client().ping()

        report = simulate(secure_env, tmp_path, "--requests", "20", "--rate", "0", "--feedback-delay", "0.2")
        samples = read_topic(settings.kafka_bootstrap, "sec.samples", report["requests"],
                             **settings.kafka_security.client_options())
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    assert len({decode_sample_group(v).request_id for v in samples}) == report["requests"]

    status = hap(secure_env, "stack", "status", "--json").stdout
    assert json.loads(status)  # the status still tells every endpoint
    shown = [status, repr(settings), *(p.read_text(errors="replace") for p in tmp_path.rglob("*.log")),
             *(_cmdline(pid) for pid in pids(secure_env["HAP_DATA_DIR"]))]
    assert not [text for text in shown if KAFKA_SECRET in text or REDIS_SECRET in text]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") if os.path.exists(f"/proc/{pid}") else ""
