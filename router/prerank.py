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
import math
from typing import Any

import numpy as np

from feature_store.featurize import featurize_user
from feature_store.policies import POLICIES, budget_count, score_policy
from router.features import FeatureCache
from router.holder import ServingModel


class BadRequest(ValueError):
    """A client mistake; the message names the field."""


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

    def expressive_budget(self, n: int) -> int:
        """How many of the ``n`` candidates the expressive tier may score."""
        if self.budget_count is not None:
            return min(n, self.budget_count)
        if self.budget_fraction is not None:
            return min(n, math.ceil(self.budget_fraction * n))
        return budget_count(n, self.budget)


def _str(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise BadRequest(f"{key}: expected a non-empty string of at most 256 characters")
    return value


def parse_request(body: Any, *, max_candidates: int, policy: str = "damr", budget: float = 0.2) -> PrerankRequest:
    """Validate a decoded JSON body; raises :class:`BadRequest` with the field path."""
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object")
    cands = body.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise BadRequest("candidates: expected a non-empty list")
    if len(cands) > max_candidates:
        raise BadRequest(f"candidates: {len(cands)} exceed the cap of {max_candidates}")
    seen: dict[str, int] = {}
    for i, c in enumerate(cands):
        if not isinstance(c, dict) or not isinstance(c.get("item_id"), str) or not c["item_id"]:
            raise BadRequest(f"candidates[{i}].item_id: expected a non-empty string")
        first = seen.setdefault(c["item_id"], i)
        if first != i:
            raise BadRequest(f"candidates[{i}].item_id: duplicate of candidates[{first}]")
        ctype = c.get("content_type", "unknown")
        if not isinstance(ctype, str):
            raise BadRequest(f"candidates[{i}].content_type: expected a string")
        feats = c.get("features")
        if feats is not None and (not isinstance(feats, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in feats.values())):
            raise BadRequest(f"candidates[{i}].features: expected an object of finite numbers")
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
        if not isinstance(hist, list) or len(hist) > 1000 or not all(isinstance(h, str) for h in hist):
            raise BadRequest("user_features.history: expected a list of at most 1000 item ids")
    return PrerankRequest(_str(body, "request_id"), _str(body, "user_id"), uf, cands, k, chosen, float(budget),
                          fraction, count)


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


def score(model: ServingModel, features: FeatureCache, req: PrerankRequest) -> dict[str, Any]:
    """Rank the candidates with ``model`` only (one consistent version)."""
    ids = [c["item_id"] for c in req.candidates]
    items, stamps = features.item_batch(ids, [c.get("content_type", "unknown") for c in req.candidates],
                                        [c.get("features") for c in req.candidates])
    user = featurize_user(req.user_id, req.user_features if req.user_features is not None
                          else features.user_features(req.user_id))
    scores, routed = score_policy(
        req.policy, req.k, req.expressive_budget(len(ids)),
        light=lambda: model.light.score(model.light.user_vector(user), model.item_vectors(items, ids, stamps)),
        expressive=lambda rows: model.expressive.score(user, items if rows is None else items.take(rows)),
    )
    k = min(req.k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    expressive = np.zeros(len(ids), bool)
    expressive[routed] = True
    return {
        "request_id": req.request_id, "version": model.version, "policy": req.policy,
        "expressive_evals": int(len(routed)),
        "items": [{"item_id": ids[i], "score": float(scores[i]),
                   "tier": "expressive" if expressive[i] else "light"} for i in top],
    }
