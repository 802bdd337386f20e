"""Two learner ranks (`hap learner --nproc 2`, gloo) over the four partitions of ``hap.samples``: one
rank SIGKILLed mid-stream stops the job; restarted, the job resumes from the last complete
checkpoint and trains every group exactly once (the replayed ones once), and the model store's
versions never go backwards."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from kafka import KafkaProducer

from deploy.pipeline import Component
from deploy.settings import REDIS_PREFIX
from deploy.stack.process import children, free_port, poll_until
from feature_store.model_store import ModelStore
from learner import checkpoint
from learner.trainer import OnlineTrainer
from streams.contract.schemas import encode
from streams.kafka.topics import ensure_topics
from tests.learner.groups import simulated_groups

ARGS = ["learner", "--nproc", "2", "--batch-groups", "2", "--publish-interval", "0.3", "--checkpoint-interval", "0.5"]
GROUPS = 200
STEPS = (GROUPS + 15) // 4  # about this many steps in all: two ranks of two groups a step


def ranks(launcher: Component) -> list[int]:
    """The ranks' processes: the launcher's children that run `deploy.cli learner` (torchrun's agent
    starts one per rank, in rank order)."""
    return [pid for pid in children(launcher.proc.pid) if b"deploy.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_a_killed_rank_stops_the_job_which_resumes_and_trains_every_group_once(kafka_bootstrap, redis_url,
                                                                              redis_client, topic_prefix, tmp_path):
    ensure_topics(kafka_bootstrap, topic_prefix)  # hap.samples: 4 partitions, two per rank
    groups = simulated_groups(GROUPS, seed=7, n_candidates=60)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for g in groups + groups[:15]:  # the first 15 again: an at-least-once replay upstream
        producer.send(f"{topic_prefix}samples", key=g.request_id.encode(), value=encode(g))
    producer.close()
    port = free_port()
    env = {"HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_REDIS_URL": redis_url, "HAP_TOPIC_PREFIX": topic_prefix,
           "HAP_DATA_DIR": str(tmp_path), "HAP_LEARNER_METRICS_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/metrics"  # rank 0's (rank 1's is the next port)
    path = tmp_path / "learner" / "checkpoint.safetensors"
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    stop, seen = threading.Event(), []

    def watch() -> None:  # every manifest version, in order
        while not stop.wait(0.02):
            manifest = store.manifest()
            if manifest is not None and (not seen or seen[-1] != manifest["version"]):
                seen.append(manifest["version"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    first = Component("learner", ARGS, tmp_path, env)
    second = Component("learner", [*ARGS, "--exit-when-idle", "3"], tmp_path, env)
    try:
        first.start()
        first.wait_http(url, timeout_s=90)
        steps = first.wait_metric(url, "hap_learner_steps_total", 8)
        assert 8 <= steps < STEPS, steps  # mid-stream, not after a timeout
        assert first.wait_metric(url, "hap_learner_model_version", 1) >= 1, first.log_tail()
        assert poll_until(lambda: checkpoint.read_state(path) is not None, 30), first.log_tail()
        victims = ranks(first)
        assert len(victims) == 2, victims
        os.kill(victims[-1], signal.SIGKILL)
        assert first.proc.wait(60) == 1, first.log_tail()  # the job stops
        assert len(checkpoint.read_state(path)["seen"]) < GROUPS, first.log_tail()  # killed mid-stream
        assert "a rank failed; the job stopped" in first.log_tail(60)
        second.start()  # resumes from the last complete checkpoint
        assert second.proc.wait(120) == 0, second.log_tail()
    finally:
        stop.set()
        watcher.join()
        first.kill()
        second.kill()
    trainer = OnlineTrainer()
    state = checkpoint.load(path, trainer)
    assert sorted(state["seen"]) == sorted({g.group_id for g in groups})  # every group once, by both ranks
    assert sorted(set(state["seen_partitions"])) == [0, 1, 2, 3]
    assert trainer.samples_seen == sum(len(g.items) for g in groups)
    manifest = store.manifest()
    assert manifest["samples_seen"] == trainer.samples_seen
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen  # versions never go backwards
