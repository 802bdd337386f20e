"""The gbdt reference arm learns from the as-of features what a logistic regression over them cannot:
a click rate that is not monotone in a feature."""

import numpy as np

from deploy.evaluation.boosted import RefittedGBDT
from learner.counters import OnlineCounters
from streams.contract.schemas import SampleGroup, SampleItem


def groups(n: int, seed: int = 0) -> list[SampleGroup]:
    """Requests of 8 exposed items; an item is clicked when its 1-day exposures lie in a middle band."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(n):
        exposures = rng.integers(1, 1000, 8)
        clicked = (exposures > 300) & (exposures < 600)
        items = [SampleItem(f"i{g}-{j}", "exp_pos" if c else "exp_neg", int(c), j, j, "video",
                            {"exp_1d": float(e), "clk_1d": 0.0})
                 for j, (e, c) in enumerate(zip(exposures, clicked, strict=True))]
        out.append(SampleGroup(f"g{g}", f"r{g}", f"u{g % 50}", g, g, items))
    return out


def test_the_refitted_trees_find_a_band_the_logistic_regression_cannot():
    stream = groups(3000)
    gbdt, counters = RefittedGBDT(refit_groups=500), OnlineCounters()
    for arm in (gbdt, counters):
        for i in range(0, 1500, 50):
            arm.step(stream[i:i + 50])
        arm.take_metrics()  # the first half: learning
        for i in range(1500, 3000, 50):
            arm.step(stream[i:i + 50])
    assert gbdt.fits == 6  # every 500 groups, from scratch
    later = {name: arm.take_metrics().report()["gauc"] for name, arm in (("gbdt", gbdt), ("counters", counters))}
    assert later["gbdt"] > 0.95 and later["counters"] < 0.8
