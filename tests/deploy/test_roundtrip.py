"""The fixtures' real broker and Redis answer the clients the components use."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer


def test_kafka_python_round_trip(kafka_bootstrap, topic_prefix):
    topic = f"{topic_prefix}roundtrip"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(100):
        producer.send(topic, key=str(i).encode(), value=f"event-{i}".encode())
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10000)
    values = sorted(int(m.value.decode().split("-")[1]) for m in consumer)
    consumer.close()
    assert values == list(range(100))


def test_aiokafka_round_trip(kafka_bootstrap, topic_prefix):
    topic = f"{topic_prefix}aio"

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        for i in range(50):
            await producer.send(topic, f"m{i}".encode())
        await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        got = []
        while len(got) < 50:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 20)
            got += [m.value for msgs in batch.values() for m in msgs]
        await consumer.stop()
        return got

    assert sorted(asyncio.run(run())) == sorted(f"m{i}".encode() for i in range(50))


def test_redis_set_get(redis_client):
    redis_client.set("hap:test", b"\x00value")
    assert redis_client.get("hap:test") == b"\x00value"
