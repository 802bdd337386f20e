"""Join a request's events and turn them into one labelled hybrid sample group (pure logic, no I/O).

A request's state (:class:`Pending`, JSON-serializable for the changelog-backed table) gathers
its ranking event, exposures and positive feedback. :func:`is_due` says when its join window
has closed; :func:`assemble` labels and samples:

- ``exp_pos`` / ``exp_neg``: exposed items with / without positive feedback;
- ``rn``: up to ``max_rn`` unexposed candidates with ``rank_pos > rn_min_rank``;
- ``prn``: up to ``max_prn`` unexposed candidates with ``prerank_pos > prn_min_prerank`` that do
  not qualify as ``rn``;
- ``gn``: ``gn_per_exposed`` pool items per exposed item, never a candidate of the request.

One source per item, by precedence ``exp_pos`` > ``exp_neg`` > ``rn`` > ``prn`` > ``gn``: each
item of a group is listed once, under the first source it qualifies for.

Feedback on an item without an exposure event *implies* the exposure when the item is a
candidate of the request (:func:`implied_exposures`; its position unknown, listed after the
exposed ones); feedback on an item that is neither exposed nor a candidate is an orphan
(:func:`orphan_feedback`), which the caller dead-letters. Nothing is dropped silently.

Sampling is seeded by the request id, so a replay assembles the same ``rn``/``prn`` items and
the same ``group_id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import operator
import zlib
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any

import msgspec
import numpy as np

from streams.contract.schemas import ExposureEvent, RankingColumns, RankingEvent, SampleGroup, SampleItem, is_positive
from streams.join.pool import CandidatePool

#: (item ids, as-of event time ms) -> statistics per item
StatsReader = Callable[[Sequence[str], int], list[dict[str, float]]]


@dataclasses.dataclass(frozen=True, slots=True)
class AssemblerConfig:
    window_ms: int = 30_000
    lateness_ms: int = 5_000
    dwell_threshold_ms: int = 30_000
    max_rn: int = 10
    rn_min_rank: int = 50
    max_prn: int = 10
    prn_min_prerank: int = 200
    gn_per_exposed: int = 2
    #: the most distinct items a request may expose or get feedback on; past it the request is
    #: dead-lettered (``oversized_request``): its group, ``(1 + gn_per_exposed)`` items per exposed one
    #: plus ``rn`` and ``prn``, would pass what the learner takes (or mix several requests under a
    #: reused id), and its pending state would grow with every event
    max_request_items: int = 500


def group_id(request_id: str, revision: int = 0) -> str:
    """Deterministic id of a request's group (revision > 0: a correction)."""
    return hashlib.sha1(f"{request_id}:{revision}".encode()).hexdigest()[:20]


def new_pending() -> dict[str, Any]:
    return {"ranking": False, "exposed": {}, "positive": [], "feedback": [], "last_ts": 0, "last_wall_ms": 0,
            "revision": 0}


#: the event ids a request's state remembers (the newest; a retry of an older one counts again): with
#: ``max_request_items`` exposures and a few feedback events each, a whole request's, in about 22 KB of state
MAX_EVENT_IDS = 1000


def remember_event(state: dict[str, Any], event_id: str, cap: int = MAX_EVENT_IDS) -> bool:
    """Remember ``event_id`` in a request's state (its 8-byte BLAKE2b digest, newest ``cap`` kept);
    False when the state has it already: a producer's retry of an event taken before.

    >>> st = new_pending()
    >>> remember_event(st, "e1"), remember_event(st, "e2"), remember_event(st, "e1")
    (True, True, False)
    >>> remember_event(st, "e3", cap=2), remember_event(st, "e1", cap=2)  # e1 was forgotten for e3
    (True, True)
    """
    ids = state.setdefault("event_ids", {})  # digest -> 1, oldest first (a JSON object keeps its order)
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()
    if digest in ids:
        return False
    ids[digest] = 1
    while len(ids) > cap:
        del ids[next(iter(ids))]
    return True


def add_ranking(state: dict[str, Any], event: RankingEvent | RankingColumns, wall_ms: int) -> None:
    """Mark the ranking event as in (the event itself is kept once, by the caller)."""
    state["ranking"] = True
    _touch(state, event.ts_ms, wall_ms)


def add_exposure(state: dict[str, Any], event: ExposureEvent, wall_ms: int, dwell_threshold_ms: int) -> None:
    if event.type == "exposure":
        state["exposed"][event.item_id] = event.position
    else:
        if is_positive(event, dwell_threshold_ms) and event.item_id not in state["positive"]:
            state["positive"].append(event.item_id)
        feedback = state.setdefault("feedback", [])  # every item with feedback (states before it lack the key)
        if event.item_id not in feedback:
            feedback.append(event.item_id)
    _touch(state, event.ts_ms, wall_ms)


def _unexposed_feedback(state: dict[str, Any]) -> list[str]:
    feedback = state.get("feedback", state["positive"])  # older states tracked positive feedback only
    return [item for item in feedback if item not in state["exposed"]]


def item_count(state: dict[str, Any]) -> int:
    """Distinct items of a request so far: exposed, or with feedback (an exposure by implication or an orphan)."""
    return len(state["exposed"]) + len(_unexposed_feedback(state))


def implied_exposures(state: dict[str, Any], candidates: Container[str]) -> list[str]:
    """Items with feedback but no exposure event that are candidates of the request: exposed by implication."""
    return [item for item in _unexposed_feedback(state) if item in candidates]


def orphan_feedback(state: dict[str, Any], candidates: Container[str]) -> list[str]:
    """Items with feedback that the request neither exposed nor listed as a candidate."""
    return [item for item in _unexposed_feedback(state) if item not in candidates]


def _touch(state: dict[str, Any], ts_ms: int, wall_ms: int) -> None:
    state["last_ts"] = max(state["last_ts"], ts_ms)
    state["last_wall_ms"] = wall_ms


def is_due(state: dict[str, Any], watermark_ms: int | None, wall_ms: int, config: AssemblerConfig,
           adopted_wall_ms: int = 0) -> bool:
    """Window closed: ``window_ms`` of event time after its last event (minus lateness), by the
    partition's watermark; or, when the partition has gone quiet (``watermark_ms`` None: no input
    topic had an event for ``window_ms + lateness_ms`` of wall time), that much wall time after
    the request's last event. ``adopted_wall_ms``: when this worker took the request over from a
    changelog (another worker's wall time is not its own: the quiet clock starts again there).
    A stream that is behind is not quiet: a backlog closes windows by event time only."""
    if watermark_ms is not None:
        return watermark_ms - config.lateness_ms >= state["last_ts"] + config.window_ms
    quiet_since = max(state["last_wall_ms"], adopted_wall_ms)
    return wall_ms >= quiet_since + config.window_ms + config.lateness_ms


_UNRANKED = {None: -math.inf}  # rank_pos -> a number (None: below every rank)


def _above(values: Iterable[float], bound: int) -> Iterator[int]:
    """Indexes of the values above ``bound``, in order."""
    return itertools.compress(itertools.count(), map(operator.gt, values, itertools.repeat(bound)))


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The items of a request's group, chosen and labelled, before their statistics are read."""

    ranking: RankingColumns
    items: list[tuple[str, str, int | None, int | None, str]]  # id, source, prerank, rank, content type
    revision: int
    implied: list[str]  #: items with feedback but no exposure event, exposed by implication
    orphans: list[str]  #: items with feedback that are neither exposed nor candidates


def choose(state: dict[str, Any], ranking: RankingColumns, config: AssemblerConfig,
           pool: CandidatePool) -> Choice:
    """Label the exposed items and sample ``rn``, ``prn`` and ``gn`` of a request whose window has closed."""
    rng = np.random.default_rng(zlib.crc32(ranking.request_id.encode()))
    ids = ranking.item_ids
    index = dict(zip(ids, range(len(ids)), strict=True))
    implied = implied_exposures(state, index)
    exposed: dict[str, int | None] = {**state["exposed"], **dict.fromkeys(implied)}
    positive = set(state["positive"]) & set(exposed)
    prerank, rank, types = ranking.prerank_pos, ranking.rank_pos, ranking.content_types
    chosen: list[tuple[str, str, int | None, int | None, str]] = []
    for item_id in sorted(exposed, key=lambda i: (exposed[i] is None, exposed[i] or 0)):
        k = index.get(item_id)
        source = "exp_pos" if item_id in positive else "exp_neg"
        chosen.append((item_id, source, None, None, "unknown") if k is None else
                      (item_id, source, prerank[k], rank[k], types[k]))
    # eligibility in C-level passes over the columns, in candidate order; exposed candidates skipped
    skip = {index[i] for i in exposed if i in index}
    ranked = [k for k in _above(map(_UNRANKED.get, rank, rank), config.rn_min_rank) if k not in skip]
    skip.update(ranked)  # precedence: an item that qualifies as rn is never a prn
    for source, eligible, cap in (
        ("rn", ranked, config.max_rn),
        ("prn", [k for k in _above(prerank, config.prn_min_prerank) if k not in skip], config.max_prn),
    ):
        picks = rng.choice(len(eligible), min(cap, len(eligible)), replace=False) if eligible else []
        chosen += [(ids[k], source, prerank[k], rank[k], types[k]) for k in (eligible[i] for i in sorted(picks))]
    exclude = index if exposed.keys() <= index.keys() else index.keys() | exposed.keys()
    for item_id, ctype in pool.sample(config.gn_per_exposed * len(exposed), exclude, rng):
        chosen.append((item_id, "gn", None, None, ctype))
    return Choice(ranking, chosen, state["revision"], implied, orphan_feedback(state, index))


def build(choice: Choice, features: Sequence[dict[str, float]], assembled_ms: int) -> SampleGroup:
    """The group of ``choice``, its items carrying ``features`` (one per item, in order)."""
    r = choice.ranking
    items = [SampleItem(i, s, int(s == "exp_pos"), p, k, t, f)
             for (i, s, p, k, t), f in zip(choice.items, features, strict=True)]
    return SampleGroup(group_id(r.request_id, choice.revision), r.request_id, r.user_id, r.ts_ms, assembled_ms,
                       items, r.user_features, correction=choice.revision > 0)


def assemble(state: dict[str, Any], ranking: RankingEvent | RankingColumns, config: AssemblerConfig,
             pool: CandidatePool, stats: StatsReader, assembled_ms: int) -> SampleGroup:
    """The labelled group of a request whose window has closed (:func:`choose`, read, :func:`build`)."""
    choice = choose(state, RankingColumns.of(ranking), config, pool)
    return build(choice, stats([c[0] for c in choice.items], choice.ranking.ts_ms), assembled_ms)


def relabel(group: SampleGroup, positive: set[str], revision: int, assembled_ms: int) -> SampleGroup:
    """A correction of ``group``: the same sampled items and features, its exposed items
    labelled by ``positive``, under the id of ``revision``."""
    items = [msgspec.structs.replace(i, source="exp_pos" if i.item_id in positive else "exp_neg",
                                 label=int(i.item_id in positive))
             if i.source in ("exp_pos", "exp_neg") else i for i in group.items]
    return msgspec.structs.replace(group, group_id=group_id(group.request_id, revision), assembled_ts_ms=assembled_ms,
                               items=items, correction=True)
