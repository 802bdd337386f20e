"""Replay of the real MIND subset: exposed items and clicks come from the data, the cascade around them is simulated."""

import csv
import gzip

from streams.simulator.replay import MindReplay


def test_replay_keeps_real_exposures_and_clicks(mind_dataset):
    replay = MindReplay(mind_dataset, seed=0, n_candidates=400)
    with gzip.open(mind_dataset / "behaviors.tsv.gz", "rt") as f:
        rows = {r[0]: r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    assert len(replay) == len(rows) == 5000
    for request, _ in zip(replay.requests(), range(30), strict=False):
        impressions = rows[request.ranking.request_id.removeprefix("mind-")][4].split()
        assert request.exposed == {i.rsplit("-", 1)[0]: int(i.endswith("-1")) for i in impressions}
        clicked = {e.item_id for _, e in request.events if e.type == "feedback" and e.click}
        assert clicked == {i for i, label in request.exposed.items() if label}
        by_id = {c.item_id: c for c in request.ranking.candidates}
        assert all(by_id[i].rank_pos < len(impressions) for i in request.exposed)  # shown = ranked on top
        assert sum(c.prerank_pos > 200 for c in request.ranking.candidates) > 0
