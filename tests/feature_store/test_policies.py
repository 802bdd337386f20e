"""Routing decisions: who goes to the expressive tier, how the final order is merged, what each policy asks for."""

import numpy as np

from feature_store.policies import budget_count, merge, route, score_policy


def test_routes_the_budget_nearest_the_top_k_boundary():
    light = np.arange(100, 0, -1, dtype=float)  # candidate i has light rank i
    hard = route(light, k=20, budget=10)
    assert sorted(hard.tolist()) == list(range(15, 25))
    assert sorted(route(light, k=2, budget=10).tolist()) == list(range(0, 10))  # window shifted into range
    assert len(route(light, k=200, budget=10)) == 0  # everything is in the top k: nothing to decide


def test_merge_reorders_only_inside_the_routed_slots():
    light = np.array([9.0, 8.0, 7.0, 6.0, 5.0])
    final = merge(light, np.array([1, 2, 3]), np.array([0.0, 1.0, 2.0]))
    assert final.tolist() == [9.0, 6.0, 7.0, 8.0, 5.0]
    assert sorted(final.tolist()) == sorted(light.tolist())


def test_budget_is_a_fraction_or_a_count():
    assert budget_count(1000, 0.2) == 200 and budget_count(1000, 50) == 50 and budget_count(10, 50) == 10


def test_each_policy_asks_the_tiers_only_for_what_it_needs():
    light = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    asked = []

    def expressive(rows):
        asked.append(None if rows is None else sorted(rows.tolist()))
        return -np.arange(5.0) if rows is None else np.array([0.0, 1.0])

    scores, routed = score_policy("light", 2, 2, lambda: light, expressive)
    assert scores.tolist() == light.tolist() and len(routed) == 0 and asked == []
    scores, routed = score_policy("damr", 2, 2, lambda: light, expressive)
    assert asked == [[1, 2]] and scores.tolist() == [5.0, 3.0, 4.0, 2.0, 1.0]  # routed pair swapped in its slots
    scores, routed = score_policy("expressive_all", 2, 2, lambda: 1 / 0, expressive)  # light never computed
    assert asked[-1] is None and routed.tolist() == list(range(5)) and scores.tolist() == [0, -1, -2, -3, -4]
