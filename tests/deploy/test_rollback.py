"""A rollback that holds: `hap models pin` an older kept version while the learner trains on; the
learner is SIGKILLed and restarted `--from-version` the pinned one; nothing supersedes the pin and the
router serves it throughout; `hap models unpin`, and publishing (and the router) move on."""

import json
import os
import urllib.request

import redis
from kafka import KafkaProducer

from deploy.pipeline import Component
from deploy.settings import REDIS_PREFIX
from deploy.stack.process import poll_until
from feature_store.model_store import ModelStore
from learner import checkpoint
from streams.contract.schemas import encode

from ..learner.groups import simulated_groups
from .conftest import hap

LEARNER = ["learner", "--batch-groups", "4", "--publish-interval", "0.3", "--checkpoint-interval", "0.5"]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def prerank_version(router: str) -> int:
    body = json.dumps({"request_id": "r", "user_id": "u1", "k": 5,
                       "candidates": [{"item_id": f"i{i}"} for i in range(20)]}).encode()
    request = urllib.request.Request(f"{router}/v1/prerank", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())["version"]




def test_a_pin_holds_through_training_and_a_learner_sigkill_until_unpinned(stack_env, tmp_path):
    env = {**stack_env, "HAP_LEARNER_LEASE_TTL_S": "2"}  # the restarted learner waits 2 s for the killed one's lease
    cli = {**os.environ, **env}
    groups = simulated_groups(90, seed=15, n_candidates=30)
    producer = KafkaProducer(bootstrap_servers=env["HAP_KAFKA_BOOTSTRAP"])

    def send(part: list) -> None:
        for g in part:
            producer.send(env["HAP_TOPIC_PREFIX"] + "samples", key=g.request_id.encode(), value=encode(g))
        producer.flush()

    store = ModelStore(redis.Redis.from_url(env["HAP_REDIS_URL"]), prefix=REDIS_PREFIX)
    metrics = f"http://127.0.0.1:{env['HAP_LEARNER_METRICS_PORT']}/metrics"
    router_url = f"http://127.0.0.1:{env['HAP_ROUTER_PORT']}"
    ckpt = tmp_path / "data" / "learner" / "checkpoint.safetensors"
    learner = Component("learner", LEARNER, tmp_path, env).start()
    router = Component("router", ["router", "--poll", "0.3"], tmp_path, env).start()
    restarted = None
    try:
        for n in range(3):  # three versions at least
            send(groups[10 * n:10 * n + 10])
            assert poll_until(lambda n=n: len(store.versions()) > n, 30), learner.log_tail()
        router.wait_http(f"{router_url}/readyz")
        newest = store.manifest()["version"]
        pinned = store.versions()[-1]["version"]  # the oldest kept: a rollback
        assert pinned < newest
        done = hap(cli, "models", "pin", str(pinned), "--reason", "fault test")
        assert done.returncode == 0 and f"serving version {pinned}, pinned" in done.stdout, done.stdout + done.stderr

        send(groups[30:60])  # the learner trains on and checkpoints ...
        assert poll_until(lambda: {g.group_id for g in groups[:60]} <= set(
            (checkpoint.read_state(ckpt) or {}).get("seen", [])), 30), learner.log_tail()
        assert learner.wait_metric(metrics, "hap_learner_publish_pinned", pinned, timeout_s=10) == pinned
        learner.kill()  # ... and is SIGKILLed, then resumes from the pinned version's weights
        restarted = Component("learner", [*LEARNER, "--from-version", str(pinned)], tmp_path, env).start()
        send(groups[60:])
        assert poll_until(lambda: {g.group_id for g in groups} <= set(
            (checkpoint.read_state(ckpt) or {}).get("seen", [])), 30), restarted.log_tail()
        assert checkpoint.read_state(ckpt)["from_version"] == pinned
        assert restarted.wait_metric(metrics, "hap_learner_publish_pinned", pinned, timeout_s=10) == pinned
        assert store.manifest()["version"] == pinned and store.pinned()["reason"] == "fault test"  # nothing superseded
        info = get(f"{router_url}/v1/model")
        assert (info["version"], info["pinned"]) == (pinned, True) and prerank_version(router_url) == pinned
        listed = json.loads(hap(cli, "models", "list", "--json").stdout)
        assert [e["version"] for e in listed if e["pinned"]] == [pinned]

        done = hap(cli, "models", "unpin")
        assert done.returncode == 0 and f"version {pinned} unpinned" in done.stdout, done.stdout + done.stderr
        send(simulated_groups(100, seed=16, n_candidates=30)[90:])  # new groups: something to publish
        assert poll_until(lambda: store.manifest()["version"] > newest, 30), restarted.log_tail()
        assert poll_until(lambda: get(f"{router_url}/v1/model")["version"] > newest, 10)
        assert get(f"{router_url}/v1/model")["pinned"] is False
    finally:
        producer.close()
        for part in (learner, restarted, router):
            if part is not None:
                part.stop()
