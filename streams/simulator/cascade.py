"""One request through a simulated cascade: retrieval -> pre-ranking -> ranking -> exposure -> feedback.

A :class:`Request` holds everything the cascade produces for one page view, with the events'
offsets from the request time; the sink turns offsets into timestamps.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from collections.abc import Callable, Sequence

import numpy as np

from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent

PRERANK_KEEP = 200  # candidates the pre-ranker passes to ranking
#: pre-ranker: (request_id, user_id, user_features, item ids, content types) -> scores
PreRanker = Callable[[str, str, dict, Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass(slots=True)
class Request:
    """What the cascade produced for one page view; ``exposed`` is the ground truth."""

    ranking: RankingEvent
    events: list[tuple[int, ExposureEvent]]  # (offset_ms, event); ts_ms is set by the sink
    exposed: dict[str, int]  # item_id -> ground-truth label (positive feedback)


def run_cascade(request_id: str, user_id: str, user_features: dict, item_ids: Sequence[str],
                channels: Sequence[str], content_types: Sequence[str], prerank_scores: np.ndarray,
                rank_scores: np.ndarray, n_exposed: int, keep: int = PRERANK_KEEP) -> tuple[RankingEvent, list[str]]:
    """Positions from scores: the pre-ranker keeps its top ``keep``, the ranker orders those and the
    top ``n_exposed`` are shown. Returns the ranking event and the exposed ids in order.

    Examples
    --------
    >>> ev, shown = run_cascade("r", "u", {}, ["a", "b", "c"], ["x"] * 3, ["video"] * 3,
    ...                         np.array([0.1, 0.9, 0.5]), np.array([0.0, 0.2, 0.8]), n_exposed=1, keep=2)
    >>> shown, [(c.prerank_pos, c.rank_pos) for c in ev.candidates]
    (['c'], [(2, None), (0, 1), (1, 0)])
    """
    if keep < n_exposed:
        raise ValueError(f"keep ({keep}) must be at least n_exposed ({n_exposed})")
    pre_order = np.argsort(-prerank_scores, kind="stable")
    pre_pos = np.empty(len(item_ids), np.int64)
    pre_pos[pre_order] = np.arange(len(item_ids))
    kept = pre_order[:keep]
    rank_order = kept[np.argsort(-rank_scores[kept], kind="stable")]
    rank_pos = {int(i): p for p, i in enumerate(rank_order)}
    candidates = [
        Candidate(item_ids[i], channels[i], int(pre_pos[i]), float(prerank_scores[i]),
                  rank_pos.get(i), float(rank_scores[i]) if i in rank_pos else None, content_types[i])
        for i in range(len(item_ids))
    ]
    exposed = [item_ids[i] for i in rank_order[:n_exposed]]
    return RankingEvent(request_id, user_id, 0, candidates, user_features), exposed


def router_preranker(url: str, k: int = PRERANK_KEEP, timeout_s: float = 2.0) -> PreRanker:
    """A pre-ranker that asks the live router (closing the loop); raises ``OSError`` on failure."""

    def prerank(request_id: str, user_id: str, user_features: dict, item_ids: Sequence[str],
                content_types: Sequence[str]) -> np.ndarray:
        body = json.dumps({
            "request_id": request_id, "user_id": user_id, "user_features": user_features, "k": k,
            "candidates": [{"item_id": i, "content_type": c} for i, c in zip(item_ids, content_types, strict=True)],
        }).encode()
        req = urllib.request.Request(f"{url}/v1/prerank", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            ranked = json.loads(resp.read())["items"]
        scores = np.full(len(item_ids), -1e9)
        index = {item: n for n, item in enumerate(item_ids)}
        for pos, item in enumerate(ranked):
            scores[index[item["item_id"]]] = -pos
        return scores

    return prerank


def feedback_events(request_id: str, user_id: str, item_id: str, position: int, clicked: bool,
                    rng: np.random.Generator, delay_ms: float) -> list[tuple[int, ExposureEvent]]:
    """The exposure and, for a click, one feedback event ``delay_ms`` (random) later."""
    shown = 50 + 10 * position
    events = [(shown, ExposureEvent(request_id, user_id, item_id, 0, "exposure", position=position,
                                    event_id=f"{request_id}:{item_id}:x"))]
    if clicked:
        engaged = rng.random(3) < (0.3, 0.1, 0.05)
        events.append((shown + int(rng.exponential(delay_ms)) + 1, ExposureEvent(
            request_id, user_id, item_id, 0, "feedback", click=True, like=bool(engaged[0]),
            comment=bool(engaged[1]), share=bool(engaged[2]), dwell_ms=int(rng.gamma(2.0, 20_000)),
            event_id=f"{request_id}:{item_id}:f")))
    return events
