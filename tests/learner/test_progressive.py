"""Progressive metrics against hand-computed values."""

import numpy as np

from learner.progressive import ProgressiveMetrics, pair_auc_counts


def test_pair_auc_counts_ties_as_half():
    assert pair_auc_counts(np.array([1.0, 3.0]), np.array([1.0, 2.0])) == (2.5, 4)


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
