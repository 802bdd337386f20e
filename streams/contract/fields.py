"""The wire contract of every topic, defined once: the validator (:mod:`streams.contract.schemas`) checks
these fields, and the JSON Schema files and the field tables of ``docs/contracts.md`` are
generated from them (``python -m streams.contract.fields``), so the three cannot drift apart.

Each record is a list of :class:`Field`; :func:`check` validates one JSON object against it (the
reasons name the field path, see :mod:`streams.contract.validate`) and :func:`json_schema` writes the same
rules as JSON Schema (draft 2020-12). Rules across fields are stated in :data:`RULES` and, where
JSON Schema can say them, in the schema too.

Examples
--------
>>> check({"item_id": "i1", "content_type": "video", "ts_ms": 5}, ITEM, "", Limits())
{'item_id': 'i1', 'content_type': 'video', 'ts_ms': 5, 'features': {}, 'event_id': None}
>>> json_schema("items")["required"]
['schema_version', 'item_id', 'content_type', 'ts_ms']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import operator
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from streams.contract.validate import (
    REASON_KINDS,
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
ID_CHARS = 256
NAME_CHARS = 64
#: a dead letter copies at most this many bytes of its input (with the input's size and SHA-256), so that
#: the DLQ record of any input up to the 1 MiB cap stays far below it (base64: 4/3 of the copy)
DLQ_ORIGINAL_BYTES = 256 * 1024
DLQ_REASON_CHARS = 4096
DLQ_DETAILS_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Size caps applied while decoding."""

    max_candidates: int = 5000
    max_message_bytes: int = 1 << 20
    max_history: int = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One field of a record.

    ``kind``: ``str``, ``int``, ``number``, ``bool`` (absent = false), ``enum`` (one of ``values``),
    ``records`` (a list of ``of``, capped by the :class:`Limits` attribute ``cap``), ``numbers``
    (``{name: number}``), ``user_features`` (``{name: number|null}`` plus ``history``: item ids),
    ``object`` (any JSON object).
    """

    name: str
    kind: str
    doc: str
    required: bool = True
    nullable: bool = False
    minimum: int | None = None
    max_chars: int = ID_CHARS
    values: tuple[Any, ...] = ()
    of: str = ""
    cap: str = ""
    unit: str = ""

    def check(self, obj: dict[str, Any], path: str, limits: Limits) -> Any:
        """The field's value in ``obj``, validated (raises :class:`InvalidEvent`)."""
        k, name = self.kind, self.name
        if k == "str":
            return None if not self.required and obj.get(name) is None else req_str(obj, name, path, self.max_chars)
        if k == "int":
            return req_int(obj, name, path, self.minimum) if self.required else opt_int(obj, name, path, self.minimum)
        if k == "number":
            value = opt_float(obj, name, path)
            if value is None and self.required:
                raise InvalidEvent(f"{_at(path, name)}: expected number, got null")
            return value
        if k == "bool":
            return opt_bool(obj, name, path)
        if k == "enum":
            value = obj.get(name)
            if not any(value == v and type(value) is type(v) for v in self.values):
                raise InvalidEvent(f"{_at(path, name)}: expected one of {', '.join(map(repr, self.values))}, "
                                   f"got {value!r}")
            return value
        if k == "records":
            values = req_list(obj, name, path, getattr(limits, self.cap))
            fields, where = RECORDS[self.of], _at(path, name)
            return [check_values(req_mapping(v, f"{where}[{i}]"), fields, f"{where}[{i}]", limits)
                    for i, v in enumerate(values)]
        if k == "numbers":
            out = features(obj, name, path)
            for key, value in out.items():
                if value is None:
                    raise InvalidEvent(f"{_at(path, name)}.{key}: expected number, got null")
            return out
        if k == "user_features":
            return user_features(obj, name, limits.max_history)
        if k == "object":
            return {} if obj.get(name) is None else req_mapping(obj.get(name), _at(path, name))
        raise AssertionError(f"unknown field kind {k}")

    def schema(self, limits: Limits) -> dict[str, Any]:
        """This field as a JSON Schema."""
        k = self.kind
        if k == "str":
            out: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": self.max_chars}
        elif k == "int":
            out = {"type": "integer"} | ({} if self.minimum is None else {"minimum": self.minimum})
        elif k == "number":
            out = {"type": "number"}
        elif k == "bool":
            out = {"type": "boolean", "default": False}
        elif k == "enum":
            out = {"enum": list(self.values)}
        elif k == "records":
            out = {"type": "array", "items": {"$ref": f"#/$defs/{self.of}"}, "maxItems": getattr(limits, self.cap)}
        elif k == "numbers":
            out = {"type": "object", "additionalProperties": {"type": "number"}, "maxProperties": 256}
        elif k == "object":
            out = {"type": "object"}
        else:  # user_features
            out = {"type": "object", "additionalProperties": {"type": ["number", "null"]},
                   "properties": {"history": {"type": "array", "maxItems": limits.max_history,
                                              "items": {"type": "string", "minLength": 1, "maxLength": ID_CHARS}}}}
        if self.nullable or k in ("numbers", "user_features", "object"):
            out = {"anyOf": [out, {"type": "null"}]} if "type" not in out else {**out, "type": [out["type"], "null"]}
        return {"description": self.doc + (f" Unit: {self.unit}." if self.unit else ""), **out}

    def type_text(self, limits: Limits) -> str:
        """The type as the document's tables write it."""
        k = self.kind
        text = {
            "str": f"string (1..{self.max_chars} chars)",
            "int": "integer" + ("" if self.minimum is None else f" >= {self.minimum}"),
            "number": "number (finite)",
            "bool": "boolean (absent = false)",
            "enum": " \\| ".join(json.dumps(v) for v in self.values),
            "records": f"list of {self.of} (at most {getattr(limits, self.cap, 0)})",
            "numbers": "object {name: number} (at most 256)",
            "object": "object",
            "user_features": f"object {{name: number\\|null, \"history\": [item id, at most {limits.max_history}]}}",
        }[k]
        return text + (" \\| null" if self.nullable or k in ("numbers", "user_features", "object") else "")


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


Checker = Callable[[dict[str, Any], str, Limits], Any]
_COMPILED: dict[int, list[tuple[str, Checker]]] = {}


def _compile(f: Field) -> Checker:
    """A direct call of the field's check (the common kinds without :meth:`Field.check`'s dispatch)."""
    name, lo, chars = f.name, f.minimum, f.max_chars
    if f.kind == "str" and f.required:
        return lambda obj, path, _limits: req_str(obj, name, path, chars)
    if f.kind == "int":
        if f.required:
            return lambda obj, path, _limits: req_int(obj, name, path, lo)
        return lambda obj, path, _limits: opt_int(obj, name, path, lo)
    if f.kind == "number" and not f.required:
        return lambda obj, path, _limits: opt_float(obj, name, path)
    return f.check


def _compiled(fields: list[Field]) -> list[tuple[str, Checker]]:
    compiled = _COMPILED.get(id(fields))
    if compiled is None:
        compiled = _COMPILED[id(fields)] = [(f.name, _compile(f)) for f in fields]
    return compiled


def check(obj: dict[str, Any], fields: list[Field], path: str, limits: Limits) -> dict[str, Any]:
    """Every field of ``fields`` in ``obj``, validated, in the order given (the first error wins)."""
    return {name: fn(obj, path, limits) for name, fn in _compiled(fields)}


def check_values(obj: dict[str, Any], fields: list[Field], path: str, limits: Limits) -> list[Any]:
    """As :func:`check`, the values only, in the order of ``fields``."""
    return [fn(obj, path, limits) for _, fn in _compiled(fields)]


def wire_type(fields: list[Field], name: str) -> Any:
    """The type of field ``name`` with its bounds, for a ``msgspec.Struct`` that decodes the record in C.

    Fields of kind ``str``, ``int``, ``number`` and ``enum`` (the others' bounds depend on
    :class:`Limits` or span fields: the decoder checks them after msgspec). The type is at least
    as strict as :func:`check`, never wider: what msgspec rejects, :func:`check` then explains or
    accepts (an optional field that is ``null`` or left out, where the struct has no default).

    >>> class Item(msgspec.Struct):
    ...     item_id: wire_type(ITEM, "item_id")
    >>> msgspec.json.decode(b'{"item_id": ""}', type=Item)
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: Expected `str` of length >= 1 - at `$.item_id`
    """
    f = next(f for f in fields if f.name == name)
    if f.kind == "str":
        t: Any = Annotated[str, msgspec.Meta(min_length=1, max_length=f.max_chars)]
    elif f.kind == "int":  # orjson, the checks' parser, reads an integer beyond these as a float
        t = Annotated[int, msgspec.Meta(ge=-(2**63) if f.minimum is None else f.minimum, le=2**63 - 1)]
    elif f.kind == "number":
        t = float  # JSON has no NaN or infinity; msgspec rejects a number beyond float's range
    elif f.kind == "enum":
        t = Literal[f.values]
    else:
        raise ValueError(f"{name}: a field of kind {f.kind} has no wire type of its own")
    return t | None if f.nullable or not f.required else t


_KIND_TYPES: dict[str, set[type]] = {"str": {str}, "int": {int}, "number": {int, float}, "bool": {bool}}
_FAST_SIGNATURES = 64  # a record with more combinations of value types than this is always checked field by field


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """How :func:`check_record` checks one kind of record."""

    get: Callable[[dict[str, Any]], tuple[Any, ...]]
    signatures: frozenset[tuple[type, ...]]  # the types each field may have, in every combination
    lengths: tuple[tuple[int, int], ...]  # (field index, max chars) of strings
    minimums: tuple[tuple[int, int], ...]  # (field index, minimum) of ints
    enums: tuple[tuple[int, frozenset[Any]], ...]  # (field index, values)
    numbers: tuple[int, ...]  # field indexes of numbers (finite)


_PLANS: dict[int, tuple[list[Field], _Plan | None]] = {}  # by id of the list, kept alive so that its id is its own


def _plan(fields: list[Field]) -> _Plan | None:
    if id(fields) in _PLANS:
        return _PLANS[id(fields)][1]
    choices: list[set[type]] = []
    for f in fields:
        allowed = {type(v) for v in f.values} if f.kind == "enum" else _KIND_TYPES.get(f.kind)
        if allowed is None or (f.kind == "bool" and f.required):
            choices = []
            break
        choices.append(allowed | ({type(None)} if not f.required and f.kind != "bool" else set()))
    plan = None
    if choices and math.prod(map(len, choices)) <= _FAST_SIGNATURES and len(fields) > 1:
        plan = _Plan(operator.itemgetter(*(f.name for f in fields)), frozenset(itertools.product(*choices)),
                     tuple((i, f.max_chars) for i, f in enumerate(fields) if f.kind == "str"),
                     tuple((i, f.minimum) for i, f in enumerate(fields) if f.kind == "int" and f.minimum is not None),
                     tuple((i, frozenset(f.values)) for i, f in enumerate(fields) if f.kind == "enum"),
                     tuple(i for i, f in enumerate(fields) if f.kind == "number"))
    _PLANS[id(fields)] = (fields, plan)
    return plan


def check_record(obj: dict[str, Any], fields: list[Field]) -> tuple[Any, ...] | None:
    """The values of every field of ``obj`` in the order of ``fields``, when each passes its
    check; ``None`` when one may not. The fast path of :func:`check` for one record of flat
    fields: one look at the types of all values, then the bounds. ``None`` never explains (then
    :func:`check` finds the first error and its reason, or accepts what this path declined: a
    record that leaves out a field, fields of other kinds than ``str``, ``int``, ``number``,
    ``bool``, ``enum``). Numbers are returned as they came (:func:`check` makes them floats).

    >>> shown = {"type": "exposure", "request_id": "r1", "user_id": "u1", "item_id": "i1", "ts_ms": 5,
    ...          "position": 0, "click": False, "like": False, "comment": False, "share": False, "dwell_ms": None,
    ...          "event_id": None}
    >>> check_record(shown, EXPOSURE)[:6]
    ('exposure', 'r1', 'u1', 'i1', 5, 0)
    >>> check_record({**shown, "ts_ms": -5}, EXPOSURE) is None
    True
    """
    plan = _plan(fields)
    if plan is None:
        return None
    try:
        values = plan.get(obj)
    except KeyError:
        return None
    if tuple(map(type, values)) not in plan.signatures:
        return None
    for i, chars in plan.lengths:
        v = values[i]
        if v is not None and not 0 < len(v) <= chars:
            return None
    for i, minimum in plan.minimums:
        v = values[i]
        if v is not None and v < minimum:
            return None
    for i, allowed in plan.enums:
        if values[i] not in allowed:
            return None
    try:
        if not all(math.isfinite(values[i]) for i in plan.numbers if values[i] is not None):
            return None
    except OverflowError:  # an int beyond float's range: the slow path says what it says
        return None
    return values


_TS = "milliseconds since the Unix epoch (UTC)"
#: on every input event: the producer's id of the event, the same on each retry of it
_EVENT_ID = Field("event_id", "str", "Optional producer-side id of the event, unique per event and the same on every "
                  "retry of it: a repeat of an event its request took is dropped, counted once (see the join "
                  "rules: retries); also for tracing.", required=False, nullable=True)
CANDIDATE = [
    Field("item_id", "str", "The candidate item."),
    Field("channel", "str", "Retrieval channel that produced it (e.g. \"hot\", \"cf\").", max_chars=NAME_CHARS),
    Field("prerank_pos", "int", "Position in the pre-ranking stage's order, 0 = first.", minimum=0),
    Field("prerank_score", "number", "The pre-ranking stage's score."),
    Field("rank_pos", "int", "Position in the ranking stage's order, 0 = first; null when it did not reach ranking.",
          required=False, nullable=True, minimum=0),
    Field("rank_score", "number", "The ranking stage's score; null when it did not reach ranking.", required=False,
          nullable=True),
    Field("content_type", "str", "Item category (e.g. \"video\", \"news\").", max_chars=NAME_CHARS),
]
RANKING = [
    Field("request_id", "str", "The request; the Kafka key, and the join key of every event of the request."),
    Field("user_id", "str", "The user the request served."),
    Field("ts_ms", "int", "Event time of the request.", minimum=0, unit=_TS),
    Field("candidates", "records", "The candidates of the request, item ids unique.", of="Candidate",
          cap="max_candidates"),
    Field("user_features", "user_features", "Optional user features; `history`: recent item ids, most recent last.",
          required=False),
    _EVENT_ID,
]
EXPOSURE = [
    Field("type", "enum", "`exposure`: the item was shown; `feedback`: the user reacted to it.",
          values=("exposure", "feedback")),
    Field("request_id", "str", "The request that served the item; the Kafka key."),
    Field("user_id", "str", "The user."),
    Field("item_id", "str", "The item shown or reacted to."),
    Field("ts_ms", "int", "Event time.", minimum=0, unit=_TS),
    Field("position", "int", "Display position, 0 = first. Required (not null) on an exposure.", required=False,
          nullable=True, minimum=0),
    Field("click", "bool", "Feedback: clicked.", required=False),
    Field("like", "bool", "Feedback: liked.", required=False),
    Field("comment", "bool", "Feedback: commented.", required=False),
    Field("share", "bool", "Feedback: shared.", required=False),
    Field("dwell_ms", "int", "Feedback: time spent on the item.", required=False, nullable=True, minimum=0,
          unit="milliseconds"),
    _EVENT_ID,
]
ITEM = [
    Field("item_id", "str", "The item; the Kafka key."),
    Field("content_type", "str", "Item category.", max_chars=NAME_CHARS),
    Field("ts_ms", "int", "Event time of the update.", minimum=0, unit=_TS),
    Field("features", "numbers", "Optional numeric item attributes.", required=False),
    Field("event_id", "str", "Optional producer-side id of the update, for tracing (an update is idempotent: a retry "
          "changes nothing).", required=False, nullable=True),
]
SAMPLE_ITEM = [
    Field("source", "enum", "Why the item is in the group: exp_pos, exp_neg, rn, prn or gn (see the join rules).",
          values=SOURCES),
    Field("label", "enum", "1 for exp_pos, 0 otherwise.", values=(0, 1)),
    Field("item_id", "str", "The item."),
    Field("prerank_pos", "int", "Its pre-ranking position in the request; null for gn and unranked exposures.",
          required=False, nullable=True, minimum=0),
    Field("rank_pos", "int", "Its ranking position in the request; null when it did not reach ranking.",
          required=False, nullable=True, minimum=0),
    Field("content_type", "str", "Item category (\"unknown\" for an exposed item that was no candidate).",
          max_chars=NAME_CHARS),
    Field("features", "numbers", "The item's real-time statistics at request time (exp_/clk_/pos_/ctr_ per window).",
          required=False),
]
SAMPLE_GROUP = [
    Field("group_id", "str", "Deterministic: sha1 of `request_id:revision`, hex, 20 chars."),
    Field("request_id", "str", "The request; the Kafka key."),
    Field("user_id", "str", "The user."),
    Field("event_ts_ms", "int", "Event time of the request.", minimum=0, unit=_TS),
    Field("assembled_ts_ms", "int", "Wall time the group was assembled.", minimum=0, unit=_TS),
    Field("items", "records", "The group's items, one per item id.", of="SampleItem", cap="max_candidates"),
    Field("user_features", "user_features", "The request's user features.", required=False),
    Field("correction", "bool", "True for a correction of an emitted group (a late positive).", required=False),
]
DEAD_LETTER = [
    Field("reason_kind", "enum", "Why, in one word.", values=REASON_KINDS),
    Field("reason", "str", "Why, precisely: the field path and what was wrong (a longer reason is cut, ending "
          "in `...`).", max_chars=DLQ_REASON_CHARS),
    Field("request_id", "str", "The request of the rejected input when it names one (also the Kafka key).",
          required=False, nullable=True),
    Field("topic", "str", "Topic of the rejected input; null for an orphan request.", required=False, nullable=True),
    Field("partition", "int", "Its partition.", required=False, nullable=True, minimum=0),
    Field("offset", "int", "Its offset (an undecodable batch: its first offset).", required=False, nullable=True,
          minimum=0),
    Field("original", "str", f"The original bytes, base64: all of them up to {DLQ_ORIGINAL_BYTES // 1024} KiB, "
          "else the first that many (`original_truncated`); null when there are none (an orphan request) or the "
          "undecodable batch exceeds 512 KiB.", required=False, nullable=True,
          max_chars=4 * -(-DLQ_ORIGINAL_BYTES // 3)),
    Field("original_size", "int", "Size of the original bytes, whole.", required=False, nullable=True,
          minimum=0, unit="bytes"),
    Field("original_sha256", "str", "SHA-256 of the original bytes, whole, hex (check a replayed copy against it).",
          required=False, nullable=True, max_chars=64),
    Field("original_truncated", "bool", "True when `original` holds only the first bytes of the input.",
          required=False),
    Field("details", "object", "What the kind adds: undecodable: codec, first_offset, last_offset; orphan: "
          f"item_id or the request's joined state (above {DLQ_DETAILS_BYTES // 1024} KiB of JSON: `omitted_bytes` "
          "and `sha256` of it instead).", required=False),
]
RECORDS: dict[str, list[Field]] = {"Candidate": CANDIDATE, "SampleItem": SAMPLE_ITEM}

#: topic (without prefix) -> (record name, its fields, its Kafka key)
TOPICS: dict[str, tuple[str, list[Field], str]] = {
    "ranking": ("RankingEvent", RANKING, "request_id"),
    "exposure": ("ExposureEvent", EXPOSURE, "request_id"),
    "items": ("ItemUpdate", ITEM, "item_id"),
    "samples": ("SampleGroup", SAMPLE_GROUP, "request_id"),
    "dlq": ("DeadLetter", DEAD_LETTER, "request_id (null when unknown)"),
}

#: rules across fields, checked by the validator after the fields (the schema says those it can)
RULES: dict[str, list[str]] = {
    "RankingEvent": ["`candidates[].item_id` are unique within the request (`candidates: duplicate item_id`)."],
    "ExposureEvent": ["An exposure (`type` = `exposure`) has a non-null `position`."],
    "SampleItem": ["`label` is 1 exactly when `source` is `exp_pos`."],
    "SampleGroup": ["`items[].item_id` are unique within the group: one source per item."],
}
_IF_THEN = {
    "ExposureEvent": {"if": {"properties": {"type": {"const": "exposure"}}, "required": ["type"]},
                      "then": {"required": ["position"], "properties": {"position": {"type": "integer"}}}},
    "SampleItem": {"if": {"properties": {"source": {"const": "exp_pos"}}, "required": ["source"]},
                   "then": {"properties": {"label": {"const": 1}}}, "else": {"properties": {"label": {"const": 0}}}},
}


def _object(name: str, fields: list[Field], limits: Limits, versioned: bool) -> dict[str, Any]:
    props = {f.name: f.schema(limits) for f in fields}
    required = [f.name for f in fields if f.required]
    if versioned:
        props = {"schema_version": {"const": SCHEMA_VERSION, "description": "The wire format's version."}, **props}
        required = ["schema_version", *required]
    out = {"type": "object", "title": name, "properties": props, "required": required,
           "additionalProperties": True, **_IF_THEN.get(name, {})}
    if name in RULES:
        out["$comment"] = " ".join(RULES[name])
    return out


def json_schema(topic: str, limits: Limits = Limits()) -> dict[str, Any]:
    """The JSON Schema of one message of ``topic`` (``ranking``, ``exposure``, ``items``, ``samples``, ``dlq``)."""
    name, fields, key = TOPICS[topic]
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"hap.{topic}.schema.json",
              **_object(name, fields, limits, True)}
    schema["description"] = (f"One message of topic <prefix>{topic} (default prefix `hap.`), Kafka key: {key}; "
                             f"JSON, UTF-8, at most {limits.max_message_bytes} bytes.")
    defs = {f.of: _object(f.of, RECORDS[f.of], limits, False) for f in fields if f.kind == "records"}
    if defs:
        schema["$defs"] = defs
    return schema


def markdown_table(name: str, limits: Limits = Limits()) -> str:
    """The field table of record ``name`` as ``docs/contracts.md`` shows it."""
    fields = {n: f for n, f, _ in TOPICS.values()} | RECORDS
    rows = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for f in fields[name]:
        unit = f" Unit: {f.unit}." if f.unit else ""
        rows.append(f"| `{f.name}` | {f.type_text(limits)} | {'yes' if f.required else 'no'} | {f.doc}{unit} |")
    return "\n".join(rows)


SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write ``<topic>.schema.json`` for every topic; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for topic in TOPICS:
        path = directory / f"{topic}.schema.json"
        path.write_text(json.dumps(json_schema(topic), indent=2) + "\n")
        paths.append(path)
    return paths


DOC = SCHEMA_DIR.parent / "contracts.md"
_TABLE = re.compile(r"(<!-- table:(\w+) -->\n)(.*?)(\n?<!-- /table -->)", re.S)


def render_tables(text: str) -> str:
    """``text`` with every ``<!-- table:Name -->...<!-- /table -->`` block regenerated."""
    return _TABLE.sub(lambda m: m.group(1) + markdown_table(m.group(2)) + m.group(4), text)


# python -m streams.contract.fields: regenerate docs/schemas/ and the tables of docs/contracts.md
if __name__ == "__main__":
    for p in write_schemas(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(p)
    if len(sys.argv) == 1:
        DOC.write_text(render_tables(DOC.read_text()))
        print(DOC)
