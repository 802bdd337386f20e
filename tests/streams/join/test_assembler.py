"""Labels and sampling of one request's group, against the request's own ground truth."""

import numpy as np

from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent
from streams.join.assembler import (
    AssemblerConfig,
    add_exposure,
    add_ranking,
    assemble,
    group_id,
    implied_exposures,
    is_due,
    new_pending,
    orphan_feedback,
    relabel,
)
from streams.join.pool import CandidatePool
from streams.simulator.world import World


def no_stats(ids, at_ms):
    return [{} for _ in ids]


def build(seed=3):
    request = World(seed=seed, n_users=50, n_items=3000).request(0, n_candidates=600)
    state = new_pending()
    add_ranking(state, request.ranking, 0)
    for _, event in request.events:
        add_exposure(state, event, 0, 30_000)
    pool = CandidatePool()
    for i in range(2000, 3000):
        pool.add(f"i{i}", "video")
    return request, state, pool


def test_group_matches_ground_truth_counts_and_labels():
    request, state, pool = build()
    group = assemble(state, request.ranking, AssemblerConfig(), pool, no_stats, 1)
    by_source = {s: [i for i in group.items if i.source == s] for s in ("exp_pos", "exp_neg", "rn", "prn", "gn")}
    assert {i.item_id for i in by_source["exp_pos"]} == {k for k, v in request.exposed.items() if v}
    assert {i.item_id for i in by_source["exp_neg"]} == {k for k, v in request.exposed.items() if not v}
    assert len(by_source["rn"]) == 10 and all(i.rank_pos > 50 for i in by_source["rn"])
    assert len(by_source["prn"]) == 10 and all(i.prerank_pos > 200 for i in by_source["prn"])
    candidates = {c.item_id for c in request.ranking.candidates}
    assert len(by_source["gn"]) == 20 and not candidates & {i.item_id for i in by_source["gn"]}
    assert not {i.item_id for i in by_source["rn"] + by_source["prn"]} & set(request.exposed)


def test_replay_assembles_the_same_group():
    request, state, pool = build()
    a = assemble(state, request.ranking, AssemblerConfig(), pool, no_stats, 1)
    b = assemble(state, request.ranking, AssemblerConfig(), pool, no_stats, 2)
    assert a.group_id == b.group_id == group_id(request.ranking.request_id)
    assert [(i.item_id, i.source) for i in a.items] == [(i.item_id, i.source) for i in b.items]


def test_window_closes_by_event_time_or_when_the_stream_is_quiet():
    state = new_pending()
    add_exposure(state, ExposureEvent("r", "u", "i", 1_000, "exposure", position=0), wall_ms=500, dwell_threshold_ms=1)
    cfg = AssemblerConfig(window_ms=10_000, lateness_ms=2_000)
    assert not is_due(state, watermark_ms=12_000, wall_ms=600, config=cfg)
    assert is_due(state, watermark_ms=13_000, wall_ms=600, config=cfg)
    assert is_due(state, watermark_ms=None, wall_ms=12_500, config=cfg)  # quiet: by wall time
    assert not is_due(state, watermark_ms=0, wall_ms=12_500, config=cfg)  # behind: event time only
    assert not is_due(state, watermark_ms=None, wall_ms=12_500, config=cfg, adopted_wall_ms=10_000)
    assert np.isclose(state["last_ts"], 1_000)


def test_a_correction_relabels_the_same_items_under_a_new_id():
    request, state, pool = build()
    group = assemble(state, request.ranking, AssemblerConfig(), pool, no_stats, 1)
    negative = next(i.item_id for i in group.items if i.source == "exp_neg")
    positive = {i.item_id for i in group.items if i.source == "exp_pos"} | {negative}
    fixed = relabel(group, positive, revision=1, assembled_ms=2)
    assert fixed.group_id == group_id(group.request_id, 1) != group.group_id and fixed.correction
    assert [i.item_id for i in fixed.items] == [i.item_id for i in group.items]  # same samples, same features
    assert {i.item_id for i in fixed.items if i.label} == positive
    assert [i.source for i in fixed.items if i.item_id != negative] == \
        [i.source for i in group.items if i.item_id != negative]


def _request(n: int = 300) -> RankingEvent:
    """Candidates ranked at i (i < 260) and pre-ranked at i: 201..259 qualify as both rn and prn."""
    return RankingEvent("r-both", "u", 0, [Candidate(f"c{i}", "hot", i, 0.5, i if i < 260 else None, 0.5, "video")
                                           for i in range(n)])


def test_one_source_per_item_with_rn_before_prn():
    ranking = _request()
    state = new_pending()
    add_ranking(state, ranking, 0)
    add_exposure(state, ExposureEvent("r-both", "u", "c0", 1, "exposure", position=0), 0, 30_000)
    pool = CandidatePool()
    for i in range(100):
        pool.add(f"g{i}", "video")
    cfg = AssemblerConfig(max_rn=1000, max_prn=1000)  # every eligible item is picked: overlaps would show
    group = assemble(state, ranking, cfg, pool, no_stats, 1)
    ids = [i.item_id for i in group.items]
    assert len(ids) == len(set(ids))
    sources = {i.item_id: i.source for i in group.items}
    assert sources["c0"] == "exp_neg"
    assert {i for i, s in sources.items() if s == "rn"} == {f"c{i}" for i in range(51, 260)}
    assert {i for i, s in sources.items() if s == "prn"} == {f"c{i}" for i in range(260, 300)}  # not ranked: prn


def test_feedback_without_an_exposure_implies_it_on_a_candidate_and_is_an_orphan_otherwise():
    ranking = _request()
    state = new_pending()
    add_ranking(state, ranking, 0)
    add_exposure(state, ExposureEvent("r-both", "u", "c1", 1, "exposure", position=0), 0, 30_000)
    add_exposure(state, ExposureEvent("r-both", "u", "c2", 2, "feedback", click=True), 0, 30_000)  # no exposure
    add_exposure(state, ExposureEvent("r-both", "u", "c3", 2, "feedback", dwell_ms=5), 0, 30_000)  # not positive
    add_exposure(state, ExposureEvent("r-both", "u", "elsewhere", 3, "feedback", click=True), 0, 30_000)
    candidates = {c.item_id for c in ranking.candidates}
    assert implied_exposures(state, candidates) == ["c2", "c3"]
    assert orphan_feedback(state, candidates) == ["elsewhere"]
    group = assemble(state, ranking, AssemblerConfig(), CandidatePool(), no_stats, 1)
    exposed = [(i.item_id, i.source, i.label) for i in group.items if i.source.startswith("exp_")]
    assert exposed == [("c1", "exp_neg", 0), ("c2", "exp_pos", 1), ("c3", "exp_neg", 0)]  # known positions first
    assert "elsewhere" not in {i.item_id for i in group.items}


def test_an_exposure_arriving_after_its_feedback_is_an_exposure_not_an_implication():
    ranking = _request()
    state = new_pending()
    add_exposure(state, ExposureEvent("r-both", "u", "c5", 2, "feedback", like=True), 0, 30_000)
    add_exposure(state, ExposureEvent("r-both", "u", "c5", 1, "exposure", position=4), 0, 30_000)
    add_ranking(state, ranking, 0)
    candidates = {c.item_id for c in ranking.candidates}
    assert implied_exposures(state, candidates) == [] and orphan_feedback(state, candidates) == []
    group = assemble(state, ranking, AssemblerConfig(), CandidatePool(), no_stats, 1)
    assert [(i.item_id, i.source) for i in group.items if i.source.startswith("exp_")] == [("c5", "exp_pos")]
