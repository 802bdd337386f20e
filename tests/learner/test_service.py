"""The learner process on a real broker and Redis: SIGKILL mid-stream loses nothing, trains nothing twice."""


from kafka import KafkaProducer

from deploy.pipeline import Component
from deploy.stack.process import free_port
from feature_store.model_store import ModelStore
from learner import checkpoint
from learner.trainer import OnlineTrainer
from streams.schemas import encode
from streams.topics import ensure_topics

from .groups import simulated_groups

ARGS = ["learner", "--batch-groups", "4", "--publish-interval", "0.3", "--checkpoint-interval", "0.3"]


def test_sigkill_and_restart_trains_every_group_exactly_once(kafka_bootstrap, redis_url, redis_client,
                                                             topic_prefix, tmp_path):
    ensure_topics(kafka_bootstrap, topic_prefix)
    groups = simulated_groups(160, seed=5, n_candidates=200)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for g in groups + groups[:20]:  # the first 20 again: an at-least-once replay upstream
        producer.send(f"{topic_prefix}samples", key=g.request_id.encode(), value=encode(g))
    producer.close()
    env = {"HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_REDIS_URL": redis_url, "HAP_TOPIC_PREFIX": topic_prefix,
           "HAP_DATA_DIR": str(tmp_path), "HAP_LEARNER_METRICS_PORT": str(free_port())}
    url = f"http://127.0.0.1:{env['HAP_LEARNER_METRICS_PORT']}/metrics"
    first = Component("learner", ARGS, tmp_path, env).start()
    first.wait_http(url)
    assert first.wait_metric(url, "hap_learner_steps_total", 12) < 45  # killed mid-stream (45 steps in all)
    first.kill()
    second = Component("learner", [*ARGS, "--exit-when-idle", "3"], tmp_path, env).start()
    assert second.proc.wait(120) == 0, second.log_tail()
    trainer = OnlineTrainer()
    state = checkpoint.load(tmp_path / "learner" / "checkpoint.safetensors", trainer)
    assert trainer.samples_seen == sum(len(g.items) for g in groups)
    assert set(state["seen"]) == {g.group_id for g in groups}
    assert ModelStore(redis_client).manifest()["samples_seen"] == trainer.samples_seen
