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
_COUNTS = ("gauc_sum", "gauc_weight", "recall_sum", "recall_groups", "consistency_sum", "consistency_groups")


def group_pair_counts(scores: np.ndarray, group: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per item: the positives of its group scored above it, plus half those tied with it.

    Summed over a group's negatives of one source, this is the numerator of that source's
    pairwise AUC (correctly ordered pairs, ties as half). One sort for the whole batch.

    >>> group_pair_counts(np.array([1.0, 3.0, 1.0, 2.0]), np.zeros(4, int), np.array([1, 1, 0, 0], bool)).tolist()
    [1.0, 0.0, 1.5, 1.0]
    """
    order = np.lexsort((scores, group))
    s, g, p = scores[order], group[order], positive[order].astype(np.float64)
    # runs of equal (group, score): every item of a run has the same positives below, tied and above
    new_run = np.r_[True, (s[1:] != s[:-1]) | (g[1:] != g[:-1])]
    run = np.cumsum(new_run) - 1
    tied = np.bincount(run, weights=p)
    upto = np.cumsum(p)  # positives up to and including each position, over the whole batch
    run_end = np.r_[np.flatnonzero(new_run)[1:], len(s)] - 1
    group_start = np.r_[True, g[1:] != g[:-1]]
    before_group = (upto - p)[np.maximum.accumulate(np.where(group_start, np.arange(len(s)), 0))]
    group_total = np.bincount(g, weights=p, minlength=int(g.max(initial=-1)) + 1)[g] if len(g) else p
    above = group_total - (upto[run_end[run]] - before_group)
    out = np.empty(len(s))
    out[order] = above + 0.5 * (tied[run] - p)  # an item is not tied with itself
    return out


class ProgressiveMetrics:
    """Running ranking metrics of one scorer over request groups."""

    def __init__(self, k: int = 10, top_n: int = 10, keep_requests: bool = False) -> None:
        self.k, self.top_n = k, top_n
        #: with ``keep_requests``, per request with a clicked and an unclicked exposed item, in stream
        #: order: its exposed items (the GAUC weight) and its exposed AUC (what a paired bootstrap over
        #: users resamples; an evaluation's, not a long-running learner's: it grows with the stream)
        self.keep_requests = keep_requests
        self.request_weight: list[np.ndarray] = []
        self.request_auc: list[np.ndarray] = []
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
        none) of each item. Array operations over the whole batch (no loop per request)."""
        if len(scores) == 0:
            return
        scores = np.asarray(scores, np.float64)
        _, group = np.unique(group, return_inverse=True)
        n_groups = int(group.max()) + 1
        rank_pos = np.full(len(scores), -1) if rank_pos is None else np.asarray(rank_pos)
        positive = source == "exp_pos"
        per_group = np.bincount(group, weights=positive, minlength=n_groups)
        has_pos = per_group > 0
        above = group_pair_counts(scores, group, positive)  # each negative's correctly ordered pairs
        for name in NEGATIVE_SOURCES:
            neg = source == name
            counted = neg & has_pos[group]
            self.pairs[name][0] += float(above[counted].sum())
            self.pairs[name][1] += int((per_group * np.bincount(group, weights=neg, minlength=n_groups)).sum())
        neg = source == "exp_neg"
        negatives = np.bincount(group, weights=neg, minlength=n_groups)
        good = np.bincount(group, weights=np.where(neg, above, 0.0), minlength=n_groups)
        both = has_pos & (negatives > 0)
        exposed = per_group + negatives
        auc = good[both] / (per_group[both] * negatives[both])
        self.gauc_sum += float((exposed[both] * auc).sum())
        self.gauc_weight += int(exposed[both].sum())
        if self.keep_requests:
            self.request_weight.append(exposed[both])
            self.request_auc.append(auc)
        # rank within the request: by score, descending, ties in arrival order
        order = np.lexsort((np.arange(len(scores)), -scores, group))
        first = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
        rank = np.empty(len(scores), np.int64)
        rank[order] = np.arange(len(scores)) - np.repeat(first, np.diff(np.r_[first, len(scores)]))
        top = rank < self.k
        found = np.bincount(group, weights=positive & top, minlength=n_groups)
        self.recall_sum += float((found[has_pos] / per_group[has_pos]).sum())
        self.recall_groups += int(has_pos.sum())
        ranked = (rank_pos >= 0) & (rank_pos < self.top_n)
        ranked_n = np.bincount(group, weights=ranked, minlength=n_groups)
        kept = np.bincount(group, weights=ranked & top, minlength=n_groups)
        self.consistency_sum += float((kept[ranked_n > 0] / ranked_n[ranked_n > 0]).sum())
        self.consistency_groups += int((ranked_n > 0).sum())

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
        for field in _COUNTS:
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.request_weight += other.request_weight
        self.request_auc += other.request_auc
        return self

    def counts(self) -> np.ndarray:
        """Every running count (``float64``, in a fixed order): the counts of disjoint groups add up
        (data-parallel ranks sum theirs, :meth:`with_counts` reads the sum back)."""
        return np.array([*(v for pair in self.pairs.values() for v in pair),
                         *(getattr(self, f) for f in _COUNTS)], np.float64)

    def with_counts(self, counts: np.ndarray) -> ProgressiveMetrics:
        """New metrics of this ``k`` and ``top_n`` holding ``counts`` (:meth:`counts`' order; no
        per-request lists).

        >>> a = ProgressiveMetrics(k=1)
        >>> a.update(np.array([0.9, 0.1]), np.array([0, 0]), np.array(["exp_pos", "exp_neg"]))
        >>> a.with_counts(2 * a.counts()).report() == a.report() | {"groups": 2}
        True
        """
        out = ProgressiveMetrics(self.k, self.top_n)
        values = iter(counts.tolist())
        for name in NEGATIVE_SOURCES:
            out.pairs[name] = [next(values), int(next(values))]
        for field in _COUNTS:
            setattr(out, field, type(getattr(self, field))(next(values)))
        return out

    def per_request(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight, auc)`` of every request kept (``keep_requests``), in stream order."""
        if not self.request_weight:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self.request_weight).astype(np.float64), np.concatenate(self.request_auc)

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
