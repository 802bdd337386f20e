"""No poison pill: a Kafka record batch the worker cannot decode becomes a dead letter, not a crash.

aiokafka decodes a fetched record batch lazily, inside ``getmany``; a batch it cannot decode
(a codec whose library is missing, a corrupt compressed payload, a CRC mismatch, an unreadable
header) raises out of the fetch, crashes the Faust worker, and a fresh worker fetches the same
batch from the same committed offset and crashes again.

:func:`install` wraps the fetched data of every aiokafka consumer in this process
(:class:`GuardedRecords` in place of ``aiokafka.consumer.fetcher.MemoryRecords``). A batch that
fails is replaced by one *marker* record per offset it covers (from the first offset not yet
delivered to its last), so offsets stay contiguous and Faust commits past the batch like any
other records. Every marker carries the header :data:`UNDECODABLE_HEADER`, a JSON
:class:`Undecodable`; the first marker's value is the batch's original bytes (empty when they
exceed :data:`MAX_ORIGINAL_BYTES`), the others' values are empty. The agent dead-letters the
batch once, on its first marker (:func:`undecodable_of`), and acknowledges the rest.

Examples
--------
>>> u = Undecodable("lz4: codec library missing", "lz4", 10, 12)
>>> decode_marker_header(encode_marker_header(u)) == u
True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import orjson

UNDECODABLE_HEADER = "hap-undecodable"
MAX_ORIGINAL_BYTES = 512 * 1024  # a DLQ record holds them base64-encoded, under the broker's 1 MiB cap
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_V2_HEADER_BYTES = 61
log = logging.getLogger("hap.streams")


@dataclasses.dataclass(frozen=True, slots=True)
class Undecodable:
    """What a marker record says about the batch it stands for."""

    reason: str
    codec: str
    first_offset: int
    last_offset: int


def encode_marker_header(info: Undecodable) -> bytes:
    return orjson.dumps(info)


def decode_marker_header(raw: bytes) -> Undecodable:
    return Undecodable(**orjson.loads(raw))


def undecodable_of(headers: Any) -> Undecodable | None:
    """The :class:`Undecodable` of a marker record's headers (a list of pairs or a mapping), else None."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for key, value in items:
        if key == UNDECODABLE_HEADER and value is not None:
            return decode_marker_header(bytes(value))
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Marker:
    """Quacks like an aiokafka record: what the fetcher turns into a ``ConsumerRecord``."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    checksum: None = None


def _codec(raw: bytes | memoryview) -> str:
    """The compression codec named by a batch's attributes (v2: bytes 21-22; v0/v1: byte 17)."""
    if len(raw) >= _V2_HEADER_BYTES and raw[16] >= 2:
        return CODECS.get(raw[22] & 0x07, f"unknown({raw[22] & 0x07})")
    if len(raw) > 17:
        return CODECS.get(raw[17] & 0x07, f"unknown({raw[17] & 0x07})")
    return "unknown"


def _markers(raw: bytes | memoryview, reason: str, first: int, last: int, timestamp: int) -> Iterator[_Marker]:
    info = Undecodable(reason, _codec(raw), first, last)
    log.error("undecodable record batch, offsets %d..%d (%s): %s; dead-lettered, consumption goes on",
              first, last, info.codec, reason)
    headers = [(UNDECODABLE_HEADER, encode_marker_header(info))]
    original = bytes(raw) if len(raw) <= MAX_ORIGINAL_BYTES else b""
    for offset in range(first, last + 1):
        yield _Marker(offset, timestamp, 0, None, original if offset == first else b"", headers)


class GuardedBatch:
    """One fetched batch; iterating it yields its records, or markers from where decoding failed."""

    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw
        self._crc_error: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # control batches are read with next() (transactional reads)
        return next(self._batch)

    def validate_crc(self) -> bool:
        """Always passes; a mismatch turns the batch into markers instead of raising in the fetcher."""
        try:
            ok = self._batch.validate_crc()
        except Exception as exc:  # noqa: BLE001 - any failure to check is a failure to decode
            ok, self._crc_error = False, repr(exc)
        if not ok and self._crc_error is None:
            self._crc_error = "CRC mismatch"
        return True

    def __iter__(self) -> Iterator[Any]:
        last = int.from_bytes(self._raw[0:8], "big", signed=True) - 1
        try:
            if self._crc_error is not None:
                raise ValueError(self._crc_error)
            for record in self._batch:
                last = record.offset
                yield record
        except Exception as exc:  # noqa: BLE001 - whatever breaks decoding, the batch is undecodable
            end = self._batch.next_offset - 1
            yield from _markers(self._raw, f"{type(exc).__name__}: {exc}", last + 1, max(end, last + 1),
                                _first_timestamp(self._raw))


class _UnreadableBatch:
    """A batch whose header aiokafka could not read: markers for the offsets its header names."""

    is_control_batch = False
    is_transactional = False
    producer_id = None

    def __init__(self, raw: memoryview, error: Exception) -> None:
        self._raw = raw
        self._error = error
        self.base_offset = int.from_bytes(raw[0:8], "big", signed=True) if len(raw) >= 8 else 0
        delta = int.from_bytes(raw[23:27], "big", signed=True) if len(raw) >= _V2_HEADER_BYTES and raw[16] >= 2 else 0
        self.next_offset = self.base_offset + max(delta, 0) + 1

    def validate_crc(self) -> bool:
        return True

    def __iter__(self) -> Iterator[_Marker]:
        return _markers(self._raw, f"{type(self._error).__name__}: {self._error}", self.base_offset,
                        self.next_offset - 1, _first_timestamp(self._raw))


def _first_timestamp(raw: memoryview) -> int:
    return int.from_bytes(raw[27:35], "big", signed=True) if len(raw) >= _V2_HEADER_BYTES and raw[16] >= 2 else -1


class GuardedRecords:
    """Stands in for aiokafka's ``MemoryRecords``: the same batches, each wrapped in a :class:`GuardedBatch`."""

    _inner_type: Any = None  # aiokafka's MemoryRecords, set by install()

    def __init__(self, data: bytes) -> None:
        self._inner = self._inner_type(data)
        self._data = memoryview(data)
        self._pos = 0
        self._broken = False

    def size_in_bytes(self) -> int:
        return self._inner.size_in_bytes()

    def has_next(self) -> bool:
        return not self._broken and self._inner.has_next()

    def next_batch(self) -> Any:
        start = self._pos
        length = int.from_bytes(self._data[start + 8:start + 12], "big", signed=True)
        self._pos = start + 12 + max(length, 0)
        raw = self._data[start:self._pos]
        try:
            batch = self._inner.next_batch()
        except Exception as exc:  # noqa: BLE001 - the rest of this fetch is unreadable; refetched after it
            self._broken = True
            return _UnreadableBatch(raw, exc)
        return None if batch is None else GuardedBatch(batch, raw)


def install() -> None:
    """Guard every aiokafka consumer of this process (idempotent)."""
    from aiokafka.consumer import fetcher

    if fetcher.MemoryRecords is not GuardedRecords:
        GuardedRecords._inner_type = fetcher.MemoryRecords
        fetcher.MemoryRecords = GuardedRecords
