"""Paired bootstrap over users of a difference in exposed GAUC between two arms.

Two arms scored on the same requests give, per request with a clicked and an unclicked exposed
item, a weight (its exposed items) and an exposed AUC each. GAUC is ``Σ w·auc / Σ w``. The
bootstrap resamples *users* with replacement (a user's requests are not independent of each
other; users are, as far as the log can tell), recomputes both arms' GAUC on the same resample
and reports the mean difference with the 2.5% and 97.5% percentiles of the resampled
differences. It sits beside the per-block t-interval: that one treats time blocks as the
independent units, this one users.

Examples
--------
>>> users = np.array(["a", "a", "b", "c"])
>>> w = np.array([2.0, 2.0, 3.0, 2.0])
>>> better, worse = np.array([1.0, 0.8, 0.9, 1.0]), np.array([0.5, 0.5, 0.6, 0.5])
>>> diff, lo, hi = paired_bootstrap(users, w, better, worse, resamples=200)
>>> round(diff, 3), lo > 0
(0.389, True)
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000


def paired_bootstrap(users: np.ndarray, weight: np.ndarray, auc_a: np.ndarray, auc_b: np.ndarray,
                     resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """GAUC of ``a`` minus GAUC of ``b`` and its 95% percentile interval over users resampled."""
    _, user = np.unique(users, return_inverse=True)
    n_users = int(user.max()) + 1
    sums = np.stack([np.bincount(user, weights=weight * auc_a, minlength=n_users),
                     np.bincount(user, weights=weight * auc_b, minlength=n_users),
                     np.bincount(user, weights=weight, minlength=n_users)])  # (3, U)
    diff = float((sums[0].sum() - sums[1].sum()) / sums[2].sum())
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n_users, n_users), minlength=n_users)
                       for _ in range(resamples)]).astype(np.float64)  # (R, U)
    totals = counts @ sums.T  # (R, 3)
    draws = (totals[:, 0] - totals[:, 1]) / np.maximum(totals[:, 2], 1e-12)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return diff, float(lo), float(hi)


def qualifying_users(groups: list) -> np.ndarray:
    """The user of every group with a clicked and an unclicked exposed item, in stream order: the
    requests ``ProgressiveMetrics`` keeps (``keep_requests``), aligned with its ``per_request``."""
    out = []
    for g in groups:
        sources = {i.source for i in g.items}
        if "exp_pos" in sources and "exp_neg" in sources:
            out.append(g.user_id)
    return np.array(out)
