"""The dead-letter record (topic ``hap.dlq``, key ``request_id`` when known).

Every input the streams worker rejects becomes one :class:`DeadLetter`: why (``reason_kind``,
one of :data:`streams.contract.validate.REASON_KINDS`, and a precise ``reason``), where it came from
(``topic``, ``partition``, ``offset``) and the original bytes (base64), so that it can be fixed
and replayed. ``details`` holds what a kind adds (an undecodable batch's codec and offset range,
an orphan request's joined state).

A record is bounded whatever its input, so that it always fits the broker's size limit (a dead
letter the broker refuses would be lost): the copy holds at most
:data:`~streams.contract.fields.DLQ_ORIGINAL_BYTES` of the original, with the original's size and SHA-256;
the reason and the details are bounded too.

Examples
--------
>>> rec = DeadLetter("json", "json: unexpected character", "r1", "hap.ranking", 0, 7, b"{x")
>>> orjson.loads(rec.value())["original"]
'e3g='
>>> rec.key()
b'r1'
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

import orjson

from streams.contract.fields import DLQ_DETAILS_BYTES, DLQ_ORIGINAL_BYTES, DLQ_REASON_CHARS
from streams.contract.validate import REASON_KINDS

DLQ_SCHEMA_VERSION = 1
MAX_KEY_CHARS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    reason_kind: str
    reason: str
    request_id: str | None
    topic: str | None
    partition: int | None
    offset: int | None
    original: bytes | None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reason_kind not in REASON_KINDS:
            raise ValueError(f"reason_kind {self.reason_kind!r} is not one of {REASON_KINDS}")

    def key(self) -> bytes | None:
        """The record's Kafka key: its ``request_id`` (None when the input named none)."""
        return self.request_id.encode() if self.request_id else None

    def value(self) -> bytes:
        """The record's JSON value, bounded (see the module's docstring)."""
        original = self.original
        return orjson.dumps({
            "schema_version": DLQ_SCHEMA_VERSION, "reason_kind": self.reason_kind, "reason": _cut(self.reason),
            "request_id": self.request_id, "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "original": None if original is None else base64.b64encode(original[:DLQ_ORIGINAL_BYTES]).decode(),
            "original_size": None if original is None else len(original),
            "original_sha256": None if original is None else hashlib.sha256(original).hexdigest(),
            "original_truncated": original is not None and len(original) > DLQ_ORIGINAL_BYTES,
            "details": _bounded(self.details),
        })


def _cut(reason: str) -> str:
    return reason if len(reason) <= DLQ_REASON_CHARS else reason[:DLQ_REASON_CHARS - 3] + "..."


def _bounded(details: dict[str, Any]) -> dict[str, Any]:
    """``details``, or its size and digest when its JSON exceeds :data:`DLQ_DETAILS_BYTES`."""
    raw = orjson.dumps(details, option=orjson.OPT_NON_STR_KEYS)
    if len(raw) <= DLQ_DETAILS_BYTES:
        return details
    return {"omitted_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def request_id_of(key: bytes | None, value: bytes | None) -> str | None:
    """The request id of a rejected input: its Kafka key (producers key by ``request_id``), else the
    ``request_id`` field of its JSON value when that much parses; None when neither names one."""
    if key:
        text = key.decode("utf-8", "replace")
        return text if len(text) <= MAX_KEY_CHARS else None
    try:
        rid = orjson.loads(value or b"").get("request_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return rid if isinstance(rid, str) and 0 < len(rid) <= MAX_KEY_CHARS else None
