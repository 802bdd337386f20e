"""The consumer lag a worker exports is the broker's: log-end offset minus the group's committed
offset per partition (no commit: every retained record), checked against the broker's own offsets."""

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from streams import metrics
from streams.kafka.lag import GroupLag, LagGauge, LagReporter
from streams.kafka.topics import ensure_topics


def _group_with_lag(bootstrap: str, prefix: str) -> tuple[str, str, KafkaConsumer]:
    """A topic of 2 partitions holding 10 and 3 records, and a group that committed 4 on partition 0."""
    topic, group = f"{prefix}ranking", f"{prefix}group"
    ensure_topics(bootstrap, prefix, partitions=2)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for n, partition in enumerate([0] * 10 + [1] * 3):
        producer.send(topic, key=b"k", value=b"%d" % n, partition=partition)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "", -1)})  # partition 1: nothing committed
    return topic, group, consumer


def test_the_lag_is_the_end_offset_minus_the_committed_offset(kafka_bootstrap, topic_prefix):
    topic, group, consumer = _group_with_lag(kafka_bootstrap, topic_prefix)
    reader = GroupLag(kafka_bootstrap, group, [topic])
    try:
        lags = reader.read()
    finally:
        reader.close()
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
    broker = {(tp.topic, tp.partition): ends[tp] - (consumer.committed(tp) or starts[tp]) for tp in tps}
    consumer.close()
    assert lags == broker == {(topic, 0): 6, (topic, 1): 3}
    metrics.CONSUMER_LAG.set(group, lags)
    assert {p: REGISTRY.get_sample_value("hap_streams_consumer_lag_records",
                                         {"group": group, "topic": topic, "partition": str(p)}) for p in (0, 1)} \
        == {0: 6, 1: 3}
    metrics.CONSUMER_LAG.set(group, {(topic, 0): 0})  # a partition no longer reported is removed
    assert REGISTRY.get_sample_value("hap_streams_consumer_lag_records",
                                     {"group": group, "topic": topic, "partition": "1"}) is None


def test_the_reporter_thread_sets_its_gauge_until_closed(kafka_bootstrap, topic_prefix):
    topic, group, consumer = _group_with_lag(kafka_bootstrap, topic_prefix)
    registry = CollectorRegistry()
    gauge = LagGauge(Gauge("lag_records", "lag", ["group", "topic", "partition"], registry=registry))
    reporter = LagReporter(kafka_bootstrap, group, [topic], gauge, every_s=0.2)
    reporter.start()
    try:
        deadline = time.monotonic() + 20
        while registry.get_sample_value("lag_records", {"group": group, "topic": topic, "partition": "1"}) is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(9, "", -1)})  # the next read follows
        consumer.close()
        while registry.get_sample_value("lag_records", {"group": group, "topic": topic, "partition": "0"}) != 1 \
                and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        reporter.close()
    assert not reporter.is_alive()
    assert {p: registry.get_sample_value("lag_records", {"group": group, "topic": topic, "partition": str(p)})
            for p in (0, 1)} == {0: 1, 1: 3}
