"""A record on a partition the contract's partitioner does not give its request (a Go producer with
Sarama's default FNV-1a partitioner or kafka-go's round-robin) is dead-lettered as ``misrouted`` and
counted by topic, through the worker's batch path without a broker; then through a real broker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from deploy.pipeline import Component
from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent, decode_sample_group, encode
from streams.kafka.batch_producer import partition_of

from ...conftest import read_topic
from .test_app import dead_letters
from .test_delivery_order import PREFIX, Event, Log, Message, Producer, make_worker, run


def misrouted_count(topic: str) -> float:
    return REGISTRY.get_sample_value("hap_streams_invalid_total", {"topic": topic, "reason_kind": "misrouted"}) or 0.0


class Recording(Producer):
    """The fake brokers, keeping what they were handed."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.records: list[tuple[str, int | None, bytes | None, bytes | None]] = []

    async def deliver(self, records: Sequence[tuple[str, int | None, bytes | None, bytes | None]]) -> None:
        self.records += records
        await super().deliver(records)


def _events(rid: str, partition: int, offset: int) -> list[Event]:
    now = int(time.time() * 1000)
    ranking = encode(RankingEvent(rid, "u1", now, [Candidate("i1", "hot", 0, 0.9, content_type="video")]))
    shown = encode(ExposureEvent(rid, "u1", "i1", now, "exposure", position=0))
    return [Event(Message(f"{PREFIX}ranking", partition, offset, rid.encode(), ranking)),
            Event(Message(f"{PREFIX}exposure", partition, offset, rid.encode(), shown))]


def test_a_record_off_its_requests_partition_is_dead_lettered_and_counted(tmp_path: Path) -> None:
    log = Log()
    worker, _ = make_worker(tmp_path, log)  # 2 partitions
    producer = worker.producer = Recording(log)
    right, wrong = partition_of(b"r3", 2), 1 - partition_of(b"r3", 2)
    before = {t: misrouted_count(f"{PREFIX}{t}") for t in ("ranking", "exposure")}
    run(worker, log, _events("r3", wrong, 0), _events("r1", partition_of(b"r1", 2), 1))
    letters = [orjson.loads(value) for topic, _, _, value in producer.records if topic == f"{PREFIX}dlq"]
    assert [(d["reason_kind"], d["topic"], d["request_id"], d["partition"], d["details"]) for d in letters] == [
        ("misrouted", f"{PREFIX}{t}", "r3", wrong, {"expected_partition": right, "partitions": 2})
        for t in ("ranking", "exposure")]
    assert letters[0]["reason"].startswith(f"misrouted: on partition {wrong} of 2, but murmur2 of its request_id")
    assert {t: misrouted_count(f"{PREFIX}{t}") - before[t] for t in before} == {"ranking": 1, "exposure": 1}
    # joined nothing: r3 has no pending state, r1 (on its partition) has
    assert worker.joiner.tables.pending.get("r3") is None and worker.joiner.tables.pending.get("r1") is not None
    assert worker.features.counted == 1  # r1's exposure alone


def test_an_event_produced_to_a_wrong_partition_is_dead_lettered(stack_env, kafka_bootstrap, tmp_path):
    """(The same run checks the group's consumer lag the worker exports against the broker's offsets.)"""
    from deploy.scrape import scrape

    prefix = stack_env["HAP_TOPIC_PREFIX"]
    url = f"http://127.0.0.1:{stack_env['HAP_STREAMS_METRICS_PORT']}/metrics"
    worker = Component("streams", ["streams", "--window", "1", "--lateness", "0.5"], tmp_path, stack_env).start()
    try:
        worker.wait_http(url)
        now = int(time.time() * 1000)
        rid = "misrouted-1"
        right = partition_of(rid.encode(), 4)
        raw = KafkaProducer(bootstrap_servers=kafka_bootstrap)  # as a producer with another partitioner would
        raw.send(prefix + "ranking", key=rid.encode(), partition=right, value=encode(
            RankingEvent(rid, "u1", now, [Candidate("i1", "hot", 0, 0.9, content_type="video")])))
        raw.send(prefix + "exposure", key=rid.encode(), partition=(right + 1) % 4,
                 value=encode(ExposureEvent(rid, "u1", "i1", now + 1, "exposure", position=0)))
        raw.flush()
        raw.close()
        dlq = dead_letters(kafka_bootstrap, prefix + "dlq", 1)
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, prefix + "samples", 1)]
        counted = scrape(url).total("hap_streams_invalid_total", topic=prefix + "exposure", reason_kind="misrouted")
        exported, broker = lag_against_the_broker(url, kafka_bootstrap, prefix)
    finally:
        worker.stop()
    assert [(key, d["reason_kind"], d["partition"], d["details"]) for key, d in dlq] == [
        (rid.encode(), "misrouted", (right + 1) % 4, {"expected_partition": right, "partitions": 4})]
    assert counted == 1
    assert exported == broker, (exported, broker)  # every partition of the three input topics (None: not exported)
    # the ranking event alone joined: a group without the misrouted exposure
    assert [(g.request_id, [i.source for i in g.items if i.item_id == "i1"]) for g in groups] == [(rid, [])]


def lag_against_the_broker(url: str, bootstrap: str, prefix: str, timeout_s: float = 20.0
                           ) -> tuple[dict[tuple[str, str], float | None], dict[tuple[str, str], float]]:
    """The worker's ``hap_streams_consumer_lag_records`` per (topic, partition) and the broker's end minus
    committed offsets of its group, once they agree (the worker commits each second and reads the lag
    every 5 s) or at ``timeout_s``."""
    from deploy.scrape import scrape

    group = f"hap-streams-{prefix.rstrip('.')}"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(prefix + t, p) for t in ("ranking", "exposure", "items") for p in range(4)]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            text = scrape(url)
            exported = {(t, str(p)): text.samples.get(("hap_streams_consumer_lag_records", tuple(sorted(
                {"group": group, "topic": t, "partition": str(p)}.items())))) for t, p in tps}
            ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
            broker = {(tp.topic, str(tp.partition)): float(ends[tp] - (consumer.committed(tp) or starts[tp]))
                      for tp in tps}
            if exported == broker or time.monotonic() > deadline:
                return exported, broker
            time.sleep(1.0)
    finally:
        consumer.close()
