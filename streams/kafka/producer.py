"""``EventProducer``: the client event producers use to write ranking, exposure and item events.

Batching, ``acks=all`` with idempotence, retries with backoff, delivery metrics, flush on close.
Every event is validated before it is sent, against the worker's contract
(:mod:`streams.contract.schemas`), plus the worker's bound on event times ahead of now
(:data:`streams.contract.validate.MAX_FUTURE_MS`: microseconds sent as milliseconds are refused):
what the SDK accepts, the worker accepts. A ranking or exposure event is checked in one pass in C,
converted into the typed structs of the worker's decoders and encoded from them
(:func:`streams.contract.schemas.encode_typed`, never wider than the decoders); only one those
decline (and an item update) is encoded and run through the worker's decoder, whose refusal is the
SDK's. A refused event raises
:class:`streams.contract.validate.InvalidEvent` (a ``ValueError``) with ``field`` (the field path,
e.g. ``candidates[3].item_id``), ``kind`` (``schema`` or ``future``) and ``reason``; nothing is
sent then. Keys are ``request_id`` (ranking, exposure) or ``item_id`` (items), so a request's
events share a partition: murmur2 of the key, as kafka-python's default partitioner, Java's and the
contract's (:class:`KeyPartitioner`, which remembers the hashes of recent keys: a request's events share one).

Compression: none by default (``compression=None``). The payloads are small JSON records and the
broker link is rarely the bottleneck; gzip cost the SDK 2.5x its throughput in ``bench/produce.py``.
Pass ``compression="gzip"`` (or ``"lz4"``/``"zstd"`` where the consumers have the codec installed)
for a thin link.

Authentication: pass ``security`` (:class:`streams.kafka.security.KafkaSecurity`, e.g.
``Settings.load().kafka_security``) for TLS or SASL brokers.

Lifecycle: construct (connects, raises :class:`ProducerUnavailable` when no broker answers),
``send_*`` any number of times, ``close()`` once (flushes); never call ``send_*`` after close.
A broker outage is ridden out by retries; a ``send_*`` that cannot get metadata within
``max_block_ms`` (10 s) and a ``close()`` that cannot deliver everything within ``timeout_s``
raise :class:`ProducerUnavailable`: an event is never dropped without an error and a count
(``failed``, ``hap_producer_errors_total``; the counts follow the broker's answers every
:data:`SWEEP_EVERY` events and on ``flush()``).

Examples
--------
>>> with EventProducer("127.0.0.1:9092") as producer:          # doctest: +SKIP
...     producer.send_ranking(ranking_event)
...     producer.send_exposure(exposure_event)
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner import DefaultPartitioner, Partitioner
from kafka.partitioner.default import murmur2
from prometheus_client import Counter

from streams.contract.schemas import (
    ExposureEvent,
    ItemUpdate,
    RankingEvent,
    decode_exposure,
    decode_item,
    decode_ranking_columns,
    encode,
    encode_typed,
)
from streams.contract.validate import MAX_FUTURE_MS, InvalidEvent, check_not_future
from streams.kafka.security import PLAINTEXT, KafkaSecurity
from streams.kafka.topics import record_limits

__all__ = ["EventProducer", "InvalidEvent", "KeyPartitioner", "ProducerUnavailable", "encode_checked"]

#: the sent and error counters catch up with the broker's answers every this many events (and on flush)
SWEEP_EVERY = 1000
SENT = Counter("hap_producer_sent", "Events acknowledged by the broker", ["topic"])
ERRORS = Counter("hap_producer_errors", "Events the broker did not acknowledge", ["topic"])
BYTES = Counter("hap_producer_bytes", "Payload bytes sent", ["topic"])


_DECODERS: dict[type, Callable[[bytes], Any]] = {
    RankingEvent: decode_ranking_columns, ExposureEvent: decode_exposure, ItemUpdate: decode_item}


def encode_checked(event: RankingEvent | ExposureEvent | ItemUpdate, *, now_ms: int | None = None,
                   max_future_ms: int = MAX_FUTURE_MS) -> bytes:
    """The wire bytes of ``event`` once the worker's decoder for its topic accepts them and its
    event time is at most ``max_future_ms`` ahead of ``now_ms`` (default: now); raises :class:`InvalidEvent`.

    >>> try:
    ...     encode_checked(ExposureEvent("r1", "u1", "i1", 5, "exposure"))
    ... except InvalidEvent as e:
    ...     print(e.field, e.kind)
    position schema
    """
    raw = encode_typed(event) if type(event) is not ItemUpdate else None
    if raw is None:  # the worker's decoder says why (or accepts what the typed structs declined)
        raw = encode(event)
        _DECODERS[type(event)](raw)
    check_not_future(event.ts_ms, int(time.time() * 1000) if now_ms is None else now_ms, max_future_ms)
    return raw


class KeyPartitioner(Partitioner):
    """kafka-python's default partitioner (murmur2 of the key, modulo the topic's partitions; no key: one
    at random), with the hashes of the last ``keys`` keys remembered: murmur2 runs in Python (a few µs a
    key) and the events of one request share its key. Same partitions as the default:

    >>> class Cluster:  # what the partitioners ask of kafka-python's ClusterMetadata: a topic of 4 partitions
    ...     def topics(self): return {"t"}
    ...     def partitions_for_topic(self, topic): return {0, 1, 2, 3}
    ...     available_partitions_for_topic = partitions_for_topic
    >>> keys = [f"req-{i}".encode() for i in range(100)]
    >>> ours = [KeyPartitioner().partition("t", None, k, None, None, Cluster()) for k in keys]
    >>> ours == [DefaultPartitioner().partition("t", None, k, None, None, Cluster()) for k in keys]
    True
    """

    def __init__(self, keys: int = 1 << 16) -> None:
        self._hash = functools.lru_cache(maxsize=keys)(murmur2)

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any,
                  cluster: Any) -> int:
        if serialized_key is None:
            return DefaultPartitioner().partition(topic, key, serialized_key, value, serialized_value, cluster)
        return (self._hash(serialized_key) & 0x7FFFFFFF) % len(cluster.partitions_for_topic(topic))


class ProducerUnavailable(RuntimeError):
    """No Kafka broker answered at the given bootstrap address."""


class EventProducer:
    """A batching, idempotent producer of the pipeline's input topics."""

    def __init__(self, bootstrap: str, *, topic_prefix: str = "hap.", linger_ms: int = 20,
                 batch_size: int = 256 * 1024, retries: int = 10, compression: str | None = None,
                 security: KafkaSecurity = PLAINTEXT, max_future_ms: int = MAX_FUTURE_MS,
                 **kafka_config: Any) -> None:
        self.prefix = topic_prefix
        self.failed = 0
        self.compression = compression
        self.max_future_ms = max_future_ms
        self._by_topic: dict[str, tuple[Any, Any]] = {}
        self._pending: deque[tuple[Any, str, int]] = deque()  # (future, topic, bytes) not counted yet
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms,
                batch_size=batch_size, compression_type=self.compression, retries=retries,
                retry_backoff_ms=200, request_timeout_ms=30_000, max_block_ms=10_000,
                max_request_size=record_limits()[0], partitioner=KeyPartitioner(), **security.client_options(),
                **kafka_config,
            )
        except KafkaError:
            raise ProducerUnavailable(f"no Kafka broker answers at {bootstrap}") from None

    def send_ranking(self, event: RankingEvent) -> None:
        """Validate and send a ranking event (raises :class:`InvalidEvent`, sending nothing)."""
        self._send("ranking", event.request_id, encode_checked(event, max_future_ms=self.max_future_ms))

    def send_exposure(self, event: ExposureEvent) -> None:
        """Validate and send an exposure or feedback event (raises :class:`InvalidEvent`, sending nothing)."""
        self._send("exposure", event.request_id, encode_checked(event, max_future_ms=self.max_future_ms))

    def send_item(self, update: ItemUpdate) -> None:
        """Validate and send an item update (raises :class:`InvalidEvent`, sending nothing)."""
        self._send("items", update.item_id, encode_checked(update, max_future_ms=self.max_future_ms))

    def send_raw(self, topic: str, key: str, value: bytes) -> None:
        """Send pre-encoded bytes to ``prefix + topic``, unchecked (for replays and tests of bad input)."""
        self._send(topic, key, value)

    def _send(self, topic: str, key: str, value: bytes) -> None:
        full = self.prefix + topic
        try:
            future = self._producer.send(full, key=key.encode(), value=value)
        except KafkaError as exc:  # no metadata within max_block_ms: the broker is gone
            self._failed(full)
            raise ProducerUnavailable(f"cannot send to {full}: {exc}") from exc
        self._pending.append((future, full, len(value)))
        if len(self._pending) >= SWEEP_EVERY:
            self._sweep()

    def _sweep(self) -> None:
        """Count the events the broker answered, oldest first, up to the first one still in flight.

        One look per event from the sending thread instead of two callbacks per event on the I/O
        thread (which took a quarter of the SDK's throughput in ``bench/produce.py``); the counters
        move once per topic and sweep."""
        pending = self._pending
        acknowledged: dict[str, list[int]] = {}  # topic -> [events, bytes]
        while pending and pending[0][0].is_done:
            future, topic, size = pending.popleft()
            if future.failed():
                self._failed(topic)
            else:
                counts = acknowledged.get(topic)
                if counts is None:
                    counts = acknowledged[topic] = [0, 0]
                counts[0] += 1
                counts[1] += size
        for topic, (events, size) in acknowledged.items():
            sent, sent_bytes = self._counters(topic)
            sent.inc(events)
            sent_bytes.inc(size)

    def _counters(self, topic: str) -> tuple[Any, Any]:
        """The topic's sent and bytes counters (looked up once per topic, not per sweep)."""
        counters = self._by_topic.get(topic)
        if counters is None:
            counters = self._by_topic[topic] = (SENT.labels(topic), BYTES.labels(topic))
        return counters

    def _failed(self, topic: str) -> None:
        self.failed += 1
        ERRORS.labels(topic).inc()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every sent event is acknowledged (or failed)."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise ProducerUnavailable(f"flush failed: {exc}") from exc
        finally:
            self._sweep()

    def close(self, timeout_s: float = 120.0) -> None:
        """Flush (at most ``timeout_s``) and release the connection; raises
        :class:`ProducerUnavailable` when events were not delivered."""
        try:
            self.flush(timeout_s)
        except ProducerUnavailable:
            with contextlib.suppress(KafkaError):  # kafka-python re-raises the flush timeout here
                self._producer.close(timeout=0)
            raise
        self._producer.close()
        if self.failed:
            raise ProducerUnavailable(f"{self.failed} events were not acknowledged by the broker")

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
