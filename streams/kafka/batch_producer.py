"""``BatchProducer``: how the streams worker hands a batch's records to Kafka, one produce batch
per partition.

The worker's outputs (groups, dead letters) and its table changes come in batches of
hundreds of records that it delivers together and waits for (see :mod:`streams.worker.app`).
Faust's ``Topic.send`` takes one record at a time: a pending message, its future, its
sensors, Faust's producer buffer, aiokafka's ``send`` and its future, per record. Here the
records are grouped by partition and appended to aiokafka batches (``create_batch``,
``send_batch``): one future per partition and batch.

Records keep what Faust would have made of them: a record without a partition goes where
aiokafka's default partitioner puts it (murmur2 of the key, as Kafka's Java client, so a
request's group lands where its other records do; a dead letter without a key: anywhere);
table changes name their changelog partition and are serialized by the table's own codecs
(:func:`changelog_record`).

Lifecycle: :meth:`start` (connects; calls after the first wait for its connection),
:meth:`deliver` any number of times (calls at the same time are independent: order is kept
among one call's records of a partition), :meth:`stop` once. :meth:`deliver` returns when the
broker acknowledged every record (``acks=all``, idempotent), with the offset of the last record it
stored in each partition (the streams worker keeps its changelogs' with its tables' local state),
and raises otherwise (a record then may or may not be stored: the caller replays the batch).

Examples
--------
>>> partition_of(b"req-1", 4) == partition_of(b"req-1", 4) and 0 <= partition_of(b"req-1", 4) < 4
True
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_zstd
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

#: (topic, partition or None for the key's, key or None, value or None for a tombstone)
Record = tuple[str, int | None, bytes | None, bytes | None]


class RecordTooLarge(ValueError):
    """A record bigger than the producer's ``max_bytes``: refused before anything of the
    :meth:`BatchProducer.deliver` call is produced. Not retriable: the same record is refused
    again; the records the worker produces are bounded below the limit by construction
    (groups: the join's caps; dead letters: :mod:`streams.contract.dlq`; table changes: the
    pending state's bounds), so this names a bug instead of the broker's opaque refusal."""

    retriable = False

    def __init__(self, topic: str, partition: int | None, size: int, limit: int) -> None:
        super().__init__(f"a record of {size} bytes for {topic}[{partition}] exceeds the producer's limit of {limit}")
        self.topic, self.partition, self.size, self.limit = topic, partition, size, limit


def partition_of(key: bytes | None, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``, as aiokafka's default partitioner says
    (murmur2, as Kafka's Java client; no key: one at random)."""
    return random.randrange(partitions) if key is None else (murmur2(key) & 0x7FFFFFFF) % partitions


def changelog_record(table: Any, partition: int, key: Any, value: Any) -> Record:
    """A Faust table's change as the record Faust's ``send_changelog`` would write (``value`` None:
    a tombstone)."""
    topic = table.changelog_topic
    key_bytes, _ = topic.prepare_key(key, table.key_serializer)
    value_bytes = None if value is None else topic.prepare_value(value, table.value_serializer)[0]
    return topic.get_topic_name(), partition, key_bytes, value_bytes


class BatchProducer:
    """Delivers lists of records, one aiokafka batch per partition (see the module).

    ``max_bytes``: the largest record, and the size of a batch (a larger record goes alone);
    ``options``: more keyword arguments for ``AIOKafkaProducer`` (security).
    """

    def __init__(self, bootstrap: str, *, max_bytes: int, **options: Any) -> None:
        self.bootstrap, self.max_bytes, self.options = bootstrap, max_bytes, options
        self.producer: AIOKafkaProducer | None = None
        self._started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Connect, on the event loop that will deliver; a later call (or one at the same time)
        waits for the first one's connection, or raises its error."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._connect())
        await self._started

    async def _connect(self) -> None:
        # zstd (when its library is installed): aiokafka compresses lz4 at level 9 (LZ4 HC), which
        # took 10-17% of the worker's py-spy samples; on the worker's groups zstd's level 3 is 6x as
        # fast and 1.4x as compact (docs/performance.md)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, max_batch_size=self.max_bytes,
            max_request_size=self.max_bytes, compression_type="zstd" if has_zstd() else None, **self.options)
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def deliver(self, records: Sequence[Record]) -> dict[tuple[str, int], int]:
        """Send ``records`` and wait until the broker acknowledged them all (order is kept within a
        partition); returns the offset of the last record stored per (topic, partition). Raises
        :class:`RecordTooLarge` before producing anything when one of them exceeds ``max_bytes``,
        else what aiokafka raises when it could not."""
        assert self.producer is not None, "deliver() before start()"
        for topic, partition, key, value in records:  # aiokafka's batches take any first record: the guard is here
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > self.max_bytes:
                raise RecordTooLarge(topic, partition, size, self.max_bytes)
        by_partition: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
        counts: dict[str, int] = {}  # partitions per topic, from the producer's metadata
        for topic, partition, key, value in records:
            if partition is None:
                if topic not in counts:
                    counts[topic] = len(await self.producer.partitions_for(topic))
                partition = partition_of(key, counts[topic])
            by_partition[topic, partition].append((key, value))
        sent, counts_sent = [], []  # a batch's future gives its first record's offset; its count, the last's
        for (topic, partition), pairs in by_partition.items():
            batch, count = self.producer.create_batch(), 0
            for key, value in pairs:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                    sent.append(await self.producer.send_batch(batch, topic, partition=partition))
                    counts_sent.append(count)
                    batch, count = self.producer.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
                count += 1
            sent.append(await self.producer.send_batch(batch, topic, partition=partition))
            counts_sent.append(count)
        last: dict[tuple[str, int], int] = {}
        for meta, count in zip(await asyncio.gather(*sent), counts_sent, strict=True):
            key = (meta.topic, meta.partition)
            last[key] = max(last.get(key, -1), meta.offset + count - 1)
        return last
