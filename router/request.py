"""A pre-ranking body decoded by its type: msgspec checks the JSON against the request's schema while
it reads it, so a well-formed body costs no Python dict per candidate and no second validation pass.

The typed schema accepts a subset of what :func:`router.prerank.parse_request` accepts, never
more but repeated ids: those the feature lookup refuses, with ``parse_request``'s error, when it
maps the ids to their rows (:func:`router.prerank.score`; a set of 5,000 ids cost 0.2-0.3 ms).
Whatever else it refuses, or cannot express (too many candidates, a policy
outside the registry, a statistic past float32, a malformed history), goes through the checked
path (``orjson`` + ``parse_request``), which answers exactly as before and names the mistake. A
test pins the two paths to the same answer on fuzzed bodies (``tests/router/test_request.py``).

Examples
--------
>>> req = decode_request(b'{"request_id": "r", "user_id": "u", "k": 1, "candidates": '
...                      b'[{"item_id": "a"}, {"item_id": "b", "content_type": "video"}]}', max_candidates=10)
>>> req.k, req.item_ids, req.content_types
(1, ['a', 'b'], ['unknown', 'video'])
"""

from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson

from feature_store.policies import DAMR_BUDGET
from feature_store.registry import POLICIES
from router.features import inline_matrix
from router.limits import ID_CHARS, MAX_HISTORY, MAX_STATS, MAX_VALUE, NAME_CHARS
from router.prerank import BadRequest, PrerankRequest, _budget, parse_request

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_CHARS)]
Name = Annotated[str, msgspec.Meta(max_length=NAME_CHARS)]
#: an inline statistic: a number a float32 holds (checked while decoding; infinities and NaN are not JSON)
Stat = Annotated[float, msgspec.Meta(ge=-MAX_VALUE, le=MAX_VALUE)]
#: the largest ``k`` the schema takes (``orjson`` reads integers up to 2**64 - 1 as such, larger ones as
#: floats, which ``k`` refuses; the few in between go through the checked path)
K_MAX = 2**63 - 1


class Candidate(msgspec.Struct, gc=False):
    """One candidate as the wire has it (untracked by the cycle collector: it holds no containers but
    ``features``, whose values are numbers)."""

    item_id: Id
    content_type: Name = "unknown"
    features: Annotated[dict[Name, Stat], msgspec.Meta(max_length=MAX_STATS)] | None = None


class IdCandidate(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A candidate without statistics (most bodies' every candidate): a body whose candidates are all
    such is decoded without a ``features`` slot to fill and test per candidate; any other field sends
    the body to :class:`Body`'s decode."""

    item_id: Id
    content_type: Name = "unknown"


class Body(msgspec.Struct):
    """The body's fields; the budget's are kept as sent and checked by the rule ``parse_request`` uses."""

    request_id: Id
    user_id: Id
    candidates: Annotated[list[Candidate], msgspec.Meta(min_length=1)]
    k: Annotated[int, msgspec.Meta(ge=1, le=K_MAX)] = 100
    policy: str | msgspec.UnsetType = msgspec.UNSET
    budget_fraction: Any = msgspec.UNSET
    budget_count: Any = msgspec.UNSET
    budget: Any = msgspec.UNSET
    user_features: dict[str, Any] | None = None


class IdsBody(Body):
    """A body whose candidates are all :class:`IdCandidate`."""

    candidates: Annotated[list[IdCandidate], msgspec.Meta(min_length=1)]


_DECODERS = (msgspec.json.Decoder(IdsBody), msgspec.json.Decoder(Body))
_ITEM_ID = attrgetter("item_id")
_CONTENT_TYPE = attrgetter("content_type")
_FEATURES = attrgetter("features")
_BUDGET_KEYS = ("budget_fraction", "budget_count", "budget")


def decode_request(raw: bytes, *, max_candidates: int, policy: str = "damr",
                   budget: float = DAMR_BUDGET) -> PrerankRequest:
    """The request in ``raw``; raises ``orjson.JSONDecodeError`` (not JSON) or
    :class:`router.prerank.BadRequest` (naming the field) exactly as ``parse_request`` does."""
    body = None
    for decoder in _DECODERS:
        try:
            body = decoder.decode(raw)
            break
        except msgspec.DecodeError:  # not this schema (or not JSON): the next one, then the checked path, says why
            continue
    req = None if body is None else _typed(body, max_candidates=max_candidates, policy=policy, budget=budget)
    if req is None:
        return parse_request(orjson.loads(raw), max_candidates=max_candidates, policy=policy, budget=budget)
    return req


def _typed(body: Body, *, max_candidates: int, policy: str, budget: float) -> PrerankRequest | None:
    """The request of a body the schema accepted; None where a rule beyond the schema is broken."""
    cands = body.candidates
    n = len(cands)
    if n > max_candidates:
        return None
    ids = list(map(_ITEM_ID, cands))  # distinct or not: the feature lookup says (router.prerank.score)
    chosen = policy if body.policy is msgspec.UNSET else body.policy
    if chosen not in POLICIES:
        return None
    sent = {key: getattr(body, key) for key in _BUDGET_KEYS if getattr(body, key) is not msgspec.UNSET}
    try:
        fraction, count = _budget(sent, max_candidates) if sent else (None, None)
    except BadRequest:  # the checked path names it, or a repeated id it finds first (this path has not looked)
        return None
    uf = body.user_features
    if uf is not None and not _history_ok(uf.get("history", [])):
        return None
    rows = dense = None
    # some candidates carry statistics (their bounds were checked while decoding)
    if not isinstance(body, IdsBody) and any(map(_FEATURES, cands)):
        feats = list(map(_FEATURES, cands))
        rows = np.flatnonzero(np.fromiter(map(bool, feats), bool, n))
        dense = inline_matrix(feats if len(rows) == n else [feats[i] for i in rows.tolist()])
    return PrerankRequest(body.request_id, body.user_id, uf, cands, body.k, chosen, float(budget), fraction, count,
                          ids, list(map(_CONTENT_TYPE, cands)), rows if dense is not None else None, dense)


def _history_ok(history: Any) -> bool:
    return isinstance(history, list) and len(history) <= MAX_HISTORY and all(
        isinstance(h, str) and len(h) <= ID_CHARS for h in history)
