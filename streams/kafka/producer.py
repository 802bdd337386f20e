"""``EventProducer``: the client event producers use to write ranking, exposure and item events.

Batching and compression, ``acks=all`` with idempotence, retries with backoff, delivery
metrics, flush on close. Records are validated by encoding them through
:mod:`streams.contract.schemas`; keys are ``request_id`` (ranking, exposure) or ``item_id`` (items),
so a request's events share a partition.

Authentication: pass ``security`` (:class:`streams.kafka.security.KafkaSecurity`, e.g.
``Settings.load().kafka_security``) for TLS or SASL brokers.

Lifecycle: construct (connects, raises :class:`ProducerUnavailable` when no broker answers),
``send_*`` any number of times, ``close()`` once (flushes); never call ``send_*`` after close.
A broker outage is ridden out by retries; a ``send_*`` that cannot get metadata within
``max_block_ms`` (10 s) and a ``close()`` that cannot deliver everything within ``timeout_s``
raise :class:`ProducerUnavailable`: an event is never dropped without an error and a count
(``failed``, ``hap_producer_errors_total``).

Examples
--------
>>> with EventProducer("127.0.0.1:9092") as producer:          # doctest: +SKIP
...     producer.send_ranking(ranking_event)
...     producer.send_exposure(exposure_event)
"""

from __future__ import annotations

import contextlib
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter

from streams.contract.schemas import ExposureEvent, ItemUpdate, RankingEvent, encode
from streams.kafka.security import PLAINTEXT, KafkaSecurity
from streams.kafka.topics import record_limits

SENT = Counter("hap_producer_sent", "Events acknowledged by the broker", ["topic"])
ERRORS = Counter("hap_producer_errors", "Events the broker did not acknowledge", ["topic"])
BYTES = Counter("hap_producer_bytes", "Payload bytes sent", ["topic"])


class ProducerUnavailable(RuntimeError):
    """No Kafka broker answered at the given bootstrap address."""


class EventProducer:
    """A batching, idempotent producer of the pipeline's input topics."""

    def __init__(self, bootstrap: str, *, topic_prefix: str = "hap.", linger_ms: int = 20,
                 batch_size: int = 256 * 1024, retries: int = 10, compression: str = "gzip",
                 security: KafkaSecurity = PLAINTEXT, **kafka_config: Any) -> None:
        self.prefix = topic_prefix
        self.failed = 0
        self.compression = compression  # gzip: every consumer (kafka-python, aiokafka/Faust) decodes it
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms,
                batch_size=batch_size, compression_type=self.compression, retries=retries,
                retry_backoff_ms=200, request_timeout_ms=30_000, max_block_ms=10_000,
                max_request_size=record_limits()[0], **security.client_options(), **kafka_config,
            )
        except KafkaError:
            raise ProducerUnavailable(f"no Kafka broker answers at {bootstrap}") from None

    def send_ranking(self, event: RankingEvent) -> None:
        self._send("ranking", event.request_id, encode(event))

    def send_exposure(self, event: ExposureEvent) -> None:
        self._send("exposure", event.request_id, encode(event))

    def send_item(self, update: ItemUpdate) -> None:
        self._send("items", update.item_id, encode(update))

    def send_raw(self, topic: str, key: str, value: bytes) -> None:
        """Send pre-encoded bytes to ``prefix + topic`` (for replays and tests of bad input)."""
        self._send(topic, key, value)

    def _send(self, topic: str, key: str, value: bytes) -> None:
        full = self.prefix + topic
        try:
            future = self._producer.send(full, key=key.encode(), value=value)
        except KafkaError as exc:  # no metadata within max_block_ms: the broker is gone
            self._failed(full)
            raise ProducerUnavailable(f"cannot send to {full}: {exc}") from exc
        future.add_callback(lambda _meta: (SENT.labels(full).inc(), BYTES.labels(full).inc(len(value))))
        future.add_errback(lambda _exc: self._failed(full))

    def _failed(self, topic: str) -> None:
        self.failed += 1
        ERRORS.labels(topic).inc()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every sent event is acknowledged (or failed)."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise ProducerUnavailable(f"flush failed: {exc}") from exc

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
