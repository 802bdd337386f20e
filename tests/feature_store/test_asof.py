"""The replay's in-memory features equal what the live store gives, as of every request."""

import numpy as np
import pytest

from deploy.settings import REDIS_PREFIX
from feature_store.asof import AsOfFeatures
from feature_store.featurize import FEATURES
from feature_store.item_stats import ItemStats
from feature_store.user_items import CLICKED, SHOWN, UserItems

MIN = 60_000


def random_stream(seed: int, n: int = 400) -> list[tuple[int, str, str, str]]:
    """``(ts_ms, user, item, kind)`` events over three hours, in time order, some late by seconds."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, 3 * 60 * MIN, n))
    out = []
    for t in times:
        item, user = f"n{rng.integers(8)}", f"u{rng.integers(4)}"
        out.append((int(t), user, item, "exp"))
        if rng.random() < 0.3:
            out.append((int(t) + int(rng.integers(1, 5_000)), user, item, "clk"))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_replay_features_equal_the_live_stores_as_of_each_read(redis_client, seed):
    memory = AsOfFeatures(cap=6)
    stats, pairs = ItemStats(redis_client, REDIS_PREFIX), UserItems(redis_client, REDIS_PREFIX, cap=6)
    events = random_stream(seed)
    items = [f"n{i}" for i in range(9)]  # n8 is never shown
    reads = 0
    for n, (t, user, item, kind) in enumerate(events):
        if n % 7 == 0:  # a request now: both stores read as of its time, before its own events count
            at = t
            history = ["n3"]
            expected = [{**s, **p} for s, p in zip(stats.read(items, at), pairs.read(user, items, at, history),
                                                   strict=True)]
            got = memory.read(user, items, at, history)
            for e, g in zip(expected, got, strict=True):
                assert {f: e.get(f) for f in FEATURES} == pytest.approx({f: g.get(f) for f in FEATURES}), (n, at)
            reads += 1
        counts = [(item, kind, t)] + ([(item, "pos", t)] if kind == "clk" else [])
        user_items = [(user, item, SHOWN if kind == "exp" else CLICKED, t)]
        memory.record(counts, user_items)
        stats.record(counts)
        pairs.record(user_items)
    assert reads > 50


def test_reads_must_come_in_time_order():
    memory = AsOfFeatures()
    memory.read("u", ["n1"], 10 * MIN, ())
    with pytest.raises(ValueError, match="time order"):
        memory.read("u", ["n1"], 5 * MIN, ())


def test_age_and_recency_follow_the_first_and_last_exposure():
    memory = AsOfFeatures()
    memory.record([("n1", "exp", 0), ("n1", "exp", 90 * MIN)], [])
    [at_30] = memory.read("u", ["n1"], 30 * MIN, ())
    assert at_30["age_h"] == pytest.approx(0.5) and at_30["since_last_m"] == 29.0
    [at_89] = memory.read("u", ["n1"], 89 * MIN, ())
    assert "since_last_m" not in at_89  # no exposure within the hour before: absent
    [at_95] = memory.read("u", ["n1"], 95 * MIN, ())
    assert at_95["since_last_m"] == 4.0 and at_95["exp_10m"] == 1.0
