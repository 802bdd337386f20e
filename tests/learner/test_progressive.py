"""Progressive metrics against hand-computed values."""

import numpy as np

from learner.progressive import NEGATIVE_SOURCES, ProgressiveMetrics, group_pair_counts


def test_pair_counts_take_ties_as_half_and_stay_within_the_group():
    scores = np.array([1.0, 3.0, 1.0, 2.0, 5.0])
    positive = np.array([1, 1, 0, 0, 1], bool)
    counts = group_pair_counts(scores, np.array([0, 0, 0, 0, 1]), positive)
    assert counts[[2, 3]].tolist() == [1.5, 1.0]  # 2.5 of the 4 pairs; the other request's 5.0 is not compared


def test_batch_metrics_equal_pair_by_pair_counting():
    rng = np.random.default_rng(0)
    n = 300
    group, scores = rng.integers(0, 12, n), rng.integers(0, 6, n).astype(float)  # many ties
    source = np.array(["exp_pos", *NEGATIVE_SOURCES])[rng.integers(0, 5, n)]
    m = ProgressiveMetrics()
    m.update(scores, group, source)
    for name in NEGATIVE_SOURCES:
        good = total = 0.0
        for g in range(12):
            pos, neg = scores[(group == g) & (source == "exp_pos")], scores[(group == g) & (source == name)]
            good += sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
            total += len(pos) * len(neg)
        assert np.isclose(m.report()["auc_vs"][name], good / total)


def test_metrics_per_source_gauc_and_recall():
    m = ProgressiveMetrics(k=2)
    scores = np.array([0.9, 0.5, 0.7, 0.1, 0.8, 0.2, 0.3])
    group = np.array([0, 0, 0, 0, 1, 1, 1])
    source = np.array(["exp_pos", "exp_neg", "gn", "rn", "exp_pos", "exp_neg", "exp_neg"])
    m.update(scores, group, source)
    r = m.report()
    assert r["auc_vs"] == {"exp_neg": 1.0, "rn": 1.0, "prn": None, "gn": 1.0}
    assert r["gauc"] == 1.0 and r["recall_at_k"] == 1.0
    m.update(np.array([0.1, 0.9, 0.5]), np.array([0, 0, 0]), np.array(["exp_pos", "exp_neg", "prn"]))
    r = m.report()
    assert r["auc_vs"]["prn"] == 0.0 and np.isclose(r["gauc"], (2 * 1 + 3 * 1 + 2 * 0) / 7)
    assert np.isclose(r["recall_at_k"], 2 / 3)


def test_consistency_counts_the_ranking_top_n_inside_the_top_k():
    m = ProgressiveMetrics(k=2, top_n=2)
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.5, 0.4])
    source = np.array(["exp_pos", "gn", "exp_neg", "exp_neg", "exp_pos", "rn"])
    rank_pos = np.array([1, -1, 0, 3, 0, 60])
    m.update(scores, np.array([0, 0, 0, 0, 1, 1]), source, rank_pos)
    # request 0: ranking top 2 = {0.9, 0.7}, top-2 scores = {0.9, 0.8} -> 1/2; request 1: top 1 = {0.5} -> 1
    assert np.isclose(m.report()["consistency_at_k"], (0.5 + 1.0) / 2)
