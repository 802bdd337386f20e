"""The learner process on a real broker and Redis: SIGKILL or SIGTERM mid-stream loses nothing and
trains nothing twice; offsets below retention resume at the log start and count what was lost;
non-finite values never reach the weights; one learner at a time holds the writer lease, and one whose
lease was taken over stops without publishing or checkpointing again."""

import math
import threading
import time

import msgspec
import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY

from deploy.pipeline import Component
from deploy.settings import REDIS_PREFIX
from deploy.stack.process import free_port
from feature_store.connection import RedisEndpoint
from feature_store.featurize import hash_id
from feature_store.lease import WriterLease
from feature_store.model_store import FencedError, ModelStore, ModelStoreError
from learner import checkpoint
from learner.service import LearnerConfig, LearnerService
from learner.trainer import OnlineTrainer
from streams.contract.schemas import encode
from streams.kafka.topics import ensure_topics

from .groups import simulated_groups

ARGS = ["learner", "--batch-groups", "4", "--publish-interval", "0.3", "--checkpoint-interval", "0.3"]


def learner_env(kafka_bootstrap, redis_url, topic_prefix, tmp_path) -> dict[str, str]:
    return {"HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_REDIS_URL": redis_url, "HAP_TOPIC_PREFIX": topic_prefix,
            "HAP_DATA_DIR": str(tmp_path), "HAP_LEARNER_METRICS_PORT": str(free_port())}


def trained_state(tmp_path):
    trainer = OnlineTrainer()
    state = checkpoint.load(tmp_path / "learner" / "checkpoint.safetensors", trainer)
    return trainer, state


def test_sigkill_and_restart_trains_every_group_exactly_once(kafka_bootstrap, redis_url, redis_client,
                                                             topic_prefix, tmp_path):
    ensure_topics(kafka_bootstrap, topic_prefix)
    groups = simulated_groups(160, seed=5, n_candidates=200)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for g in groups + groups[:20]:  # the first 20 again: an at-least-once replay upstream
        producer.send(f"{topic_prefix}samples", key=g.request_id.encode(), value=encode(g))
    producer.close()
    env = learner_env(kafka_bootstrap, redis_url, topic_prefix, tmp_path)
    url = f"http://127.0.0.1:{env['HAP_LEARNER_METRICS_PORT']}/metrics"
    first = Component("learner", ARGS, tmp_path, env).start()
    first.wait_http(url)
    steps = first.wait_metric(url, "hap_learner_steps_total", 12)
    assert 12 <= steps < 45, steps  # killed mid-stream (45 steps in all), not after a timeout
    first.kill()
    second = Component("learner", [*ARGS, "--exit-when-idle", "3"], tmp_path, env).start()
    assert second.proc.wait(120) == 0, second.log_tail()
    trainer, state = trained_state(tmp_path)
    assert trainer.samples_seen == sum(len(g.items) for g in groups)
    assert set(state["seen"]) == {g.group_id for g in groups}
    assert ModelStore(redis_client, prefix=REDIS_PREFIX).manifest()["samples_seen"] == trainer.samples_seen


def test_sigterm_under_traffic_trains_every_polled_group_before_it_stops(kafka_bootstrap, redis_url, redis_client,
                                                                        topic_prefix, tmp_path):
    """Groups trickle in (one every 25 ms, batches of 16), so at a SIGTERM some are polled and not
    yet trained; the stop must train them before its checkpoint records their offsets and ids."""
    ensure_topics(kafka_bootstrap, topic_prefix)
    groups = simulated_groups(900, seed=6, n_candidates=30)
    sent: list = []
    stop_sending = threading.Event()

    def trickle():
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
        for g in groups:
            if stop_sending.is_set():
                break
            producer.send(f"{topic_prefix}samples", key=g.request_id.encode(), value=encode(g))
            producer.flush()
            sent.append(g)
            if len(sent) % 10 == 0:  # an upstream replay now and then
                producer.send(f"{topic_prefix}samples", key=g.request_id.encode(), value=encode(sent[-5]))
            time.sleep(0.025)
        producer.close()

    sender = threading.Thread(target=trickle)
    sender.start()
    env = learner_env(kafka_bootstrap, redis_url, topic_prefix, tmp_path)
    url = f"http://127.0.0.1:{env['HAP_LEARNER_METRICS_PORT']}/metrics"
    args = ["learner", "--batch-groups", "16", "--publish-interval", "0.5", "--checkpoint-interval", "60"]
    try:
        for _ in range(3):  # three graceful stops under traffic
            learner = Component("learner", args, tmp_path, env).start()
            learner.wait_http(url)
            assert learner.wait_metric(url, "hap_learner_steps_total", 3) >= 3, learner.log_tail()
            time.sleep(1.3)  # caught up: groups arrive one by one and wait for a batch to fill
            assert learner.stop() == 0, learner.log_tail()
    finally:
        stop_sending.set()
        sender.join()
    last = Component("learner", [*args, "--exit-when-idle", "3"], tmp_path, env).start()
    assert last.proc.wait(120) == 0, last.log_tail()
    trainer, state = trained_state(tmp_path)
    assert set(state["seen"]) == {g.group_id for g in sent}
    assert trainer.samples_seen == sum(len(g.items) for g in sent)  # every distinct group, exactly once
    assert ModelStore(redis_client, prefix=REDIS_PREFIX).manifest()["samples_seen"] == trainer.samples_seen


def service(kafka_bootstrap, redis_url, topic, tmp_path, trainer=None, **kwargs) -> LearnerService:
    cfg = LearnerConfig(bootstrap=kafka_bootstrap, redis=RedisEndpoint(redis_url), redis_prefix=REDIS_PREFIX,
                        samples_topic=topic,
                        checkpoint_path=tmp_path / "ckpt.safetensors", publish_s=0.2, checkpoint_s=0.5, **kwargs)
    return LearnerService(cfg, trainer or OnlineTrainer(seed=0))


def produce(bootstrap: str, topic: str, groups, values=None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for n, g in enumerate(groups):
        producer.send(topic, key=g.request_id.encode(), value=values[n] if values else encode(g), partition=0)
    producer.close()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_offsets_below_retention_resume_at_the_log_start_and_count_the_loss(kafka_bootstrap, redis_url,
                                                                             redis_client, topic_prefix, tmp_path):
    topic = f"{topic_prefix}samples"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    groups = simulated_groups(40, seed=7, n_candidates=30)
    produce(kafka_bootstrap, topic, groups[:10])
    first = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=4)
    first.run(max_idle_s=1.5)
    assert first.offsets == {0: 10} and first.trainer.samples_seen == sum(len(g.items) for g in groups[:10])
    produce(kafka_bootstrap, topic, groups[10:])  # offsets 10..39, then retention deletes 10..24 unread
    admin.delete_records({TopicPartition(topic, 0): 25})
    admin.close()
    lost_before = counter("hap_learner_retention_lost_total", partition="0")
    second = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=4)
    second.run(max_idle_s=1.5)
    retained = groups[:10] + groups[25:]
    assert second.offsets == {0: 40}
    assert list(second.seen) == [g.group_id for g in retained]  # every retained group, none skipped to the end
    assert second.trainer.samples_seen == sum(len(g.items) for g in retained)
    assert counter("hap_learner_retention_lost_total", partition="0") - lost_before == 15


def test_nonfinite_features_and_steps_never_reach_the_published_weights(kafka_bootstrap, redis_url, redis_client,
                                                                        topic_prefix, tmp_path):
    topic = f"{topic_prefix}samples"
    KafkaAdminClient(bootstrap_servers=kafka_bootstrap).create_topics([NewTopic(topic, 1, 1)])
    groups = simulated_groups(24, seed=8, n_candidates=30)
    overflow = groups[4]  # a statistic that overflows float32: inf after featurization, NaN after a step
    overflow.items[0].features.update({"ctr_1h": 1e39, "exp_1h": 1e39})
    poisoned = groups[10] = msgspec.structs.replace(groups[10], items=[  # items whose embedding rows hold absurd
        msgspec.structs.replace(item, item_id=f"poison-{n}") for n, item in enumerate(groups[10].items)])  # weights
    assert all(any(item.source == "exp_pos" for item in g.items) for g in (overflow, poisoned))  # both train
    trainer = OnlineTrainer(seed=0)
    with torch_no_grad():
        table = trainer.tiers()["light"].get_parameter("item_emb.weight")
        for item in poisoned.items:
            table[hash_id("item", item.item_id)] = 1e30  # finite, but its gradient norms overflow
    svc = service(kafka_bootstrap, redis_url, topic, tmp_path, trainer=trainer, batch_groups=4)
    steps_before = counter("hap_learner_nonfinite_steps_total")
    produce(kafka_bootstrap, topic, groups)
    svc.run(max_idle_s=1.5)
    good = [g for g in groups if g not in (overflow, poisoned)]
    assert svc.trainer.samples_seen == sum(len(g.items) for g in good)  # the other groups of their batches too
    assert counter("hap_learner_nonfinite_steps_total") - steps_before >= 1  # the batch, then the group alone
    assert checkpoint.weights_finite(svc.trainer)
    loaded = ModelStore(redis_client, prefix=REDIS_PREFIX).load()
    assert loaded.manifest["samples_seen"] == svc.trainer.samples_seen
    for name, (tensors, _) in loaded.tiers.items():
        for key, value in tensors.items():
            assert np.isfinite(value).all(), (name, key)
    assert all(math.isfinite(v) for v in svc.trainer.metrics["light"].report().values() if isinstance(v, float))


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_a_second_learner_cannot_start_while_the_first_holds_the_lease(kafka_bootstrap, redis_url, redis_client,
                                                                       topic_prefix, tmp_path):
    topic = f"{topic_prefix}samples"
    KafkaAdminClient(bootstrap_servers=kafka_bootstrap).create_topics([NewTopic(topic, 1, 1)])
    produce(kafka_bootstrap, topic, simulated_groups(8, seed=9, n_candidates=30))
    first = service(kafka_bootstrap, redis_url, topic, tmp_path / "a", batch_groups=4)
    with pytest.raises(FencedError) as info:
        service(kafka_bootstrap, redis_url, topic, tmp_path / "b", lease_wait_s=1.0)
    assert (info.value.kind, info.value.detail) == ("lease_held", first.lease.token)
    assert counter("hap_learner_lease_waiting") == 0 and not (tmp_path / "b").exists()  # no checkpoint read
    first.run(max_idle_s=1.5)  # a graceful stop releases the lease
    assert redis_client.get(first.store.keys.lease) is None
    successor = service(kafka_bootstrap, redis_url, topic, tmp_path / "a", batch_groups=4, lease_wait_s=1.0)
    assert successor.lease.term == first.lease.term + 1 and counter("hap_learner_lease_term") == successor.lease.term
    successor.run(max_idle_s=0.5)


def test_a_learner_whose_lease_was_taken_over_stops_without_publishing_or_checkpointing(
        kafka_bootstrap, redis_url, redis_client, topic_prefix, tmp_path):
    topic = f"{topic_prefix}samples"
    KafkaAdminClient(bootstrap_servers=kafka_bootstrap).create_topics([NewTopic(topic, 1, 1)])
    groups = simulated_groups(24, seed=10, n_candidates=30)
    produce(kafka_bootstrap, topic, groups[:8])
    svc = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=4)
    failure: list[BaseException] = []
    learner = threading.Thread(target=lambda: failure.extend(_raised(svc.run, max_idle_s=5)))
    learner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (svc.store.manifest() is None or len(trained_seen(svc)) < 8):
        time.sleep(0.1)
    before = svc.store.manifest()
    redis_client.delete(svc.store.keys.lease)  # as if it had expired: another learner takes over
    other = WriterLease(redis_client, prefix=REDIS_PREFIX, holder="other")
    assert other.acquire() and other.term == svc.lease.term + 1
    fenced_before = counter("hap_learner_fenced_total", kind="lease_lost")
    produce(kafka_bootstrap, topic, groups[8:])
    learner.join(60)
    assert len(failure) == 1 and isinstance(failure[0], FencedError), failure
    assert (failure[0].kind, failure[0].retriable) == ("lease_lost", False)
    assert counter("hap_learner_fenced_total", kind="lease_lost") - fenced_before == 1
    assert svc.store.manifest()["version"] == before["version"]  # nothing published after the takeover
    assert not set(trained_seen(svc)) & {g.group_id for g in groups[8:]}  # nor checkpointed
    assert redis_client.get(svc.store.keys.lease) == other.token.encode()  # the other's lease left alone


def trained_seen(svc: LearnerService) -> list[str]:
    return (checkpoint.read_state(svc.cfg.checkpoint_path) or {}).get("seen", [])


def _raised(fn, **kwargs) -> list[BaseException]:
    try:
        fn(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        return [exc]
    return []


def test_each_step_takes_every_group_available_up_to_the_cap(kafka_bootstrap, redis_url, redis_client, topic_prefix,
                                                             tmp_path):
    """A backlog is trained in batches of the cap; groups that trickle in (one per 50 ms, cap 64)
    are trained as they come instead of waiting for a batch to fill (the freshness under light load)."""
    topic = f"{topic_prefix}samples"
    KafkaAdminClient(bootstrap_servers=kafka_bootstrap).create_topics([NewTopic(topic, 1, 1)])
    groups = simulated_groups(200, seed=12, n_candidates=30)
    produce(kafka_bootstrap, topic, groups[:160])
    svc = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=64)
    steps_before, full_before = counter("hap_learner_batch_groups_count"), counter(
        "hap_learner_batch_groups_bucket", le="32.0")
    learner = threading.Thread(target=svc.run, kwargs={"max_idle_s": 5.0})
    learner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and svc.trainer.samples_seen < sum(len(g.items) for g in groups[:160]):
        time.sleep(0.05)
    backlog_steps = counter("hap_learner_batch_groups_count") - steps_before
    assert backlog_steps <= 5, backlog_steps  # 160 groups: 3 steps of 64 at best, not 160 of one
    assert counter("hap_learner_batch_groups_bucket", le="32.0") - full_before < backlog_steps  # some took > 32
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    for g in groups[160:]:
        producer.send(topic, key=g.request_id.encode(), value=encode(g), partition=0)
        producer.flush()
        time.sleep(0.05)
    producer.close()
    learner.join(60)
    trickle_steps = counter("hap_learner_batch_groups_count") - steps_before - backlog_steps
    assert trickle_steps >= 10, trickle_steps  # 40 groups in 2 s: not one batch of 40 (it waited for none)
    assert svc.trainer.samples_seen == sum(len(g.items) for g in groups)
    # its group's lag was read from the broker meanwhile (every 5 s): at most the whole topic
    lag = REGISTRY.get_sample_value("hap_learner_consumer_lag_records", {"group": "hap-learner", "topic": topic,
                                                                         "partition": "0"})
    assert lag is not None and 0 <= lag <= len(groups)


def test_checkpoint_and_publish_run_off_the_training_loop(kafka_bootstrap, redis_url, redis_client, topic_prefix,
                                                          tmp_path, monkeypatch):
    """While the checkpoint write and the publish are stuck (a slow disk, a slow Redis), training
    goes on; the offsets reach Kafka only once the checkpoint holding them is written."""
    topic = f"{topic_prefix}samples"
    KafkaAdminClient(bootstrap_servers=kafka_bootstrap).create_topics([NewTopic(topic, 1, 1)])
    groups = simulated_groups(48, seed=13, n_candidates=30)
    release, writing, publishing = threading.Event(), threading.Event(), threading.Event()
    write = checkpoint.write

    def stuck_write(*args):
        writing.set()
        assert release.wait(60)
        write(*args)

    monkeypatch.setattr(checkpoint, "write", stuck_write)
    produce(kafka_bootstrap, topic, groups[:8])
    svc = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=4)
    publish = svc.store.publish

    def stuck_publish(*args, **kwargs):
        publishing.set()
        assert release.wait(60)
        return publish(*args, **kwargs)

    svc.store.publish = stuck_publish
    # stopped by the test, not by an idle clock: on a loaded machine the wait for both to be stuck can outlast
    # any short idle limit, and the loop would stop before the rest of the groups came (2026-12-07)
    learner = threading.Thread(target=svc.run)
    learner.start()
    try:
        assert writing.wait(60) and publishing.wait(60)
        produce(kafka_bootstrap, topic, groups[8:])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and svc.trainer.samples_seen < sum(len(g.items) for g in groups):
            time.sleep(0.05)
        assert svc.trainer.samples_seen == sum(len(g.items) for g in groups)  # trained while both were stuck
        assert not svc.cfg.checkpoint_path.exists() and svc.store.manifest() is None
        assert committed(kafka_bootstrap, topic) is None  # nothing committed before a checkpoint holds it
    finally:
        release.set()
        svc.stop()
        learner.join(60)
    assert checkpoint.read_state(svc.cfg.checkpoint_path)["offsets"] == {"0": 48}
    assert committed(kafka_bootstrap, topic) == 48
    assert svc.store.manifest()["samples_seen"] == svc.trainer.samples_seen


def committed(bootstrap: str, topic: str) -> int | None:
    """The offset the learner's consumer group committed on partition 0 of ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="hap-learner", enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def test_a_pin_holds_publishing_back_while_training_goes_on_and_from_version_resumes_its_weights(
        kafka_bootstrap, redis_url, redis_client, topic_prefix, tmp_path):
    topic = f"{topic_prefix}samples"
    KafkaAdminClient(bootstrap_servers=kafka_bootstrap).create_topics([NewTopic(topic, 1, 1)])
    groups = simulated_groups(24, seed=14, n_candidates=30)
    for part in (groups[:4], groups[4:8]):  # a version at each stop at least
        produce(kafka_bootstrap, topic, part)
        service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=2).run(max_idle_s=1.0)
    operator = ModelStore(redis_client, prefix=REDIS_PREFIX)
    pinned = operator.versions()[1]["version"]  # an older kept version: a rollback that holds
    operator.pin(pinned)
    weights = operator.load(pinned).tiers
    produce(kafka_bootstrap, topic, groups[8:16])
    resumed = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=2, from_version=pinned)
    for name, tier in resumed.trainer.tiers().items():  # the pinned version's weights, not the checkpoint's
        for key, value in tier.export()[0].items():
            np.testing.assert_array_equal(value, weights[name][0][key], err_msg=f"{name}.{key}")
    resumed.run(max_idle_s=1.5)
    assert operator.manifest()["version"] == pinned  # trained on, published nothing
    assert counter("hap_learner_publish_pinned") == pinned
    state = checkpoint.read_state(resumed.cfg.checkpoint_path)
    assert set(state["seen"]) == {g.group_id for g in groups[:16]} and state["from_version"] == pinned
    operator.unpin()
    produce(kafka_bootstrap, topic, groups[16:])
    again = service(kafka_bootstrap, redis_url, topic, tmp_path, batch_groups=2, from_version=pinned)
    light = again.trainer.tiers()["light"].export()[0]
    assert any(not np.array_equal(v, weights["light"][0][k]) for k, v in light.items())  # the checkpoint's: once
    again.run(max_idle_s=1.5)
    manifest = operator.manifest()
    assert manifest["version"] > pinned and manifest["samples_seen"] == sum(len(g.items) for g in groups)
    assert counter("hap_learner_publish_pinned") == 0
    with pytest.raises(ModelStoreError, match="not kept"):  # a version Redis no longer holds: not started
        service(kafka_bootstrap, redis_url, topic, tmp_path / "other", from_version=10**6)
    assert redis_client.get(operator.keys.lease) is None  # the lease released: the next learner starts at once
