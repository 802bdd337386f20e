"""docs/contracts.md, the JSON Schema files and the validator say the same thing: the document's
examples are what both the validator and the schemas say they are; the files and the tables are
what `streams/contract/fields.py` generates; and on mutated examples the validator and the schemas agree."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streams.contract.dlq import DeadLetter
from streams.contract.fields import DOC, SCHEMA_DIR, TOPICS, json_schema, render_tables
from streams.contract.schemas import (
    Candidate,
    InvalidEvent,
    SampleItem,
    decode_exposure,
    decode_item,
    decode_ranking,
    decode_sample_group,
)
from streams.join.assembler import group_id

DECODERS = {"ranking": decode_ranking, "exposure": decode_exposure, "items": decode_item,
            "samples": decode_sample_group}
EXAMPLE = re.compile(r"<!-- (example|invalid) (\w+)(?:: (.*?))? -->\n```json\n(.*?)```", re.S)
TEXT = DOC.read_text()
EXAMPLES = [(m.group(1), m.group(2), m.group(3), m.group(4)) for m in EXAMPLE.finditer(TEXT)]


def validators() -> dict[str, Draft202012Validator]:
    return {topic: Draft202012Validator(json_schema(topic)) for topic in TOPICS}


def accepted(topic: str, raw: bytes) -> tuple[bool, str]:
    """(the validator accepts ``raw``, its reason otherwise)."""
    try:
        DECODERS[topic](raw)
    except InvalidEvent as exc:
        return False, exc.reason
    return True, ""


def test_schema_files_and_tables_are_generated_from_the_contract():
    for topic in TOPICS:
        on_disk = json.loads((SCHEMA_DIR / f"{topic}.schema.json").read_text())
        assert on_disk == json_schema(topic), f"docs/schemas/{topic}.schema.json is stale: make generate"
        Draft202012Validator.check_schema(on_disk)
    assert render_tables(TEXT) == TEXT, "the field tables of docs/contracts.md are stale: make generate"
    assert TEXT.count("<!-- table:") == 7


def test_field_order_matches_the_records_built_positionally():
    from streams.contract.fields import CANDIDATE, SAMPLE_ITEM
    assert [f.name for f in CANDIDATE] == list(Candidate.__dataclass_fields__)
    names = [f.name for f in SAMPLE_ITEM]
    assert [names[2], *names[:2], *names[3:]] == list(SampleItem.__struct_fields__)


@pytest.mark.parametrize(("verdict", "topic", "reason", "body"), EXAMPLES,
                         ids=[f"{v}-{t}-{i}" for i, (v, t, _, _) in enumerate(EXAMPLES)])
def test_document_examples_are_what_validator_and_schema_say(verdict, topic, reason, body):
    doc = json.loads(body)
    errors = list(validators()[topic].iter_errors(doc))
    if topic == "dlq":
        assert not errors
        return
    ok, why = accepted(topic, orjson.dumps(doc))
    if verdict == "example":
        assert ok, why
        assert not errors, errors
        if topic == "samples":
            assert doc["group_id"] == group_id(doc["request_id"])
    else:
        assert not ok and why == reason
        if "duplicate item_id" not in reason:  # the one rule JSON Schema cannot state
            assert errors


def test_every_topic_has_a_valid_and_every_input_an_invalid_example():
    assert {t for v, t, _, _ in EXAMPLES if v == "example"} == set(TOPICS)
    assert {t for v, t, _, _ in EXAMPLES if v == "invalid"} >= {"ranking", "exposure", "samples"}


def test_dead_letters_the_worker_writes_match_their_schema():
    schema = validators()["dlq"]
    for record in (DeadLetter("json", "json: bad", "r1", "hap.ranking", 0, 3, b"{x"),
                   DeadLetter("orphan", "orphan: no ranking", "r2", None, None, None, None, {"state": {"a": 1}}),
                   DeadLetter("undecodable", "undecodable: x", None, "hap.exposure", 1, 5, b"\x00",
                              {"codec": "lz4", "first_offset": 5, "last_offset": 9})):
        schema.validate(orjson.loads(record.value()))


# -- the validator and the schemas agree on mutations of the examples ---------------------------------
VALID = {t: json.loads(b) for v, t, _, b in EXAMPLES if v == "example" and t in DECODERS}
non_integral = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x))
values = st.none() | st.booleans() | st.integers(-5, 10**15) | non_integral | st.text(max_size=4) \
    | st.lists(st.text(min_size=1, max_size=3), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(-9, 9),
                                                                              max_size=2)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.data())
def test_validator_and_schema_agree_on_mutated_examples(topic, data):
    doc = copy.deepcopy(VALID[topic])
    target = doc
    nested = {"ranking": "candidates", "samples": "items"}.get(topic)
    if nested and data.draw(st.booleans()):
        target = doc[nested][0]
    field = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[field]
    else:
        target[field] = data.draw(values)
    ok, why = accepted(topic, orjson.dumps(doc))
    schema_ok = validators()[topic].is_valid(doc)
    assert ok == schema_ok, (doc, why)


def test_the_schemas_are_where_the_document_says(tmp_path):
    assert all((SCHEMA_DIR / f"{t}.schema.json").exists() for t in TOPICS)
    assert Path(SCHEMA_DIR).relative_to(DOC.parent) == Path("schemas")
