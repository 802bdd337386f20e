"""aiokafka's fetcher with the guard: a batch that cannot be decoded becomes marker records covering
its offsets (the first with the original bytes and the reason), and the batches around it still decode."""

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import UnsupportedCodecError
from aiokafka.record._crc32c import crc
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streams.kafka import decode_guard
from streams.kafka.decode_guard import GuardedRecords, undecodable_of

TP = TopicPartition("hap.ranking", 0)
NONE, GZIP, LZ4 = 0, 1, 3


def batch(base_offset: int, values: list[bytes], codec: int = GZIP) -> bytearray:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, 1_700_000_000_000 + i, f"r{base_offset + i}".encode(), value, [])
    raw = builder.build()
    raw[0:8] = base_offset.to_bytes(8, "big")
    return raw


def with_crc(raw: bytearray) -> bytearray:
    raw[17:21] = crc(raw[21:]).to_bytes(4, "big")  # CRC-32C of everything after the CRC field
    return raw


def corrupt_payload(raw: bytearray) -> bytearray:
    raw[61:] = b"\x00" * (len(raw) - 61)  # the compressed records: zeros, not a gzip stream
    return with_crc(raw)


def unknown_codec(raw: bytearray) -> bytearray:
    raw[22] = (raw[22] & ~0x07) | 0x05
    return with_crc(raw)


def consume(data: bytes, records_type=GuardedRecords, fetch_offset: int = 0) -> tuple[list, int]:
    decode_guard.install()
    parts = fetcher.PartitionRecords(TP, records_type(data), [], fetch_offset, None, None, True,
                                     fetcher.READ_UNCOMMITTED)
    out = list(parts)
    return out, parts.next_fetch_offset


@pytest.mark.parametrize("spoil", [corrupt_payload, unknown_codec, lambda raw: raw.__setitem__(70, raw[70] ^ 1) or raw],
                         ids=["corrupt-gzip", "unknown-codec", "crc-mismatch"])
def test_an_undecodable_batch_becomes_markers_and_the_next_batches_decode(spoil):
    bad = spoil(batch(3, [b"d", b"e", b"f"]))
    data = bytes(batch(0, [b"a", b"b", b"c"]) + bad + batch(6, [b"g", b"h"], NONE))
    records, next_offset = consume(data)
    assert [r.offset for r in records] == list(range(8))  # contiguous: Faust commits past the bad batch
    assert [r.value for r in records if undecodable_of(r.headers) is None] == [b"a", b"b", b"c", b"g", b"h"]
    markers = [r for r in records if undecodable_of(r.headers) is not None]
    assert [r.offset for r in markers] == [3, 4, 5]
    info = undecodable_of(markers[0].headers)
    assert (info.first_offset, info.last_offset, info.codec) == (3, 5, "gzip" if spoil is not unknown_codec
                                                                 else "unknown(5)")
    assert info.reason
    assert markers[0].value == bytes(bad) and markers[1].value == markers[2].value == b""
    assert next_offset == 8


def test_a_missing_codec_library_is_what_the_guard_catches(monkeypatch):
    """Without the guard the same batch raises out of the fetcher, every time it is fetched again."""
    data = bytes(batch(0, [b"x"], LZ4))
    monkeypatch.setattr("aiokafka.codec.cramjam", None)  # as in a virtualenv without the codec library
    with pytest.raises(UnsupportedCodecError):
        consume(data, MemoryRecords)
    records, next_offset = consume(data)
    assert "lz4" in undecodable_of(records[0].headers).reason and next_offset == 1


def test_a_fetch_from_inside_a_batch_skips_what_was_delivered():
    records, next_offset = consume(bytes(corrupt_payload(batch(10, [b"a", b"b", b"c"]))), fetch_offset=11)
    assert [r.offset for r in records] == [11, 12] and next_offset == 13  # offset 10 was delivered before
