"""`hap learner --from-version`: a published version's weights go into the trainer whole, its optimizers
start afresh, and a version of another architecture is refused without touching the trainer."""

import numpy as np
import pytest

from learner.resume import ResumeError, load_weights
from learner.trainer import OnlineTrainer

from .groups import simulated_groups


def test_a_versions_weights_replace_the_trainers_and_the_optimizers_start_afresh():
    source, target = OnlineTrainer(seed=1), OnlineTrainer(seed=2)
    target.step(simulated_groups(4, seed=3, n_candidates=30))  # optimizer state to be dropped
    load_weights(target, {name: tier.export() for name, tier in source.tiers().items()}, version=3)
    for name, tier in target.tiers().items():
        mine, theirs = tier.export()[0], source.tiers()[name].export()[0]
        assert mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=f"{name}.{key}")
    assert all(not opt.state or all(float(s.get("step", 0)) == 0 for s in opt.state.values())
               for opt in target.optimizers)
    target.step(simulated_groups(4, seed=4, n_candidates=30))  # and it trains on from there


def test_a_version_of_another_architecture_is_refused_and_nothing_changes():
    other, target = OnlineTrainer(dim=8), OnlineTrainer(seed=2)
    before = {k: v.copy() for k, v in target.tiers()["light"].export()[0].items()}
    with pytest.raises(ResumeError) as info:
        load_weights(target, {name: tier.export() for name, tier in other.tiers().items()}, version=9)
    assert (info.value.version, info.value.tier) == (9, "light") and "'dim': 8" in str(info.value)
    after = target.tiers()["light"].export()[0]
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(ResumeError, match="no expressive tier"):
        load_weights(target, {"light": target.tiers()["light"].export()}, version=9)
