"""The producer SDK refuses what the worker would dead-letter, before sending, with the field path
and kind; optional fields may be left out. Its typed fast path accepts nothing the worker's decoders refuse;
its partitioner puts a key where kafka-python's default does."""

import dataclasses
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from streams.contract.schemas import (
    Candidate,
    ExposureEvent,
    ItemUpdate,
    RankingEvent,
    decode_exposure,
    decode_ranking,
    decode_ranking_columns,
    encode,
    encode_typed,
)
from streams.kafka.producer import InvalidEvent, KeyPartitioner, encode_checked
from streams.simulator.world import World

NOW = int(time.time() * 1000)


def ranking(**changes) -> RankingEvent:
    base = {"request_id": "r1", "user_id": "u1", "ts_ms": NOW,
            "candidates": [Candidate("i1", "hot", 0, 0.9, content_type="video"),
                           Candidate("i2", "cf", 1, 0.8, 0, 0.7, "news")]}
    return RankingEvent(**{**base, **changes})


@pytest.mark.parametrize(("event", "field", "kind"), [
    (ranking(candidates=[Candidate("i1", "hot", 0, 0.9, content_type="v"), Candidate("i1", "hot", 1, 0.8,
                                                                                   content_type="v")]),
     "candidates", "schema"),
    (ranking(ts_ms=-1), "ts_ms", "schema"),
    (ranking(ts_ms=NOW * 1000), "ts_ms", "future"),  # microseconds sent as milliseconds
    (ranking(candidates=[Candidate("i1", "hot", -2, 0.9, content_type="v")]), "candidates[0].prerank_pos", "schema"),
    (ranking(candidates=[Candidate("i1", "hot", 0, float("nan"), content_type="v")]), "candidates[0].prerank_score",
     "schema"),
    (ranking(user_id=""), "user_id", "schema"),
    (ExposureEvent("r1", "u1", "i1", NOW, "exposure"), "position", "schema"),  # an exposure without a position
    (ExposureEvent("r1", "u1", "i1", NOW, "impression", 0), "type", "schema"),
    (ExposureEvent("r1", "u1", "i1", NOW, "feedback", dwell_ms=-5), "dwell_ms", "schema"),
    (ItemUpdate("i1", "video", NOW, {"ctr": float("inf")}), "features.ctr", "schema"),
])
def test_a_bad_event_is_refused_naming_its_field_and_kind(event, field, kind):
    with pytest.raises(InvalidEvent) as refused:
        encode_checked(event)
    assert (refused.value.field, refused.value.kind) == (field, kind), refused.value.reason
    assert refused.value.reason.startswith(f"{field}: ")
    assert isinstance(refused.value, ValueError)


def test_rank_pos_and_rank_score_are_optional():
    raw = encode_checked(ranking())
    wire = orjson.loads(raw)["candidates"]
    assert (wire[0]["rank_pos"], wire[0]["rank_score"]) == (None, None) and wire[1]["rank_pos"] == 0
    assert decode_ranking(raw) == ranking()
    with pytest.raises(TypeError, match="content_type"):
        Candidate("i1", "hot", 0, 0.9)  # the contract's required fields stay required


def test_an_event_within_the_future_bound_is_accepted():
    assert encode_checked(ranking(ts_ms=NOW + 5_000), now_ms=NOW)
    with pytest.raises(InvalidEvent):
        encode_checked(ranking(ts_ms=NOW + 5_000), now_ms=NOW, max_future_ms=1_000)


# --- the typed fast path (encode_typed) is never wider than the worker's decoders ---------------------------

texts = st.text(max_size=3) | st.sampled_from(["x" * 64, "x" * 65, "x" * 256, "x" * 257])  # around each bound
#: what a field may be given: the bounds' both sides, and the wrong types
ODD = {"str": st.sampled_from(["", "x" * 64, "x" * 65, "x" * 256, "x" * 257, 5, None, b"x"]) | texts,
       "int": st.sampled_from([-1, 0, 2**63 - 1, 2**63, 5.0, True, None, "1"]) | st.integers(),
       "number": st.sampled_from([float("nan"), float("inf"), -float("inf"), 1, 10**30, 2**64, True, None, "1"])
       | st.floats(),
       "flag": st.sampled_from([True, False, 0, 1, None]),
       "features": st.none() | st.dictionaries(st.sampled_from(["history", "age"]) | st.integers(), st.sampled_from(
           [float("nan"), 1, 10**30, True, None, "1", ["i1"], [""], ["i1", 5], ("i1",)]), max_size=3)}
RANKING_KINDS = {"request_id": "str", "user_id": "str", "ts_ms": "int", "user_features": "features", "event_id": "str"}
CANDIDATE_KINDS = {"item_id": "str", "channel": "str", "prerank_pos": "int", "prerank_score": "number",
                   "rank_pos": "int", "rank_score": "number", "content_type": "str"}
EXPOSURE_KINDS = {"request_id": "str", "user_id": "str", "item_id": "str", "ts_ms": "int", "type": "str",
                  "position": "int", "click": "flag", "like": "flag", "comment": "flag", "share": "flag",
                  "dwell_ms": "int", "event_id": "str"}


@st.composite
def odd_events(draw):
    """A valid ranking or exposure event with zero to three of its fields (a candidate's too) given odd values."""
    if draw(st.booleans()):
        fields = {"request_id": "r1", "user_id": "u1", "ts_ms": NOW, "user_features": {"history": ["i9"], "age": 3.0},
                  "event_id": None}
        rows = [{"item_id": f"i{k}", "channel": "hot", "prerank_pos": k, "prerank_score": 0.5, "rank_pos": None,
                 "rank_score": None, "content_type": "v"} for k in range(draw(st.integers(1, 3)))]
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
            row = draw(st.sampled_from([fields, *rows]))
            kinds = RANKING_KINDS if row is fields else CANDIDATE_KINDS
            name = draw(st.sampled_from(sorted(kinds)))
            row[name] = draw(ODD[kinds[name]] | st.just("i0"))  # "i0": a duplicate item id
        if any(not isinstance(r["content_type"], str) for r in rows):
            return ExposureEvent("r1", "u1", "i1", NOW, "exposure", 0)  # Candidate() refuses it itself
        candidates = [Candidate(**r) for r in rows]
        return RankingEvent(candidates=draw(st.sampled_from([list, tuple]))(candidates), **fields)
    fields = {"request_id": "r1", "user_id": "u1", "item_id": "i1", "ts_ms": NOW, "type": "exposure", "position": 0,
              "click": False, "like": False, "comment": False, "share": False, "dwell_ms": None, "event_id": "e"}
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        name = draw(st.sampled_from(sorted(EXPOSURE_KINDS)))
        fields[name] = draw(ODD[EXPOSURE_KINDS[name]] | st.sampled_from(["feedback", "exposure"]))
    return ExposureEvent(**fields)


def _verdict(decoder, raw: bytes):
    try:
        return decoder(raw)
    except InvalidEvent:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(odd_events())
def test_the_typed_path_accepts_only_what_the_decoder_accepts(event):
    decoder = decode_ranking_columns if isinstance(event, RankingEvent) else decode_exposure
    fast = encode_typed(event)
    if fast is None:
        return  # then encode_checked asks the decoder itself (the refusals above)
    assert _verdict(decoder, fast) is not None, fast
    assert _verdict(decoder, encode(event)) == decoder(fast)  # the bytes encode writes say the same


@pytest.mark.parametrize("event", [
    ranking(candidates=[Candidate("i1", "hot", 0, float("nan"), content_type="v")]),  # null on the wire
    ranking(candidates=[Candidate("i1", "hot", 0, -float("inf"), 0, 0.5, content_type="v")]),
    ranking(candidates=[Candidate("i1", "hot", 0, 0.5, content_type="v")] * 2),  # a duplicate item id
    ranking(candidates=[Candidate(f"i{k}", "hot", k, 0.5, content_type="v") for k in range(5001)]),  # over the cap
    ranking(user_features={"age": True}), ranking(user_features={"history": "i1"}),
    ranking(user_features={"history": None}), ranking(user_features={"age": ["i1"]}),
    ranking(user_features={"history": ["i1"] * 501}), ranking(user_features={"history": [""]}),
    ranking(candidates=[Candidate(f"{k:0250}", "x" * 64, k, 0.5, content_type="x" * 64)  # over 1 MiB
                        for k in range(3000)]),
    ExposureEvent("r1", "u1", "i1", NOW, "exposure"),  # an exposure without a position
    ExposureEvent("r1", "u1", "i1", NOW, "feedback", click=1),
])
def test_the_typed_path_declines_what_the_decoder_refuses(event):
    decoder = decode_ranking_columns if isinstance(event, RankingEvent) else decode_exposure
    assert encode_typed(event) is None
    with pytest.raises(InvalidEvent):
        decoder(encode(event))


def test_valid_events_take_the_typed_path_and_encode_as_encode_does():
    world = World(seed=3, n_users=20, n_items=300)
    for i in range(20):
        request = world.request(i, n_candidates=50)
        for event in [dataclasses.replace(request.ranking, ts_ms=NOW), *(e for _, e in request.events)]:
            assert encode_typed(event) == encode(event) == encode_checked(event)
    with_int_score = ranking(candidates=[Candidate("i1", "hot", 0, 1, content_type="v")])
    as_float = encode(with_int_score).replace(b'"prerank_score":1,', b'"prerank_score":1.0,')
    assert encode_typed(with_int_score) == as_float


def test_the_producer_partitions_as_kafka_python_does():
    class Cluster:  # the part of kafka-python's ClusterMetadata a partitioner reads: 7 partitions of "t"
        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return set(range(7))

        available_partitions_for_topic = partitions_for_topic

    ours, theirs = KeyPartitioner(keys=64), DefaultPartitioner()
    keys = [f"req-{i}".encode() for i in range(2000)] * 2 + ["ünï".encode(), b"", b"x" * 1000]
    assert [ours.partition("t", None, k, None, None, Cluster()) for k in keys] == \
        [theirs.partition("t", None, k, None, None, Cluster()) for k in keys]
