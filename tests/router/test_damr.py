"""Routing decisions: who goes to the expressive tier, and how the final order is merged."""

import numpy as np

from router.damr import budget_count, merge, route


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
