"""One pre-ranking request: validate, featurize, score with the chosen policy, take the top k.

The expressive budget of a request is unambiguous: ``budget_fraction`` (a share of the
candidates, 0..1, rounded up) or ``budget_count`` (a number of candidates, at most the
candidate cap), at most one of them; ``budget`` is a deprecated alias of ``budget_fraction``
(so ``1.0`` means every candidate, never a count of one). Without either, the server's default
applies. Candidate item ids must be unique within a request (400 otherwise).

Examples
--------
>>> req = parse_request({"request_id": "r", "user_id": "u", "k": 1,
...                      "candidates": [{"item_id": "a"}, {"item_id": "b"}]}, max_candidates=10)
>>> req.k, [c["item_id"] for c in req.candidates]
(1, ['a', 'b'])
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np

from feature_store.featurize import FEATURES, USER_ITEM_FEATURES, featurize_user
from feature_store.policies import DAMR_BUDGET, budget_count, score_policy
from feature_store.registry import POLICIES
from feature_store.user_items import user_item_values
from router import metrics
from router.features import DuplicateCandidate, FeatureCache, first_duplicate, inline_matrix
from router.holder import ServingModel
from router.limits import ID_CHARS, MAX_HISTORY, MAX_STATS, MAX_VALUE, NAME_CHARS
from router.timing import RequestTiming


class BadRequest(ValueError):
    """A client mistake; the message names the field."""


class TooManyCandidates(BadRequest):
    """More candidates than the router's cap (HTTP 413)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PrerankRequest:
    request_id: str
    user_id: str
    user_features: dict[str, Any] | None
    candidates: list[dict[str, Any]]
    k: int
    policy: str
    budget: float  # the server default's rule (feature_store.policies.budget_count): a fraction below 1, else a count
    budget_fraction: float | None = None
    budget_count: int | None = None
    item_ids: list[str] = dataclasses.field(default_factory=list)
    content_types: list[str] = dataclasses.field(default_factory=list)
    #: rows whose candidates carry inline statistics, and those statistics' dense rows
    inline_rows: np.ndarray | None = None
    inline_dense: np.ndarray | None = None

    def expressive_budget(self, n: int) -> int:
        """How many of the ``n`` candidates the expressive tier may score."""
        if self.budget_count is not None:
            return min(n, self.budget_count)
        if self.budget_fraction is not None:
            return min(n, math.ceil(self.budget_fraction * n))
        return budget_count(n, self.budget)


def _str(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > ID_CHARS:
        raise BadRequest(f"{key}: expected a non-empty string of at most {ID_CHARS} characters")
    return value


def parse_request(body: Any, *, max_candidates: int, policy: str = "damr",
                  budget: float = DAMR_BUDGET) -> PrerankRequest:
    """Validate a decoded JSON body; raises :class:`BadRequest` with the field path."""
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object")
    cands = body.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise BadRequest("candidates: expected a non-empty list")
    if len(cands) > max_candidates:
        raise TooManyCandidates(f"candidates: {len(cands)} exceed the cap of {max_candidates}")
    checked = _candidates_fast(cands)
    if checked is None:
        _candidates_slow(cands)  # raises the first mistake, with its field path
        checked = _candidates_fast(cands, strict=False)
    ids, ctypes, inline_rows, inline_dense = checked
    k = body.get("k", 100)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BadRequest("k: expected a positive integer")
    chosen = body.get("policy", policy)
    if chosen not in POLICIES:
        raise BadRequest(f"policy: expected one of {', '.join(POLICIES)}")
    fraction, count = _budget(body, max_candidates)
    uf = body.get("user_features")
    if uf is not None:
        if not isinstance(uf, dict):
            raise BadRequest("user_features: expected an object")
        hist = uf.get("history", [])
        if not isinstance(hist, list) or len(hist) > MAX_HISTORY or not all(
                isinstance(h, str) and len(h) <= ID_CHARS for h in hist):
            raise BadRequest(f"user_features.history: expected a list of at most {MAX_HISTORY} item ids of at most "
                             f"{ID_CHARS} characters")
    return PrerankRequest(_str(body, "request_id"), _str(body, "user_id"), uf, cands, k, chosen, float(budget),
                          fraction, count, ids, ctypes, inline_rows, inline_dense)


_NUMBER_TYPES = frozenset({int, float})
_FEATURE_TYPES = frozenset({dict, type(None)})


def _candidates_fast(cands: list[Any], strict: bool = True) -> tuple[list[str], list[str], np.ndarray | None,
                                                                    np.ndarray | None] | None:
    """Ids, content types and inline statistics of valid candidates, checked with C-level passes
    and one array operation for every inline value; None when anything is off (the slow check
    then names it). ``strict=False``: the slow check passed, build without checking again."""
    n = len(cands)
    if strict and set(map(type, cands)) != {dict}:
        return None
    ids = list(map(dict.get, cands, repeat("item_id")))
    ctypes = list(map(dict.get, cands, repeat("content_type"), repeat("unknown")))
    feats = list(map(dict.get, cands, repeat("features")))
    if strict:
        if not set(map(type, feats)) <= _FEATURE_TYPES:
            return None
        if set(map(type, ids)) != {str} or set(map(type, ctypes)) != {str} or len(set(ids)) != n:
            return None
        id_len = np.fromiter(map(len, ids), np.int64, n)
        if id_len.min() < 1 or id_len.max() > ID_CHARS or max(map(len, ctypes)) > NAME_CHARS:
            return None
    rows = np.flatnonzero(np.fromiter(map(bool, feats), bool, n))
    if not len(rows):
        return ids, ctypes, None, None
    present = [feats[i] for i in rows.tolist()]
    if strict and (set(map(type, present)) != {dict} or max(map(len, present)) > MAX_STATS):
        return None
    names = list(chain.from_iterable(present))
    values = list(chain.from_iterable(map(dict.values, present)))
    if strict and (not set(map(type, values)) <= _NUMBER_TYPES or max(map(len, names)) > NAME_CHARS):
        return None
    try:
        array = np.array(values, np.float64)
    except OverflowError:  # an integer beyond float64
        return None
    if strict and not (np.abs(array) <= MAX_VALUE).all():  # one array operation; also false for inf and NaN
        return None
    return ids, ctypes, rows, inline_matrix(present)


def _candidates_slow(cands: list[Any]) -> None:
    """Check candidate by candidate; raises :class:`BadRequest` naming the first mistake."""
    seen: dict[str, int] = {}
    for i, c in enumerate(cands):
        if not isinstance(c, dict) or not isinstance(c.get("item_id"), str) or not c["item_id"] \
                or len(c["item_id"]) > ID_CHARS:
            raise BadRequest(f"candidates[{i}].item_id: expected a non-empty string of at most {ID_CHARS} characters")
        first = seen.setdefault(c["item_id"], i)
        if first != i:
            raise BadRequest(str(DuplicateCandidate(i, first)))
        ctype = c.get("content_type", "unknown")
        if not isinstance(ctype, str) or len(ctype) > NAME_CHARS:
            raise BadRequest(f"candidates[{i}].content_type: expected a string of at most {NAME_CHARS} characters")
        feats = c.get("features")
        if feats is not None and (not isinstance(feats, dict) or len(feats) > MAX_STATS or not all(
                len(name) <= NAME_CHARS and _number(v) for name, v in feats.items())):
            raise BadRequest(f"candidates[{i}].features: expected an object of at most {MAX_STATS} finite numbers "
                             f"of magnitude at most {MAX_VALUE:.4g}, named in at most {NAME_CHARS} characters")


def check_distinct(item_ids: Sequence[str]) -> None:
    """Raise :class:`BadRequest` naming the first repeated id, as ``parse_request`` does (a request that
    :func:`score` does not look up: the lookup checks the ids it maps).

    >>> check_distinct(["a", "b", "a"])
    Traceback (most recent call last):
    ...
    router.prerank.BadRequest: candidates[2].item_id: duplicate of candidates[0]
    """
    if len(set(item_ids)) != len(item_ids):
        raise BadRequest(str(DuplicateCandidate(*first_duplicate(item_ids))))


def _number(value: Any) -> bool:
    """A JSON number a float32 holds (finite, magnitude at most ``MAX_VALUE``)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return abs(float(value)) <= MAX_VALUE
    except OverflowError:
        return False


def _budget(body: dict[str, Any], max_candidates: int) -> tuple[float | None, int | None]:
    """The request's ``(budget_fraction, budget_count)``, at most one set; both None: the server default."""
    given = [key for key in ("budget_fraction", "budget_count", "budget") if key in body]
    if len(given) > 1:
        raise BadRequest(f"{given[1]}: give one of budget_fraction, budget_count (budget is budget_fraction)")
    if not given:
        return None, None
    key, value = given[0], body[given[0]]
    if key == "budget_count":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= max_candidates:
            raise BadRequest(f"budget_count: expected an integer in [0, {max_candidates}]")
        return None, value
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise BadRequest(f"{key}: expected a fraction in [0, 1] (for a number of candidates: budget_count)")
    return float(value), None


_USER_ITEM = [FEATURES.index(name) for name in USER_ITEM_FEATURES]
_USER_ITEM_VALUES = itemgetter(*USER_ITEM_FEATURES)  # a candidate's user_item_values in _USER_ITEM's order


def mark_user_items(dense: np.ndarray, ids: list[str], history: Sequence[str], stored: dict[str, Any],
                    at_ms: float,
                    among: Callable[[list[str]], tuple[list[str], Sequence[int]]] | None = None) -> None:
    """Set the ``USER_ITEM_FEATURES`` columns of the candidates: ``in_history`` from the history the
    request is scored with, ``user_seen``/``user_clicked`` from the user's events the streams
    stored (``stored``: :meth:`router.features.FeatureCache.user_features`) strictly before ``at_ms``.
    ``among`` gives those of some item ids that are candidates, with their rows
    (:meth:`router.features.FeatureCache.rows_among`, a probe per item of the user's; by default the
    user's items probed with every candidate, and a dict of every candidate's row, built here).

    >>> dense = np.zeros((3, len(FEATURES)), np.float32)
    >>> mark_user_items(dense, ["a", "b", "c"], ["b"], {"shown": {"a": 5.0, "c": 20.0}, "clicked": {"a": 6.0}}, 10.0)
    >>> dense[:, _USER_ITEM].tolist()  # user_seen, user_clicked, in_history
    [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    """
    shown, clicked = stored.get("shown", {}), stored.get("clicked", {})
    if not (history or shown or clicked):
        return
    # only the candidates the user met before (a few out of thousands), each given the one as-of rule of
    # feature_store.user_items
    seen = set(history)
    mine = seen | shown.keys() | clicked.keys()
    if among is None:
        met = list(mine.intersection(ids))
        row = dict(zip(ids, range(len(ids)), strict=True))
        rows = [row[i] for i in met]
    else:
        met, rows = among(list(mine))
    if met:
        values = [user_item_values(shown.get(i), clicked.get(i), at_ms, i in seen) for i in met]
        cells = np.ix_(rows, _USER_ITEM)
        dense[cells] = np.maximum(dense[cells], list(map(_USER_ITEM_VALUES, values)))


def score(model: ServingModel, features: FeatureCache, req: PrerankRequest,
          timing: RequestTiming | None = None) -> dict[str, Any]:
    """Rank the candidates with ``model`` only (one consistent version); ``timing``: marked at the end
    of the ``features``, ``tiers`` and ``rank`` stages. Raises :class:`BadRequest` when two candidates
    name the same item (a request of :func:`router.request.decode_request` leaves that check to the lookup)."""
    ids = req.item_ids or [c["item_id"] for c in req.candidates]
    ctypes = req.content_types or [c.get("content_type", "unknown") for c in req.candidates]
    try:
        found = features.lookup(ids, ctypes, req.inline_dense, req.inline_rows)
    except DuplicateCandidate as exc:
        raise BadRequest(str(exc)) from None
    items = found.items
    stored = features.user_features(req.user_id)  # the request's own history, if given, replaces the stored one
    user_features = req.user_features if req.user_features is not None else stored
    user = featurize_user(req.user_id, user_features)
    mark_user_items(items.dense, ids, user_features.get("history") or (), stored, time.time() * 1000,
                    functools.partial(features.rows_among, found))
    if timing is not None:
        timing.mark("features")
    scores, routed = score_policy(
        req.policy, req.k, req.expressive_budget(len(ids)),
        light=lambda: model.light.score(model.light.user_vector(user), model.item_vectors(found), items.dense),
        expressive=lambda rows: model.expressive.score(user, items if rows is None else items.take(rows)),
    )
    if timing is not None:
        timing.mark("tiers")
    if not np.isfinite(scores).all():  # never a null score: a non-finite one ranks last, counted
        metrics.ERRORS.labels("nonfinite_score").inc()
        scores = np.where(np.isfinite(scores), scores, np.finfo(np.float64).min)
    k = min(req.k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")].tolist()
    expressive = np.zeros(len(ids), bool)
    expressive[routed] = True
    tiers = np.where(expressive[top], "expressive", "light").tolist()
    answer = {
        "request_id": req.request_id, "version": model.version, "policy": req.policy,
        "expressive_evals": int(len(routed)),
        "items": [{"item_id": ids[i], "score": s, "tier": t}
                  for i, s, t in zip(top, scores[top].tolist(), tiers, strict=True)],
    }
    if timing is not None:
        timing.mark("rank")
    return answer
