"""The whole catalogue on every worker: ``items`` read from all its partitions, outside the group.

``gn`` negatives are drawn from the candidate pool, which must hold the whole catalogue. In the
consumer group, each of N workers owns about 1/N of the partitions of ``items``; a pool fed by
those alone would see 1/N of the catalogue. :class:`CatalogueFollower` is a plain aiokafka
consumer with no group: it is assigned every partition of ``items``, starts at the earliest
retained offset, and follows the topic while the worker runs, handing each fetched batch to a
callback (:meth:`streams.join.joiner.Joiner.catalogue`, which fills the pool). It commits nothing, so a
restarted worker reads the retained catalogue again; partitions added to the topic later are
picked up within ``refresh_s`` (and the others read again from their start then: adding an item
twice changes nothing).

Invalid item records are dead-lettered once, by the worker that owns their partition in the
group (the ``catalogue`` agent of :mod:`streams.worker.app`, which commits past them); the follower skips
them.

Lifecycle: :meth:`run` is a coroutine that returns only when cancelled (the worker's stop), and
stops its consumer on the way out. A broker that is unreachable is retried by aiokafka; the pool
keeps what it had meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger("hap.streams")


@dataclasses.dataclass
class CatalogueFollower:
    """Reads every partition of ``topic`` from its start, for ever; ``on_records`` gets each
    fetched batch (records of one partition in offset order)."""

    bootstrap: str
    topic: str
    on_records: Callable[[Sequence[Any]], None]
    security: KafkaSecurity = PLAINTEXT
    max_bytes: int = 1 << 20  #: the most bytes one fetch brings (and of one record)
    refresh_s: float = 30.0  #: how often the topic's partitions are listed again

    async def run(self) -> None:
        options = self.security.aiokafka_options()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=self.max_bytes, max_partition_fetch_bytes=self.max_bytes,
            **options)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **options)
        await consumer.start()
        try:
            await admin.start()
            assigned: set[TopicPartition] = set()
            loop = asyncio.get_running_loop()
            checked = float("-inf")
            while True:
                if loop.time() - checked > self.refresh_s:
                    checked = loop.time()
                    partitions = await self._partitions(admin)
                    if partitions - assigned:
                        assigned |= partitions
                        consumer.assign(sorted(assigned))
                        log.info("catalogue: following %d partitions of %s", len(assigned), self.topic)
                if not assigned:
                    await asyncio.sleep(1.0)
                    continue
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for records in batches.values():
                    self.on_records(records)
        finally:
            await admin.close()
            await consumer.stop()

    async def _partitions(self, admin: AIOKafkaAdminClient) -> set[TopicPartition]:
        [topic] = await admin.describe_topics([self.topic])
        return {TopicPartition(self.topic, p["partition"]) for p in topic.get("partitions", ())}
