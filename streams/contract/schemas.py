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
streams.contract.validate.InvalidEvent: user_id: expected string, got NoneType
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Any, Literal

import msgspec
import orjson

from streams.contract.fields import (
    CANDIDATE,
    EXPOSURE,
    ID_CHARS,
    ITEM,
    RANKING,
    SAMPLE_GROUP,
    SAMPLE_ITEM,
    SCHEMA_VERSION,
    SOURCES,
    Limits,
    check,
    check_record,
    wire_type,
)
from streams.contract.validate import InvalidEvent, req_mapping, user_features

FEEDBACK_KINDS = ("click", "like", "comment", "share")

__all__ = [
    "SCHEMA_VERSION", "SOURCES", "Limits", "InvalidEvent", "Candidate", "RankingEvent", "ExposureEvent",
    "ItemUpdate", "SampleItem", "SampleGroup", "RankingColumns", "decode_ranking", "decode_ranking_columns",
    "decode_exposure", "decode_item", "decode_sample_group", "check_sample_group", "encode", "encode_typed",
    "is_positive", "with_ts",
]

DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Candidate:
    """One candidate of a ranking event. ``rank_pos`` and ``rank_score`` are optional (None: it did
    not reach ranking), so they may be left out: ``Candidate("i1", "hot", 0, 0.9, content_type="video")``;
    the positional form in wire order, ``Candidate("i1", "hot", 0, 0.9, 3, 0.5, "video")``, works too."""

    item_id: str
    channel: str
    prerank_pos: int
    prerank_score: float
    rank_pos: int | None
    rank_score: float | None
    content_type: str

    def __init__(self, item_id: str, channel: str, prerank_pos: int, prerank_score: float,
                 rank_pos: int | None = None, rank_score: float | None = None, content_type: str | None = None) -> None:
        if content_type is None:
            raise TypeError("Candidate() missing required argument: 'content_type'")
        set_ = object.__setattr__  # frozen: as the generated __init__ does
        set_(self, "item_id", item_id)
        set_(self, "channel", channel)
        set_(self, "prerank_pos", prerank_pos)
        set_(self, "prerank_score", prerank_score)
        set_(self, "rank_pos", rank_pos)
        set_(self, "rank_score", rank_score)
        set_(self, "content_type", content_type)


@dataclasses.dataclass(frozen=True, slots=True)
class RankingEvent:
    """One pre-ranking/ranking request (topic ``hap.ranking``, key ``request_id``)."""

    request_id: str
    user_id: str
    ts_ms: int
    candidates: list[Candidate]
    user_features: dict[str, Any] = dataclasses.field(default_factory=dict)
    event_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RankingColumns:
    """A validated ranking event as the join keeps it: the candidates as one list per field it
    uses (no object per candidate; channels and scores were validated, then dropped).

    It serializes as a JSON object of its fields (orjson writes dataclasses natively), and
    :meth:`of` takes that object back.

    >>> cols = RankingColumns.of(RankingEvent("r1", "u1", 5, [Candidate("i1", "hot", 0, 0.9, None, None, "video")]))
    >>> cols.item_ids, cols.rank_pos, RankingColumns.of(orjson.loads(orjson.dumps(cols))) == cols
    (['i1'], [None], True)
    """

    request_id: str
    user_id: str
    ts_ms: int
    user_features: dict[str, Any]
    item_ids: list[str]
    prerank_pos: list[int]
    rank_pos: list[int | None]
    content_types: list[str]
    event_id: str | None = None

    @classmethod
    def of(cls, source: RankingEvent | RankingColumns | dict[str, Any]) -> RankingColumns:
        """The columns of a decoded event, or of the JSON object a table recovered (itself if already columns)."""
        if isinstance(source, RankingColumns):
            return source
        if isinstance(source, dict):
            return cls(**source)
        c = source.candidates
        return cls(source.request_id, source.user_id, source.ts_ms, source.user_features, [x.item_id for x in c],
                   [x.prerank_pos for x in c], [x.rank_pos for x in c], [x.content_type for x in c], source.event_id)


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
    event_id: str | None = None


class SampleItem(msgspec.Struct, frozen=True, gc=False):
    """One item of a sample group; each field's bounds are those of :data:`.fields.SAMPLE_ITEM`.

    Not tracked by Python's cycle collector (``gc=False``: it holds strings, numbers and a dict
    of numbers, never a cycle): a learner keeps hundreds of thousands of them alive, and each
    full collection would walk them all.
    """

    item_id: wire_type(SAMPLE_ITEM, "item_id")
    source: wire_type(SAMPLE_ITEM, "source")
    label: wire_type(SAMPLE_ITEM, "label")
    prerank_pos: wire_type(SAMPLE_ITEM, "prerank_pos")
    rank_pos: wire_type(SAMPLE_ITEM, "rank_pos")
    content_type: wire_type(SAMPLE_ITEM, "content_type")
    features: Annotated[dict[str, float], msgspec.Meta(max_length=256)] = {}


class SampleGroup(msgspec.Struct, frozen=True, gc=False):
    """One hybrid sample group per request (topic ``hap.samples``); bounds of :data:`.fields.SAMPLE_GROUP`.

    Untracked by the cycle collector, as :class:`SampleItem` is (its items and features hold no cycle).
    """

    group_id: wire_type(SAMPLE_GROUP, "group_id")
    request_id: wire_type(SAMPLE_GROUP, "request_id")
    user_id: wire_type(SAMPLE_GROUP, "user_id")
    event_ts_ms: wire_type(SAMPLE_GROUP, "event_ts_ms")
    assembled_ts_ms: wire_type(SAMPLE_GROUP, "assembled_ts_ms")
    items: list[SampleItem]
    user_features: dict[str, Any] = {}
    correction: bool = False


def is_positive(event: ExposureEvent, dwell_threshold_ms: int = 30_000) -> bool:
    """The positive-feedback rule: click, like, comment or share, or a long enough dwell."""
    return bool(
        event.click or event.like or event.comment or event.share
        or (event.dwell_ms is not None and event.dwell_ms >= dwell_threshold_ms)
    )


_VERSION_PREFIX = b'{"schema_version":%d,' % SCHEMA_VERSION


_ENCODER = msgspec.json.Encoder()


def encode(record: Any) -> bytes:
    """Compact JSON with ``schema_version`` first (a dataclass or a ``msgspec.Struct``, natively)."""
    return _VERSION_PREFIX + _ENCODER.encode(record)[1:]


_UNSTAMPED = b'"ts_ms":0,'


def with_ts(template: bytes, ts_ms: int) -> bytes:
    """The wire bytes of a ranking event encoded with ``ts_ms=0`` (``template``), its time set to ``ts_ms``:
    as encoding it with that time would write it. Its own ``ts_ms`` comes first after its two ids, and no
    string can hold ``"ts_ms":0,`` unescaped.

    >>> ev = RankingEvent("r1", "u1", 0, [Candidate("i1", "hot", 0, 0.9, content_type="video")])
    >>> with_ts(encode(ev), 1234) == encode(dataclasses.replace(ev, ts_ms=1234))
    True
    """
    if _UNSTAMPED not in template:
        raise ValueError("not the encoding of an event with ts_ms=0")
    return template.replace(_UNSTAMPED, b'"ts_ms":%d,' % ts_ms, 1)


def _check_size(raw: bytes, limits: Limits) -> None:
    if len(raw) > limits.max_message_bytes:
        raise InvalidEvent(f"oversized: {len(raw)} bytes exceed the cap of {limits.max_message_bytes}", "oversized")


#: a record framed by a Confluent (Schema Registry) serializer: magic byte 0, then a 4-byte schema id
_CONFLUENT_MAGIC = b"\x00"


def _load(raw: bytes, limits: Limits) -> dict[str, Any]:
    _check_size(raw, limits)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if raw.startswith(_CONFLUENT_MAGIC) and len(raw) > 5:
            schema_id = int.from_bytes(raw[1:5], "big")
            raise InvalidEvent(f"json: a Confluent Schema Registry frame (magic byte 0, schema id {schema_id}) is not "
                               "accepted: send the plain JSON value (docs/contracts.md, Producers)", "json") from None
        raise InvalidEvent(f"json: {exc}", "json") from None
    obj = req_mapping(obj, "")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        if version is None and "specversion" in obj:
            raise InvalidEvent(f"schema_version: a structured CloudEvent (specversion {obj['specversion']!r}) is not "
                               "accepted: send the event itself as the value, attributes as ce_ headers "
                               "(docs/contracts.md, Producers)")
        raise InvalidEvent(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    return obj


def _unique(ids: list[str], path: str) -> None:
    if len(set(ids)) != len(ids):
        raise InvalidEvent(f"{path}: duplicate item_id")


def decode_ranking(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> RankingEvent:
    return _ranking(_load(raw, limits), limits)


def _ranking(obj: dict[str, Any], limits: Limits) -> RankingEvent:
    v = check(obj, RANKING, "", limits)
    candidates = [Candidate(*c) for c in v["candidates"]]  # CANDIDATE lists the fields in Candidate's order
    _unique([c.item_id for c in candidates], "candidates")
    return RankingEvent(v["request_id"], v["user_id"], v["ts_ms"], candidates, v["user_features"], v["event_id"])


class _WireCandidate(msgspec.Struct, kw_only=True, gc=False):
    """A candidate as :func:`decode_ranking_columns` reads it in C (bounds: :data:`.fields.CANDIDATE`)."""

    item_id: wire_type(CANDIDATE, "item_id")
    channel: wire_type(CANDIDATE, "channel")
    prerank_pos: wire_type(CANDIDATE, "prerank_pos")
    prerank_score: wire_type(CANDIDATE, "prerank_score")
    rank_pos: wire_type(CANDIDATE, "rank_pos") = None
    rank_score: wire_type(CANDIDATE, "rank_score") = None
    content_type: wire_type(CANDIDATE, "content_type")


class _WireRanking(msgspec.Struct, kw_only=True, gc=False):
    """A ranking event as :func:`decode_ranking_columns` reads it in C (the bounds of :data:`.fields.RANKING`
    but the candidates' cap, which :class:`Limits` sets, and the user features, checked after)."""

    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    request_id: wire_type(RANKING, "request_id")
    user_id: wire_type(RANKING, "user_id")
    ts_ms: wire_type(RANKING, "ts_ms")
    candidates: list[_WireCandidate]
    user_features: dict[str, Any] | None = None
    event_id: wire_type(RANKING, "event_id") = None


_RANKING_DECODER = msgspec.json.Decoder(_WireRanking)


def decode_ranking_columns(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> RankingColumns:
    """As :func:`decode_ranking` (the same checks, the same reasons), into :class:`RankingColumns`.

    msgspec decodes and checks the event into typed structs in C; only an event that this fast
    path does not pass is checked field by field (:func:`decode_ranking`), which either finds
    its error and reason or accepts it (the fast path is never wider than the checks).

    >>> raw = encode(RankingEvent("r1", "u1", 5, [Candidate("i1", "hot", 0, 0.9, 3, 0.5, "video")]))
    >>> decode_ranking_columns(raw) == RankingColumns.of(decode_ranking(raw))
    True
    """
    _check_size(raw, limits)
    try:
        event = _RANKING_DECODER.decode(raw)
    except msgspec.DecodeError:  # a ValidationError too
        return RankingColumns.of(decode_ranking(raw, limits))  # raises the first error, with its reason
    candidates = event.candidates
    if len(candidates) > limits.max_candidates:
        return RankingColumns.of(decode_ranking(raw, limits))
    ids = [c.item_id for c in candidates]
    _unique(ids, "candidates")
    return RankingColumns(event.request_id, event.user_id, event.ts_ms,
                          user_features({"user_features": event.user_features}, "user_features", limits.max_history),
                          ids, [c.prerank_pos for c in candidates], [c.rank_pos for c in candidates],
                          [c.content_type for c in candidates], event.event_id)


class _WireExposure(msgspec.Struct, kw_only=True, gc=False):
    """An exposure or feedback event as :func:`decode_exposure` reads it in C (:data:`.fields.EXPOSURE`)."""

    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    type: wire_type(EXPOSURE, "type")
    request_id: wire_type(EXPOSURE, "request_id")
    user_id: wire_type(EXPOSURE, "user_id")
    item_id: wire_type(EXPOSURE, "item_id")
    ts_ms: wire_type(EXPOSURE, "ts_ms")
    position: wire_type(EXPOSURE, "position") = None
    click: bool = False
    like: bool = False
    comment: bool = False
    share: bool = False
    dwell_ms: wire_type(EXPOSURE, "dwell_ms") = None
    event_id: wire_type(EXPOSURE, "event_id") = None


_EXPOSURE_DECODER = msgspec.json.Decoder(_WireExposure)
_EXPOSURE_ORDER = [[f.name for f in EXPOSURE].index(f.name) for f in dataclasses.fields(ExposureEvent)]


def decode_exposure(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ExposureEvent:
    """An exposure or feedback event, validated: decoded by msgspec in C when it passes every
    bound; otherwise checked field by field, which finds the first error and its reason or
    accepts it (a ``schema_version`` of ``1.0``, say, which the struct refuses and the checks take)."""
    _check_size(raw, limits)
    try:
        w = _EXPOSURE_DECODER.decode(raw)
    except msgspec.DecodeError:  # a ValidationError too
        obj = _load(raw, limits)
        values = check_record(obj, EXPOSURE)  # the fast path of the checks; field by field finds the reason
        event = ExposureEvent(**check(obj, EXPOSURE, "", limits)) if values is None else \
            ExposureEvent(*map(values.__getitem__, _EXPOSURE_ORDER))
    else:
        event = ExposureEvent(w.request_id, w.user_id, w.item_id, w.ts_ms, w.type, w.position, w.click, w.like,
                              w.comment, w.share, w.dwell_ms, w.event_id)
    if event.type == "exposure" and event.position is None:
        raise InvalidEvent("position: required for an exposure")
    return event


#: a number the wire can carry: a Python float may be NaN or infinite (``encode`` writes those as null), JSON's not
_FINITE = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
#: user features as :func:`.validate.user_features` takes them: numbers or null, and the history's item ids
_USER_FEATURES = dict[str, _FINITE | None | list[Annotated[str, msgspec.Meta(min_length=1, max_length=ID_CHARS)]]]


def _typed(record: type, wire: type[msgspec.Struct], **types: Any) -> type[msgspec.Struct]:
    """A struct of ``record``'s fields, in its order (so it encodes as ``record`` does), each with the type and
    default of ``wire``'s field of that name (numbers finite), or of ``types``: ``msgspec.convert`` fills it from
    a record's attributes and checks every bound in C. A field of ``record`` that ``wire`` lacks is an error."""
    fields = {f.name: f for f in msgspec.structs.fields(wire)}

    def typed(name: str) -> Any:
        t = types.get(name, fields[name].type)
        return _FINITE if t is float else _FINITE | None if t == float | None else t

    return msgspec.defstruct(f"_Typed{record.__name__}", [(f.name, typed(f.name), fields[f.name].default)
                                                          for f in dataclasses.fields(record)], kw_only=True, gc=False)


_TypedCandidate = _typed(Candidate, _WireCandidate)
_TYPED: dict[type, type[msgspec.Struct]] = {
    RankingEvent: _typed(RankingEvent, _WireRanking, candidates=list[_TypedCandidate],
                         user_features=_USER_FEATURES | None),
    ExposureEvent: _typed(ExposureEvent, _WireExposure),
}


def encode_typed(event: RankingEvent | ExposureEvent, limits: Limits = DEFAULT_LIMITS) -> bytes | None:
    """The wire bytes of ``event`` when typed structs take it, in C, and the rules across fields hold
    (unique item ids, an exposure's position, the caps); None when they do not. Never wider than the
    decoders: bytes returned here, :func:`decode_ranking_columns` / :func:`decode_exposure` accept; a None
    says nothing (:func:`encode` and the decoder then say whether and why they refuse). The bytes are
    :func:`encode`'s but that a number field given an int carries it as a float (``3.0``).

    One conversion and one encoding of the struct, no JSON parsed: what the producer SDK checks with.

    >>> encode_typed(ExposureEvent("r1", "u1", "i1", 5, "exposure", position=0))[:40]
    b'{"schema_version":1,"request_id":"r1","u'
    >>> encode_typed(ExposureEvent("r1", "u1", "i1", 5, "exposure")) is None  # no position
    True
    """
    try:
        typed = msgspec.convert(event, _TYPED[type(event)], from_attributes=True)
    except msgspec.ValidationError:
        return None
    if type(event) is RankingEvent:
        candidates = typed.candidates
        if len(candidates) > limits.max_candidates or len({c.item_id for c in candidates}) != len(candidates):
            return None
        for name, value in (typed.user_features or {}).items():  # the history is a list, every other feature not
            if (name == "history") != (type(value) is list) or name == "history" and len(value) > limits.max_history:
                return None
    elif typed.type == "exposure" and typed.position is None:
        return None
    raw = encode(typed)
    return raw if len(raw) <= limits.max_message_bytes else None


def decode_item(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ItemUpdate:
    return ItemUpdate(**check(_load(raw, limits), ITEM, "", limits))


def _sample_item(values: list[Any], path: str) -> SampleItem:
    source, label, *rest = values  # SAMPLE_ITEM: source and label first (checked first), then SampleItem's order
    if (label == 1) != (source == "exp_pos"):
        raise InvalidEvent(f"{path}.label: {label} contradicts source {source}")
    return SampleItem(rest[0], source, label, *rest[1:])


_SAMPLE_GROUP_DECODER = msgspec.json.Decoder(SampleGroup)


def decode_sample_group(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> SampleGroup:
    """A sample group, validated: decoded by msgspec into typed structs (in C) when it passes every
    bound; otherwise checked field by field, which finds the first error and its reason.

    >>> group = SampleGroup("g", "r", "u", 5, 6, [SampleItem("i1", "exp_pos", 1, 0, 0, "video", {"ctr_1h": 0.5})])
    >>> decode_sample_group(encode(group)) == group
    True
    >>> decode_sample_group(encode(SampleGroup("g", "r", "u", 5, 6, [SampleItem("i1", "gn", 1, None, None, "video")])))
    Traceback (most recent call last):
    ...
    streams.contract.validate.InvalidEvent: items[0].label: 1 contradicts source gn
    """
    _check_size(raw, limits)
    try:
        group = _SAMPLE_GROUP_DECODER.decode(raw)
    except msgspec.DecodeError:  # a ValidationError too: the checks below say which field and why
        return check_sample_group(raw, limits)
    items = group.items
    if not raw.startswith(_VERSION_PREFIX) or len(items) > limits.max_candidates \
            or [it.label for it in items] != [int(it.source == "exp_pos") for it in items] \
            or len({it.item_id for it in items}) != len(items):
        return check_sample_group(raw, limits)
    if group.user_features:  # numbers and a history of item ids: the wire type took any object
        checked = user_features({"user_features": group.user_features}, "user_features", limits.max_history)
        group = msgspec.structs.replace(group, user_features=checked)
    return group


def check_sample_group(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> SampleGroup:
    """As :func:`decode_sample_group`, field by field in Python: the path that finds a rejection's reason."""
    v = check(_load(raw, limits), SAMPLE_GROUP, "", limits)
    v["items"] = [_sample_item(it, f"items[{i}]") for i, it in enumerate(v["items"])]
    _unique([it.item_id for it in v["items"]], "items")
    return SampleGroup(**v)
