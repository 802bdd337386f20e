"""The counters arm: a logistic regression over the as-of features, scored before it trains."""

import numpy as np

from learner.counters import OnlineCounters
from streams.contract.schemas import SampleGroup, SampleItem


def group(n: int, rng: np.random.Generator) -> SampleGroup:
    """Items whose click depends on a user-by-item signal the CTR counter cannot see: clicked before."""
    items = []
    for j in range(6):
        before = float(rng.random() < 0.5)
        clicked = rng.random() < (0.6 if before else 0.1)
        items.append(SampleItem(f"i{n}-{j}", "exp_pos" if clicked else "exp_neg", int(clicked), j, j, "x",
                                {"ctr_1d": 0.05, "user_clicked": before}))
    return SampleGroup(f"g{n}", f"r{n}", "u", n, n, items)


def test_counters_learns_what_the_counter_cannot_see_and_scores_progressively():
    rng = np.random.default_rng(0)
    arm = OnlineCounters(lr=0.05)
    first = arm.step([group(0, rng)])
    assert np.allclose(first, first[0])  # before training: the CTR prior, equal here
    for n in range(1, 200):
        arm.step([group(n, rng)])
    early = arm.take_metrics().report()["gauc"]
    for n in range(200, 300):
        arm.step([group(n, rng)])
    late = arm.take_metrics().report()["gauc"]
    assert late > 0.7 and late > early
