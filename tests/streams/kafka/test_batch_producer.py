"""The worker's batch producer: records land where Faust would have put them, in order, acknowledged."""

import asyncio

import faust
import pytest
from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaConsumer, TopicPartition

from streams.kafka.batch_producer import BatchProducer, RecordTooLarge, changelog_record, partition_of
from streams.kafka.topics import ensure_topics


def test_a_keyed_record_goes_to_the_partition_of_aiokafkas_default_partitioner():
    default = DefaultPartitioner()
    for key in [b"req-1", b"r", "ünïcode".encode(), bytes(range(256))]:
        assert partition_of(key, 4) == default(key, [0, 1, 2, 3], [0, 1, 2, 3])
    assert {partition_of(None, 4) for _ in range(200)} == {0, 1, 2, 3}  # no key: anywhere


def test_a_table_change_is_the_record_faust_would_write_to_its_changelog():
    app = faust.App("probe", broker="kafka://127.0.0.1:1", store="memory://")
    pending = app.Table("pending", default=None, partitions=4)
    emitted = app.Table("emitted", default=None, partitions=4, value_type=bytes)
    assert changelog_record(pending, 2, "r1", {"exposed": {"i1": 0}}) == \
        ("probe-pending-changelog", 2, b'"r1"', b'{"exposed":{"i1":0}}')
    assert changelog_record(emitted, 3, "r1", b"group") == ("probe-emitted-changelog", 3, b'"r1"', b"group")
    assert changelog_record(emitted, 3, "r1", None) == ("probe-emitted-changelog", 3, b'"r1"', None)  # tombstone


def test_records_are_acknowledged_in_order_within_their_partitions(kafka_bootstrap, topic_prefix):
    """Several batches per partition (each batch holds 16 KiB here), keyed and partitioned records,
    a tombstone: every record is in the topic when deliver returns, in the order given."""
    topic = f"{topic_prefix}samples"
    ensure_topics(kafka_bootstrap, topic_prefix)
    records = [(topic, None, f"req-{i % 7}".encode(), b"x" * 3000 + str(i).encode()) for i in range(60)]
    records += [(topic, 1, b"req-t", None)]

    async def deliver() -> dict[tuple[str, int], int]:
        producer = BatchProducer(kafka_bootstrap, max_bytes=16 * 1024)
        await asyncio.gather(producer.start(), producer.start())  # the worker calls it before every batch
        try:
            return await producer.deliver(records)
        finally:
            await producer.stop()

    last = asyncio.run(deliver())
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=5000, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    got, offsets = {tp.partition: [] for tp in partitions}, {}
    for message in consumer:
        got[message.partition].append((message.key, message.value))
        offsets[topic, message.partition] = message.offset
    consumer.close()
    assert last == offsets  # the offset of each partition's last record, several batches of it included
    for tp in partitions:
        expected = [(k, v) for _, p, k, v in records
                    if (p if p is not None else partition_of(k, len(partitions))) == tp.partition]
        assert got[tp.partition] == expected


def test_a_record_over_the_limit_is_refused_before_anything_of_the_call_is_produced(kafka_bootstrap, topic_prefix):
    """aiokafka's batch builder takes the first record of an empty batch whatever its size, and
    ``send_batch`` applies no ``max_request_size``: the guard is the producer's own, before the first
    produce of the call, and names the record (the topic accepts it, so without the guard it would be
    produced and the size limit never hold)."""
    topic = f"{topic_prefix}samples"
    ensure_topics(kafka_bootstrap, topic_prefix)
    records = [(topic, 0, b"small", b"x" * 100), (topic, 1, b"big", b"y" * 40_000)]

    async def deliver() -> None:
        producer = BatchProducer(kafka_bootstrap, max_bytes=16 * 1024)
        await producer.start()
        try:
            await producer.deliver(records)
        finally:
            await producer.stop()

    with pytest.raises(RecordTooLarge) as info:
        asyncio.run(deliver())
    assert (info.value.topic, info.value.partition, info.value.limit) == (topic, 1, 16 * 1024)
    assert info.value.size > 40_000 and not info.value.retriable
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=3000, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    consumer.seek_to_beginning()
    assert list(consumer) == []  # not even the small record of the same call
    consumer.close()
