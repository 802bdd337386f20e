"""The consumer lag a worker exports is the broker's: log-end offset minus the group's committed
offset per partition (no commit: every retained record), checked against the broker's own offsets."""

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from streams import metrics
from streams.kafka.lag import GroupLag
from streams.kafka.topics import ensure_topics


def test_the_lag_is_the_end_offset_minus_the_committed_offset(kafka_bootstrap, topic_prefix):
    topic, group = f"{topic_prefix}ranking", f"{topic_prefix}group"
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n, partition in enumerate([0] * 10 + [1] * 3):
        producer.send(topic, key=b"k", value=b"%d" % n, partition=partition)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "", -1)})  # partition 1: nothing committed
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
    metrics.export_lag(group, lags)
    assert {p: REGISTRY.get_sample_value("hap_streams_consumer_lag_records",
                                         {"group": group, "topic": topic, "partition": str(p)}) for p in (0, 1)} \
        == {0: 6, 1: 3}
    metrics.export_lag(group, {(topic, 0): 0})  # a partition no longer reported is removed
    assert REGISTRY.get_sample_value("hap_streams_consumer_lag_records",
                                     {"group": group, "topic": topic, "partition": "1"}) is None
