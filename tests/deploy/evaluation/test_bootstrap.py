"""The paired bootstrap over users."""

import numpy as np

from deploy.evaluation.bootstrap import paired_bootstrap, qualifying_users
from streams.contract.schemas import SampleGroup, SampleItem


def test_identical_arms_differ_by_zero_and_a_clear_gain_excludes_zero():
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i}" for i in range(100)], 5)
    weight = rng.integers(2, 10, len(users)).astype(float)
    auc = rng.random(len(users))
    assert paired_bootstrap(users, weight, auc, auc) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_bootstrap(users, weight, np.clip(auc + 0.05 + rng.normal(0, 0.05, len(users)), 0, 1), auc)
    assert 0 < lo < diff < hi


def test_resampling_is_by_user_so_one_users_gain_is_not_certain():
    users = np.array(["a"] * 50 + [f"u{i}" for i in range(50)])
    weight = np.ones(100)
    base = np.full(100, 0.5)
    better = base.copy()
    better[:50] = 1.0  # every gain comes from user a
    diff, lo, hi = paired_bootstrap(users, weight, better, base)
    assert diff == 0.25 and lo < 0.05  # a resample without user a shows no gain at all


def test_qualifying_users_are_those_of_requests_with_both_labels():
    def g(user: str, sources: list[str]) -> SampleGroup:
        items = [SampleItem(f"i{k}", s, int(s == "exp_pos"), k, k, "x") for k, s in enumerate(sources)]
        return SampleGroup(user, user, user, 0, 0, items)

    groups = [g("a", ["exp_pos", "exp_neg"]), g("b", ["exp_neg", "gn"]), g("c", ["exp_pos", "exp_neg", "rn"])]
    assert qualifying_users(groups).tolist() == ["a", "c"]
