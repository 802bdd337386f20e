"""Wire format: valid records round-trip; malformed input is rejected with a reason, never a crash."""

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.contract.fields import EXPOSURE, check
from streams.contract.schemas import (
    Candidate,
    ExposureEvent,
    InvalidEvent,
    Limits,
    RankingColumns,
    RankingEvent,
    SampleGroup,
    SampleItem,
    decode_exposure,
    decode_item,
    decode_ranking,
    decode_ranking_columns,
    decode_sample_group,
    encode,
)

ids = st.text(min_size=1, max_size=12)
ints = st.integers(0, 10**12)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
candidates = st.lists(st.builds(Candidate, ids, st.sampled_from(["hot", "cf"]), ints, finite,
                                st.none() | ints, st.none() | finite, st.sampled_from(["video", "news"])),
                      max_size=20, unique_by=lambda c: c.item_id)
rankings = st.builds(RankingEvent, ids, ids, ints, candidates,
                     st.fixed_dictionaries({}, optional={"history": st.lists(ids, max_size=5)}))
exposures = st.builds(ExposureEvent, ids, ids, ids, ints, st.just("exposure"), ints, st.booleans(), st.booleans(),
                      st.booleans(), st.booleans(), st.none() | ints, st.none() | ids)
items = st.builds(lambda s, i: SampleItem(i, s, int(s == "exp_pos"), None, 3, "video", {"ctr_1h": 0.1}),
                  st.sampled_from(["exp_pos", "exp_neg", "rn", "prn", "gn"]), ids)
groups = st.builds(SampleGroup, ids, ids, ids, ints, ints, st.lists(items, max_size=10, unique_by=lambda i: i.item_id),
                   st.just({}), st.booleans())


@given(rankings)
def test_ranking_round_trips(event):
    assert decode_ranking(encode(event)) == event


@given(exposures)
def test_exposure_round_trips(event):
    assert decode_exposure(encode(event)) == event


@given(groups)
def test_sample_group_round_trips(group):
    assert decode_sample_group(encode(group)) == group


@given(rankings)
def test_ranking_columns_hold_the_decoded_event(event):
    assert decode_ranking_columns(encode(event)) == RankingColumns.of(decode_ranking(encode(event)))


def _outcome(decode, raw):
    try:
        return decode(raw)
    except InvalidEvent as exc:
        return exc.kind, exc.reason


candidate_values = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.sampled_from(["", "x", "y" * 300]) | st.just([1]) | st.just({"a": 1}) \
    | st.sampled_from([2**64 - 1, 2**64, -(2**63) - 1, 10**30])  # orjson reads an int beyond 64 bits as a float


@given(rankings.filter(lambda e: e.candidates), st.data())
def test_ranking_columns_reject_what_decode_ranking_rejects_with_the_same_reason(event, data):
    obj = orjson.loads(encode(event))
    candidate = data.draw(st.sampled_from(obj["candidates"]))
    field = data.draw(st.sampled_from([*candidate, "extra"]))
    if data.draw(st.booleans()):
        candidate.pop(field, None)  # a field left out: the fast path declines, the slow one decides
    else:
        candidate[field] = data.draw(candidate_values)
    raw = json.dumps(obj).encode()  # orjson writes no integer beyond 64 bits
    columns, event = _outcome(decode_ranking_columns, raw), _outcome(decode_ranking, raw)
    assert columns == (event if isinstance(event, tuple) else RankingColumns.of(event))


@given(exposures, st.data())
def test_the_exposure_fast_path_accepts_and_rejects_as_the_field_checks(event, data):
    obj = orjson.loads(encode(event))
    field = data.draw(st.sampled_from([*sorted(obj.keys() - {"schema_version"}), "extra"]))
    if data.draw(st.booleans()):
        obj.pop(field, None)
    else:
        obj[field] = data.draw(candidate_values | st.sampled_from(["exposure", "feedback"]))
    raw = json.dumps(obj).encode()  # orjson writes no integer beyond 64 bits
    slow = _outcome(lambda r: ExposureEvent(**check(orjson.loads(r), EXPOSURE, "", Limits())), raw)
    fast = _outcome(decode_exposure, raw)
    if isinstance(slow, ExposureEvent) and slow.type == "exposure" and slow.position is None:
        slow = ("schema", "position: required for an exposure")
    assert fast == slow


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | finite | st.text(max_size=5),
                           lambda x: st.lists(x, max_size=3) | st.dictionaries(st.text(max_size=5), x, max_size=3),
                           max_leaves=10)


@given(st.binary(max_size=200) | json_values.map(orjson.dumps) | rankings.map(encode).map(lambda b: b[:-7]))
def test_malformed_input_is_rejected_with_a_reason(raw):
    for decode in (decode_ranking, decode_exposure, decode_item, decode_sample_group):
        try:
            decode(raw)
        except InvalidEvent as exc:
            assert exc.reason and ":" in exc.reason


def test_reasons_name_the_field_path_and_caps_apply():
    event = orjson.loads(encode(RankingEvent("r", "u", 1, [Candidate("a", "c", 0, 0.1, None, None, "v")])))
    event["candidates"][0]["prerank_pos"] = "x"
    with pytest.raises(InvalidEvent, match=r"^candidates\[0\]\.prerank_pos: expected int, got str$"):
        decode_ranking(orjson.dumps(event))
    too_many = RankingEvent("r", "u", 1, [Candidate(f"i{i}", "c", i, 0.0, None, None, "v") for i in range(3)])
    with pytest.raises(InvalidEvent, match="^candidates: 3 entries exceed the cap of 2$"):
        decode_ranking(encode(too_many), Limits(max_candidates=2))
    with pytest.raises(InvalidEvent, match="^oversized: "):
        decode_ranking(encode(too_many), Limits(max_message_bytes=50))


def test_each_rejection_names_its_kind_from_the_fixed_set():
    from streams.contract.validate import REASON_KINDS

    cases = {b"{not json": "json", b"[1]": "schema", b'{"schema_version": 2}': "schema",
             b'{"schema_version": 1, "request_id": "r"}': "schema", b"x" * 100: "oversized"}
    for raw, kind in cases.items():
        with pytest.raises(InvalidEvent) as info:
            decode_ranking(raw, Limits(max_message_bytes=99))
        assert info.value.kind == kind and kind in REASON_KINDS, (raw, info.value.reason)
    with pytest.raises(ValueError):
        InvalidEvent("anything", "field")  # not a kind: the set is closed


def test_sample_group_fast_path_rejects_what_the_contract_rejects():
    """The msgspec path and the field-by-field checks agree: each bound that the struct enforces
    in C still comes back as the contract's reason."""
    ok = orjson.loads(encode(SampleGroup("g", "r", "u", 5, 6, [SampleItem("i1", "exp_pos", 1, 0, 0, "video")])))
    bad = {
        "items[0].item_id: expected 1..256 characters, got 0": {"item_id": ""},
        "items[0].prerank_pos: expected int >= 0, got -1": {"prerank_pos": -1},
        "items[0].label: expected one of 0, 1, got True": {"label": True},
        "items[0].source: expected one of 'exp_pos', 'exp_neg', 'rn', 'prn', 'gn', got 'x'": {"source": "x"},
        "items[0].features.ctr: expected finite number, got str": {"features": {"ctr": "x"}},
    }
    for reason, change in bad.items():
        raw = orjson.dumps({**ok, "items": [{**ok["items"][0], **change}]})
        with pytest.raises(InvalidEvent) as exc:
            decode_sample_group(raw)
        assert exc.value.reason == reason
    spaced = orjson.dumps({**ok, "schema_version": 2})
    with pytest.raises(InvalidEvent, match="schema_version"):
        decode_sample_group(spaced)
    null_features = orjson.dumps({**ok, "items": [{**ok["items"][0], "features": None}]})
    assert decode_sample_group(null_features).items[0].features == {}  # the contract's null = {}
    assert decode_sample_group(orjson.dumps(ok)) == decode_sample_group(encode(decode_sample_group(orjson.dumps(ok))))
