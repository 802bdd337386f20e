"""Two learners on one model store, as in a rolling update (same data dir, same Redis): the second
waits while the first holds the writer lease and publishes nothing; the first SIGKILLed, the second
takes over once the lease's TTL ran out, with a higher term; its lease taken from under it (as if it
had been paused past the TTL), it exits 1 without publishing again; the manifest's version and term
never go down throughout."""

from __future__ import annotations

import threading
import time

from kafka import KafkaProducer

from deploy.pipeline import Component
from deploy.scrape import scrape
from deploy.settings import REDIS_PREFIX
from deploy.stack.process import free_port, poll_until
from feature_store.lease import LEASE_TTL_S, WriterLease
from feature_store.model_store import ModelStore
from streams.contract.schemas import encode
from streams.kafka.topics import ensure_topics
from tests.learner.groups import simulated_groups

ARGS = ["learner", "--batch-groups", "4", "--publish-interval", "0.3", "--checkpoint-interval", "0.5"]


def metric(url: str, name: str) -> float:
    try:
        return scrape(url).total(name)
    except OSError:
        return -1.0




def test_one_writer_at_a_time_and_a_killed_one_is_replaced_with_a_higher_term(kafka_bootstrap, redis_url,
                                                                             redis_client, topic_prefix, tmp_path):
    ensure_topics(kafka_bootstrap, topic_prefix)
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    stop = threading.Event()
    seen: list[tuple[int, int]] = []  # (version, term) of every manifest observed, in order

    def trickle() -> None:  # groups keep coming, so both learners have something to publish
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        for g in simulated_groups(1500, seed=12, n_candidates=30):
            if stop.wait(0.02):
                break
            producer.send(f"{topic_prefix}samples", key=g.request_id.encode(), value=encode(g))
        producer.close()

    def watch() -> None:
        while not stop.wait(0.02):
            manifest = store.manifest()
            if manifest is not None and (not seen or seen[-1] != (manifest["version"], manifest["term"])):
                seen.append((manifest["version"], manifest["term"]))

    threads = [threading.Thread(target=trickle), threading.Thread(target=watch)]
    base = {"HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_REDIS_URL": redis_url, "HAP_TOPIC_PREFIX": topic_prefix,
            "HAP_DATA_DIR": str(tmp_path / "data")}  # one data dir: the checkpoint volume both pods mount
    ports = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
    first = Component("learner", ARGS, tmp_path / "a", {**base, "HAP_LEARNER_METRICS_PORT": str(ports[0])})
    second = Component("learner", ARGS, tmp_path / "b", {**base, "HAP_LEARNER_METRICS_PORT": str(ports[1])})
    for t in threads:
        t.start()
    try:
        first.start()
        first.wait_http(urls[0])
        assert first.wait_metric(urls[0], "hap_learner_model_version", 1) >= 1, first.log_tail()
        term = metric(urls[0], "hap_learner_lease_term")
        assert term >= 1

        second.start()
        second.wait_http(urls[1])
        assert second.wait_metric(urls[1], "hap_learner_lease_waiting", 1) == 1, second.log_tail()
        published = metric(urls[0], "hap_learner_model_version")
        assert poll_until(lambda: metric(urls[0], "hap_learner_model_version") >= published + 3, 60)  # first goes on
        assert "waiting to start: the model-store writer lease is held by" in second.log_tail(50)
        assert metric(urls[1], "hap_learner_steps_total") <= 0  # never trained: it has not read the checkpoint
        assert {t for _, t in seen} == {term}  # only the holder published

        first.kill()  # SIGKILL: no release; the lease runs out
        killed = time.monotonic()
        assert second.wait_metric(urls[1], "hap_learner_lease_term", term + 1, timeout_s=LEASE_TTL_S + 30) == term + 1
        takeover_s = time.monotonic() - killed
        assert metric(urls[1], "hap_learner_lease_waiting") == 0
        assert poll_until(lambda: bool(seen) and seen[-1][1] == term + 1, 60), second.log_tail()
        assert takeover_s <= LEASE_TTL_S + 5, takeover_s  # the TTL, one retry interval, scrape delays

        redis_client.delete(store.keys.lease)  # the second's lease expires under it; another writer takes it
        thief = WriterLease(redis_client, prefix=REDIS_PREFIX, holder="thief")
        assert thief.acquire() and thief.term == term + 2
        assert second.proc.wait(60) == 1, second.log_tail()
        assert "stopping: " in second.log_tail(50) and "taken over" in second.log_tail(50)
        assert redis_client.get(store.keys.lease) == thief.token.encode()  # not released by the fenced learner
    finally:
        stop.set()
        for t in threads:
            t.join()
        first.kill()
        second.kill()
    versions, terms = [v for v, _ in seen], [t for _, t in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions), seen  # never backwards
    assert terms == sorted(terms) and set(terms) == {term, term + 1}, seen  # nothing after the theft
    print(f"takeover after SIGKILL: {takeover_s:.1f}s (lease TTL {LEASE_TTL_S:.0f}s); {len(seen)} versions seen")
