"""A streams worker down longer than its inputs' retention: its committed offsets lie below the log
start. Restarted, it reads what is left, counts what retention deleted, and commits again, so that
a later restart replays nothing."""

import re
import time
from collections import Counter

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from deploy.pipeline import Component
from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent, decode_sample_group, encode

from ...conftest import input_offsets, read_topic

ARGS = ["streams", "--window", "1", "--lateness", "0.5"]


def produce(bootstrap: str, prefix: str, ids: list[str]) -> None:
    """A ranking event and one exposure per request, keyed by request id (co-partitioned)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    now = int(time.time() * 1000)
    for rid in ids:
        candidates = [Candidate(f"i{k}", "hot", k, 1.0 - k / 10, k, 0.5, "video") for k in range(10)]
        producer.send(prefix + "ranking", key=rid.encode(), value=encode(RankingEvent(rid, "u", now, candidates)))
        producer.send(prefix + "exposure", key=rid.encode(),
                      value=encode(ExposureEvent(rid, "u", "i0", now + 1, "exposure", position=0)))
    producer.flush()
    producer.close()


def ends(bootstrap: str, prefix: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    inputs = [TopicPartition(prefix + t, p) for t in ("ranking", "exposure")
              for p in sorted(consumer.partitions_for_topic(prefix + t))]
    out = consumer.end_offsets(inputs)
    consumer.close()
    return out


def groups_of(bootstrap: str, prefix: str, wanted: set[str], timeout_s: float = 90) -> list:
    """Every group in the samples topic, once ``wanted`` requests all have one (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        groups = [decode_sample_group(v) for v in read_topic(bootstrap, prefix + "samples", 10**6, timeout_s=2)]
        if wanted <= {g.request_id for g in groups} or time.monotonic() > deadline:
            return groups


def committed_at_end(bootstrap: str, prefix: str, timeout_s: float = 30) -> bool:
    """Whether the worker's group committed every input partition up to its end (polled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        offsets = input_offsets(bootstrap, prefix)
        if all(c == e for c, e in (v.split("/") for v in offsets.values())) or time.monotonic() > deadline:
            return all(c == e for c, e in (v.split("/") for v in offsets.values()))
        time.sleep(0.5)


def test_a_worker_down_past_its_inputs_retention_commits_again_and_replays_nothing(stack_env, kafka_bootstrap,
                                                                                   tmp_path):
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    url = f"http://127.0.0.1:{stack_env['HAP_STREAMS_METRICS_PORT']}/metrics"
    before = [f"a-{i}" for i in range(40)]
    produce(kafka_bootstrap, prefix, before)
    first = Component("streams", ARGS, tmp_path, stack_env).start()
    try:
        assert {g.request_id for g in groups_of(kafka_bootstrap, prefix, set(before))} >= set(before)
        assert committed_at_end(kafka_bootstrap, prefix), input_offsets(kafka_bootstrap, prefix)
    finally:
        assert first.stop() == 0, first.log_tail()

    produce(kafka_bootstrap, prefix, [f"b-{i}" for i in range(40)])  # read by nobody: retention deletes them
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.delete_records(ends(kafka_bootstrap, prefix))
    admin.close()
    after = [f"c-{i}" for i in range(40)]
    produce(kafka_bootstrap, prefix, after)

    second = Component("streams", ARGS, tmp_path, stack_env).start()
    try:
        second.wait_http(url)
        emitted = {g.request_id for g in groups_of(kafka_bootstrap, prefix, set(after))}
        assert emitted >= set(after), f"{sorted(set(after) - emitted)[:10]}\n{second.log_tail(40)}"
        assert committed_at_end(kafka_bootstrap, prefix), f"{input_offsets(kafka_bootstrap, prefix)}\n" \
                                                          f"{second.log_tail()}"
        # b's 40 rankings and 40 exposures, counted once (in hap_streams_retention_lost_total and the log; the
        # log, since a worker that replaced itself meanwhile starts its counter at 0)
        lost = [int(n) for n in re.findall(r"(\d+) records lost", second.log_file.read_text(errors="replace"))]
        assert sum(lost) == 80, second.log_tail(40)
    finally:
        assert second.stop() == 0, second.log_tail()

    last = ["d-0"]
    produce(kafka_bootstrap, prefix, last)
    third = Component("streams", ARGS, tmp_path, stack_env).start()
    try:
        groups = groups_of(kafka_bootstrap, prefix, set(last))
    finally:
        assert third.stop() == 0, third.log_tail()
    emitted = Counter(g.group_id for g in groups)
    assert {g.request_id for g in groups} == set(before) | set(after) | set(last)
    assert max(emitted.values()) == 1  # graceful stops only: nothing emitted twice, nothing replayed
