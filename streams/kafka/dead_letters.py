"""Reading the dead-letter topic and replaying its letters (``hap dlq``).

A letter is named by where it sits in the dead-letter topic, ``PARTITION:OFFSET``. Replaying a
letter re-sends its original bytes, whole (checked against ``original_sha256``), to its original
topic, keyed as the contract keys that topic (``request_id``, or ``item_id`` for items; read from
the original value, else the letter's ``request_id``), so that it lands on the partition its
request's other events are on. A letter without its whole original (an orphan request, a copy
cut at :data:`~streams.contract.fields.DLQ_ORIGINAL_BYTES`) cannot be replayed and says so.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.contract.fields import TOPICS


@dataclasses.dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter: where it sits in the dead-letter topic, and its record."""

    partition: int
    offset: int
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    def original(self) -> bytes:
        """The original bytes, whole and verified; raises :class:`NotReplayable` otherwise."""
        encoded = self.record.get("original")
        if encoded is None:
            raise NotReplayable(f"no original bytes ({self.record.get('reason_kind')})")
        if self.record.get("original_truncated"):
            raise NotReplayable(f"only the first bytes of the original were kept "
                                f"({self.record.get('original_size')} bytes)")
        raw = base64.b64decode(encoded)
        if hashlib.sha256(raw).hexdigest() != self.record.get("original_sha256"):
            raise NotReplayable("the copy does not match original_sha256")
        return raw

    def destination(self, prefix: str) -> tuple[str, bytes | None]:
        """The original topic and the key the contract gives the original there."""
        topic = self.record.get("topic")
        if not topic:
            raise NotReplayable(f"no original topic ({self.record.get('reason_kind')})")
        key_field = TOPICS.get(topic.removeprefix(prefix), (None, None, "request_id"))[2]
        try:
            key = orjson.loads(self.original()).get(key_field)
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        key = key if isinstance(key, str) and key else self.record.get("request_id")
        return topic, key.encode() if key else None


class NotReplayable(ValueError):
    """A letter that cannot be replayed; the message says why."""


def read_letters(bootstrap: str, topic: str, *, timeout_s: float = 10.0, **options: Any) -> Iterator[Letter]:
    """Every letter of ``topic`` now, oldest first per partition (reads up to the end offsets taken at the start)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=int(timeout_s * 1000), **options)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
        remaining = {p for p, end in ends.items() if end > 0}
        for message in consumer:
            if message.offset < ends[message.partition]:
                yield Letter(message.partition, message.offset, orjson.loads(message.value))
            if message.offset >= ends[message.partition] - 1:
                remaining.discard(message.partition)
            if not remaining:
                return
    finally:
        consumer.close()


def replay(letters: list[Letter], bootstrap: str, prefix: str, **options: Any) -> list[tuple[Letter, str]]:
    """Re-send each letter's original bytes to its original topic; returns (letter, outcome) per letter,
    the outcome ``"replayed to TOPIC"`` or why not (a letter that cannot be replayed does not stop the others)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options)
    outcomes: list[tuple[Letter, str]] = []
    try:
        for letter in letters:
            try:
                topic, key = letter.destination(prefix)
                producer.send(topic, key=key, value=letter.original())
                outcomes.append((letter, f"replayed to {topic}"))
            except NotReplayable as exc:
                outcomes.append((letter, f"not replayed: {exc}"))
        producer.flush()
    finally:
        producer.close()
    return outcomes
