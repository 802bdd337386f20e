"""The producer SDK refuses what the worker would dead-letter, before sending, with the field path
and kind; optional fields may be left out."""

import time

import orjson
import pytest

from streams.contract.schemas import Candidate, ExposureEvent, ItemUpdate, RankingEvent, decode_ranking
from streams.kafka.producer import InvalidEvent, encode_checked

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
