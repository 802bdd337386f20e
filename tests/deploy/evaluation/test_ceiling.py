import numpy as np

from deploy.evaluation.ceiling import FEATURES, as_of_features, ceiling


def taste_log(n: int, seed: int = 0) -> list:
    """Users who clicked ``hA`` click ``x``, users who clicked ``hB`` click ``y``: both items have the
    same overall CTR, so only the collaborative statistic can rank them."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n):
        taste = rng.integers(2)
        clicked = ("x", "y")[taste] if rng.random() < 0.9 else ("y", "x")[taste]
        rows.append((f"u{r}", 60.0 * r, [("hA", "hB")[taste]], [(i, int(i == clicked)) for i in ("x", "y")]))
    return rows


def test_features_are_as_of_the_request():
    table = as_of_features([("u1", 0.0, [], [("a", 1)]), ("u2", 10.0, [], [("a", 0)])])
    ctr = table.x[:, FEATURES.index("ctr")]
    assert ctr[0] == 0.0  # nothing before the first request: the prior
    assert ctr[1] > 0.0  # the first request's click counts for the second, not for itself
    assert table.x[0, FEATURES.index("age_d")] == 0.0


def test_ceiling_finds_a_collaborative_signal_the_counter_misses():
    result = {r["scorer"]: r for r in ceiling(taste_log(400), blocks=4)}
    assert abs(result["ctr"]["gauc"] - 0.5) < 0.1
    assert result["counters+co_ctr"]["gauc"] > 0.8
    assert result["counters+co_ctr"]["delta_vs_ctr"] - result["counters+co_ctr"]["delta_ci95"] > 0.2
