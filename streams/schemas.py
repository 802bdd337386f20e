"""Typed records of the Kafka topics and their JSON wire format (``schema_version`` 1).

``decode_*`` functions validate strictly and raise only :class:`InvalidEvent`, whose reason
names the field path. ``encode`` writes any record as compact JSON.

Examples
--------
>>> ev = RankingEvent("r1", "u1", 1000, [Candidate("i1", "hot", 0, 0.9, 0, 0.8, "video")])
>>> decode_ranking(encode(ev)) == ev
True
>>> decode_ranking(b'{"schema_version": 1, "request_id": "r1"}')
Traceback (most recent call last):
...
streams.validate.InvalidEvent: user_id: expected string, got NoneType
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from streams.validate import (
    InvalidEvent,
    features,
    opt_bool,
    opt_float,
    opt_int,
    req_int,
    req_list,
    req_mapping,
    req_str,
    user_features,
)

SCHEMA_VERSION = 1
SOURCES = ("exp_pos", "exp_neg", "rn", "prn", "gn")
FEEDBACK_KINDS = ("click", "like", "comment", "share")

__all__ = [
    "SCHEMA_VERSION", "SOURCES", "Limits", "InvalidEvent", "Candidate", "RankingEvent", "ExposureEvent",
    "ItemUpdate", "SampleItem", "SampleGroup", "decode_ranking", "decode_exposure", "decode_item",
    "decode_sample_group", "encode", "is_positive",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Size caps applied while decoding."""

    max_candidates: int = 5000
    max_message_bytes: int = 1 << 20
    max_history: int = 500


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    item_id: str
    channel: str
    prerank_pos: int
    prerank_score: float
    rank_pos: int | None
    rank_score: float | None
    content_type: str


@dataclasses.dataclass(frozen=True, slots=True)
class RankingEvent:
    """One pre-ranking/ranking request (topic ``hap.ranking``, key ``request_id``)."""

    request_id: str
    user_id: str
    ts_ms: int
    candidates: list[Candidate]
    user_features: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ExposureEvent:
    """An exposure (``type="exposure"``, ``position``) or feedback (``type="feedback"``)."""

    request_id: str
    user_id: str
    item_id: str
    ts_ms: int
    type: str
    position: int | None = None
    click: bool = False
    like: bool = False
    comment: bool = False
    share: bool = False
    dwell_ms: int | None = None
    event_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ItemUpdate:
    """Item attributes (topic ``hap.items``): feeds the feature store and the global pool."""

    item_id: str
    content_type: str
    ts_ms: int
    features: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class SampleItem:
    item_id: str
    source: str
    label: int
    prerank_pos: int | None
    rank_pos: int | None
    content_type: str
    features: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class SampleGroup:
    """One hybrid sample group per request (topic ``hap.samples``)."""

    group_id: str
    request_id: str
    user_id: str
    event_ts_ms: int
    assembled_ts_ms: int
    items: list[SampleItem]
    user_features: dict[str, Any] = dataclasses.field(default_factory=dict)
    correction: bool = False


def is_positive(event: ExposureEvent, dwell_threshold_ms: int = 30_000) -> bool:
    """The positive-feedback rule: click, like, comment or share, or a long enough dwell."""
    return bool(
        event.click or event.like or event.comment or event.share
        or (event.dwell_ms is not None and event.dwell_ms >= dwell_threshold_ms)
    )


_VERSION_PREFIX = b'{"schema_version":%d,' % SCHEMA_VERSION


def encode(record: Any) -> bytes:
    """Compact JSON with ``schema_version`` first (orjson serializes the dataclass natively)."""
    return _VERSION_PREFIX + orjson.dumps(record)[1:]


def _load(raw: bytes, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_message_bytes:
        raise InvalidEvent(f"oversized: {len(raw)} bytes exceed the cap of {limits.max_message_bytes}", "oversized")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"json: {exc}", "json") from None
    obj = req_mapping(obj, "")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    return obj


def _candidate(obj: Any, path: str) -> Candidate:
    obj = req_mapping(obj, path)
    return Candidate(
        item_id=req_str(obj, "item_id", path),
        channel=req_str(obj, "channel", path, 64),
        prerank_pos=req_int(obj, "prerank_pos", path, 0),
        prerank_score=_req_float(obj, "prerank_score", path),
        rank_pos=opt_int(obj, "rank_pos", path, 0),
        rank_score=opt_float(obj, "rank_score", path),
        content_type=req_str(obj, "content_type", path, 64),
    )


def _req_float(obj: dict[str, Any], key: str, path: str) -> float:
    value = opt_float(obj, key, path)
    if value is None:
        raise InvalidEvent(f"{path}.{key}: expected number, got null")
    return value


def decode_ranking(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> RankingEvent:
    obj = _load(raw, limits)
    request_id, user_id = req_str(obj, "request_id"), req_str(obj, "user_id")
    ts_ms = req_int(obj, "ts_ms", "", 0)
    cands = req_list(obj, "candidates", "", limits.max_candidates)
    candidates = [_candidate(c, f"candidates[{i}]") for i, c in enumerate(cands)]
    if len({c.item_id for c in candidates}) != len(candidates):
        raise InvalidEvent("candidates: duplicate item_id")
    return RankingEvent(request_id, user_id, ts_ms, candidates,
                        user_features(obj, "user_features", limits.max_history))


def decode_exposure(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ExposureEvent:
    obj = _load(raw, limits)
    kind = obj.get("type")
    if kind not in ("exposure", "feedback"):
        raise InvalidEvent(f"type: expected 'exposure' or 'feedback', got {kind!r}")
    event = ExposureEvent(
        request_id=req_str(obj, "request_id"),
        user_id=req_str(obj, "user_id"),
        item_id=req_str(obj, "item_id"),
        ts_ms=req_int(obj, "ts_ms", "", 0),
        type=kind,
        position=opt_int(obj, "position", "", 0),
        click=opt_bool(obj, "click"),
        like=opt_bool(obj, "like"),
        comment=opt_bool(obj, "comment"),
        share=opt_bool(obj, "share"),
        dwell_ms=opt_int(obj, "dwell_ms", "", 0),
        event_id=None if obj.get("event_id") is None else req_str(obj, "event_id"),
    )
    if kind == "exposure" and event.position is None:
        raise InvalidEvent("position: required for an exposure")
    return event


def decode_item(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ItemUpdate:
    obj = _load(raw, limits)
    return ItemUpdate(
        item_id=req_str(obj, "item_id"),
        content_type=req_str(obj, "content_type", "", 64),
        ts_ms=req_int(obj, "ts_ms", "", 0),
        features=_numbers(obj, "features", ""),
    )


def _numbers(obj: dict[str, Any], key: str, path: str) -> dict[str, float]:
    out = features(obj, key, path)
    for name, value in out.items():
        if value is None:
            raise InvalidEvent(f"{path + '.' if path else ''}{key}.{name}: expected number, got null")
    return out


def _sample_item(obj: Any, path: str) -> SampleItem:
    obj = req_mapping(obj, path)
    source = obj.get("source")
    if source not in SOURCES:
        raise InvalidEvent(f"{path}.source: expected one of {', '.join(SOURCES)}, got {source!r}")
    label = obj.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise InvalidEvent(f"{path}.label: expected 0 or 1, got {label!r}")
    if (label == 1) != (source == "exp_pos"):
        raise InvalidEvent(f"{path}.label: {label} contradicts source {source}")
    return SampleItem(
        item_id=req_str(obj, "item_id", path),
        source=source,
        label=label,
        prerank_pos=opt_int(obj, "prerank_pos", path, 0),
        rank_pos=opt_int(obj, "rank_pos", path, 0),
        content_type=req_str(obj, "content_type", path, 64),
        features=_numbers(obj, "features", path),
    )


def decode_sample_group(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> SampleGroup:
    obj = _load(raw, limits)
    items = req_list(obj, "items", "", limits.max_candidates)
    return SampleGroup(
        group_id=req_str(obj, "group_id"),
        request_id=req_str(obj, "request_id"),
        user_id=req_str(obj, "user_id"),
        event_ts_ms=req_int(obj, "event_ts_ms", "", 0),
        assembled_ts_ms=req_int(obj, "assembled_ts_ms", "", 0),
        items=[_sample_item(it, f"items[{i}]") for i, it in enumerate(items)],
        user_features=user_features(obj, "user_features", limits.max_history),
        correction=opt_bool(obj, "correction"),
    )
