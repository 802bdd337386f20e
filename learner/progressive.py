"""Progressive validation: every batch is scored before it is trained on, and these running
metrics accumulate over the stream (River's way of reporting an online learner).

- ``auc_vs[source]``: AUC of positives against the negatives of ``source``, over the pairs
  within each request group (pairs across requests are not compared);
- ``auc``: the same over every negative source;
- ``gauc``: per-request AUC over exposed items (``exp_pos`` vs ``exp_neg``), averaged with
  weights = exposed items, over requests that have both;
- ``recall_at_k``: positives among the top ``k`` of the request's whole hybrid candidate set,
  divided by its positives (averaged over requests with a positive);
- ``consistency_at_k``: the ranking stage's top ``top_n`` items (``rank_pos < top_n``) found in
  the scorer's top ``k`` of the same set, divided by their number (averaged over requests that
  carry ranking positions): how well the pre-ranker agrees with the stage it feeds.

Examples
--------
>>> import numpy as np
>>> m = ProgressiveMetrics(k=1, top_n=2)
>>> m.update(np.array([0.9, 0.1, 0.5]), np.array([0, 0, 0]), np.array(["exp_pos", "exp_neg", "gn"]),
...          rank_pos=np.array([0, 1, -1]))
>>> r = m.report()
>>> r["auc"], r["gauc"], r["recall_at_k"], r["consistency_at_k"]
(1.0, 1.0, 1.0, 0.5)
"""

from __future__ import annotations

import numpy as np

NEGATIVE_SOURCES = ("exp_neg", "rn", "prn", "gn")


def pair_auc_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[float, int]:
    """(correctly ordered pairs + half the ties, number of pairs)."""
    if len(pos) == 0 or len(neg) == 0:
        return 0.0, 0
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    ties = np.searchsorted(neg_sorted, pos, side="right") - below
    return float(below.sum() + 0.5 * ties.sum()), len(pos) * len(neg)


class ProgressiveMetrics:
    """Running ranking metrics of one scorer over request groups."""

    def __init__(self, k: int = 10, top_n: int = 10) -> None:
        self.k, self.top_n = k, top_n
        self.pairs = {s: [0.0, 0] for s in NEGATIVE_SOURCES}
        self.gauc_sum = 0.0
        self.gauc_weight = 0
        self.recall_sum = 0.0
        self.recall_groups = 0
        self.consistency_sum = 0.0
        self.consistency_groups = 0

    def update(self, scores: np.ndarray, group: np.ndarray, source: np.ndarray,
               rank_pos: np.ndarray | None = None) -> None:
        """Add a batch: ``scores``, request index, source name and ranking position (-1 for
        none) of each item."""
        rank_pos = np.full(len(scores), -1) if rank_pos is None else rank_pos
        order = np.argsort(group, kind="stable")
        scores, group, source, rank_pos = scores[order], group[order], source[order], rank_pos[order]
        bounds = np.flatnonzero(np.diff(group)) + 1
        for s, src, pos in zip(*(np.split(a, bounds) for a in (scores, source, rank_pos)), strict=True):
            top = np.argsort(-s, kind="stable")[: self.k]
            ranked = (pos >= 0) & (pos < self.top_n)
            if ranked.any():
                self.consistency_sum += float(ranked[top].sum() / ranked.sum())
                self.consistency_groups += 1
            self._update_group(s, src, top)

    def _update_group(self, scores: np.ndarray, source: np.ndarray, top: np.ndarray) -> None:
        positive = source == "exp_pos"
        pos = scores[positive]
        if len(pos) == 0:
            return
        for name in NEGATIVE_SOURCES:
            good, n = pair_auc_counts(pos, scores[source == name])
            self.pairs[name][0] += good
            self.pairs[name][1] += n
        good, n = pair_auc_counts(pos, scores[source == "exp_neg"])
        if n:
            exposed = int(positive.sum() + (source == "exp_neg").sum())
            self.gauc_sum += exposed * good / n
            self.gauc_weight += exposed
        self.recall_sum += float(positive[top].sum() / positive.sum())
        self.recall_groups += 1

    def merge(self, other: ProgressiveMetrics) -> ProgressiveMetrics:
        """Add ``other``'s counts (the metrics of disjoint groups) to these; returns ``self``.

        >>> a, b = ProgressiveMetrics(k=1), ProgressiveMetrics(k=1)
        >>> a.update(np.array([0.9, 0.1]), np.array([0, 0]), np.array(["exp_pos", "exp_neg"]))
        >>> b.update(np.array([0.1, 0.9]), np.array([0, 0]), np.array(["exp_pos", "exp_neg"]))
        >>> a.merge(b).report()["gauc"]
        0.5
        """
        for name, (good, n) in other.pairs.items():
            self.pairs[name][0] += good
            self.pairs[name][1] += n
        for field in ("gauc_sum", "gauc_weight", "recall_sum", "recall_groups", "consistency_sum",
                      "consistency_groups"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        return self

    def report(self) -> dict[str, float | dict[str, float] | None]:
        """Current values (None where nothing was measured yet)."""
        auc_vs = {s: (g / n if n else None) for s, (g, n) in self.pairs.items()}
        good = sum(g for g, _ in self.pairs.values())
        total = sum(n for _, n in self.pairs.values())
        return {
            "auc": good / total if total else None,
            "auc_vs": auc_vs,
            "gauc": self.gauc_sum / self.gauc_weight if self.gauc_weight else None,
            "recall_at_k": self.recall_sum / self.recall_groups if self.recall_groups else None,
            "consistency_at_k": self.consistency_sum / self.consistency_groups if self.consistency_groups else None,
            "k": self.k,
            "top_n": self.top_n,
            "groups": self.recall_groups,
        }
