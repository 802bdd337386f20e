"""The typed decoding answers every body exactly as the checked path (``orjson`` + ``parse_request``) does."""

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from router.limits import MAX_HISTORY
from router.prerank import BadRequest, PrerankRequest, check_distinct, parse_request
from router.request import decode_request

from .conftest import body
from .test_fuzz import bodies

CAP = 30


def outcome(decode) -> tuple:  # noqa: ANN001 - a thunk decoding one body
    """What a decoder answers: the error's type and message, or the request's fields."""
    try:
        req = decode()
    except (BadRequest, orjson.JSONDecodeError) as exc:
        return type(exc).__name__, str(exc)
    dense = None if req.inline_dense is None else np.nan_to_num(req.inline_dense, nan=-7.0).tolist()
    rows = None if req.inline_rows is None else req.inline_rows.tolist()
    return (req.request_id, req.user_id, req.user_features, len(req.candidates), req.k, req.policy, req.budget,
            req.budget_fraction, req.budget_count, req.item_ids, req.content_types, rows, dense)


def decoded_and_distinct(raw: bytes) -> PrerankRequest:
    """The typed decode plus the duplicate check it leaves to the feature lookup (router.prerank.score)."""
    req = decode_request(raw, max_candidates=CAP, policy="light", budget=0.3)
    check_distinct(req.item_ids)
    return req


def same(raw: bytes) -> None:
    typed = outcome(lambda: decoded_and_distinct(raw))
    checked = outcome(lambda: parse_request(orjson.loads(raw), max_candidates=CAP, policy="light", budget=0.3))
    assert typed == checked, raw


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies)
def test_fuzzed_bodies_decode_as_the_checked_path_does(b) -> None:
    same(json.dumps(b).encode())


@pytest.mark.parametrize("change", [
    {"k": True}, {"k": 5.0}, {"k": 0}, {"k": None}, {"k": 2**70}, {"k": 2**64 - 1}, {"k": 2**64}, {"k": -(2**63) - 1},
    {"policy": None}, {"policy": "nope"},
    {"policy": "expressive_all"}, {"budget": None}, {"budget_fraction": 0.5}, {"budget_count": 3},
    {"budget_count": True}, {"budget_fraction": 0.5, "budget": 0.1}, {"budget": 2},
    {"user_features": None}, {"user_features": {"history": ["a", "b"], "other": 1}},
    {"user_features": {"history": ["n"] * (MAX_HISTORY + 1)}}, {"user_features": {"history": [1]}},
    {"user_features": []}, {"request_id": ""}, {"user_id": "x" * 257}, {"candidates": []},
])
def test_edge_bodies_decode_as_the_checked_path_does(change: dict) -> None:
    same(json.dumps({**body(5), **change}).encode())


@pytest.mark.parametrize("candidates", [
    [{"item_id": "a", "features": {"exp_1d": True}}], [{"item_id": "a", "features": {"exp_1d": 1e39}}],
    [{"item_id": "a", "features": {"exp_1d": 3, "clk_1d": 0.5, "other": 1.0}}, {"item_id": "b", "features": {}}],
    [{"item_id": "a", "features": None}, {"item_id": "a"}], [{"item_id": "a", "content_type": None}],
    [{"item_id": "a", "features": None}, {"item_id": "b"}, {"item_id": "a"}],
    [{"item_id": "a", "content_type": ""}], [{"item_id": 3}], [{"item_id": f"i{i}"} for i in range(CAP + 1)],
])
def test_edge_candidates_decode_as_the_checked_path_does(candidates: list) -> None:
    same(json.dumps({**body(0), "candidates": candidates}).encode())


@pytest.mark.parametrize("raw", [
    b'{"request_id": "r", "user_id": "u", "candidates": [{"item_id": "\\ud800"}]}',
    b'{"request_id": "r", "user_id": "u", "candidates": [{"item_id": "a", "features": {"exp_1d": 1e400}}]}',
    b'{"request_id": "r", "user_id": "u", "candidates": [{"item_id": "a", "features": {"exp_1d": NaN}}]}',
    b'{"request_id": "r", "user_id": "u", "candidates": [{"item_id": "a", "features": {"exp_1d": '
    + b"9" * 400 + b'}}]}',
    b'{"request_id": "r", "request_id": "s", "user_id": "u", "candidates": [{"item_id": "a", "item_id": "b"}]}',
    b'{"request_id": "r", "user_id": "u", "candidates": [{"item_id": "a"}]', b"[]", b"",
])
def test_raw_edge_bodies_decode_as_the_checked_path_does(raw: bytes) -> None:
    same(raw)


@pytest.mark.parametrize("candidates", [
    [{"item_id": "a"}, {"item_id": "b", "content_type": "news"}],  # ids only: the lighter schema
    [{"item_id": "a"}, {"item_id": "b", "features": {"exp_1d": 2.0}}],  # statistics on a later candidate
    [{"item_id": "a", "features": None}, {"item_id": "b", "features": {}}],  # none, though the field is there
    [{"item_id": "a", "rank": 3}, {"item_id": "b"}],  # a field neither schema names: ignored, as parse_request does
])
def test_ids_only_and_other_bodies_decode_to_the_same_request(candidates: list) -> None:
    same(json.dumps({**body(0), "candidates": candidates}).encode())


@pytest.mark.parametrize("change", [{"budget": 2}, {"budget_count": -1}, {"budget": 0.1, "budget_fraction": 0.1},
                                    {"policy": "nope"}, {"user_features": {"history": [1]}}, {"k": 0}])
def test_a_repeated_id_is_named_before_the_bodys_other_mistakes(change: dict) -> None:
    """parse_request checks the candidates first: the typed decode, which leaves repeats to the lookup,
    must not answer another mistake of the same body instead."""
    same(json.dumps({**body(0), "candidates": [{"item_id": "a"}, {"item_id": "a"}], **change}).encode())


def test_the_typed_decode_leaves_repeated_ids_to_the_lookup() -> None:
    raw = json.dumps({**body(0), "candidates": [{"item_id": "a"}, {"item_id": "b"}, {"item_id": "a"}]}).encode()
    assert decode_request(raw, max_candidates=CAP).item_ids == ["a", "b", "a"]
    with pytest.raises(BadRequest, match=r"^candidates\[2\]\.item_id: duplicate of candidates\[0\]$"):
        decoded_and_distinct(raw)
