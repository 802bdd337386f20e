"""The catalogue follower reads every partition of ``items`` without a consumer group, and picks
up a partition added to the topic while it runs."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewPartitions

from streams.contract.schemas import ItemUpdate, decode_item
from streams.join.catalogue import CatalogueFollower
from streams.kafka.producer import EventProducer
from streams.kafka.topics import ensure_topics


def _send(bootstrap: str, prefix: str, ids: range) -> None:
    producer = EventProducer(bootstrap, topic_prefix=prefix)
    for i in ids:
        producer.send_item(ItemUpdate(f"item-{i}", "video", 1_700_000_000_000))
    producer.close()


def test_every_partition_is_followed_and_a_new_one_is_picked_up(kafka_bootstrap, topic_prefix):
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=4)
    _send(kafka_bootstrap, topic_prefix, range(200))
    seen: list[str] = []
    partitions: set[int] = set()

    def take(records) -> None:
        seen.extend(decode_item(r.value).item_id for r in records)
        partitions.update(r.partition for r in records)

    follower = CatalogueFollower(kafka_bootstrap, topic_prefix + "items", take, refresh_s=1.0)

    async def follow_until(count: int, task: asyncio.Task | None = None) -> asyncio.Task:
        task = task or asyncio.create_task(follower.run())
        for _ in range(300):
            if len(set(seen)) >= count or task.done():
                break
            await asyncio.sleep(0.1)
        return task

    async def scenario() -> None:
        task = await follow_until(200)
        assert sorted(seen) == sorted(f"item-{i}" for i in range(200))  # each record once
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        admin.create_partitions({topic_prefix + "items": NewPartitions(total_count=6)})
        admin.close()
        await asyncio.to_thread(_send, kafka_bootstrap, topic_prefix, range(200, 400))  # some on the new ones
        await follow_until(400, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(set(seen)) == 400 and partitions == set(range(6))
