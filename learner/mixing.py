"""How much to fall back from the learned light tier to its counters model: chosen by progressive validation.

The light tier serves ``base + β · delta`` with ``base`` its full learned score and ``delta`` the
counters model's score minus it (``learner.models.LightTwoTower``: ``(1 - β) · light + β ·
counter``). Both train on their own losses (``β`` plays no part in training), but where the
learned tier has found nothing the counters model does not know (a log where users do not come
back), its extra parts add noise to the ranking the counters model makes. :class:`MixSelector`
keeps, for each ``β`` of a small grid, a running (exponentially decayed) count of the exposed
pairs (a clicked against an unclicked exposed item of one request) each ``β`` orders correctly,
measured on every batch *before* it is trained on, and serves the ``β`` with the best record;
ties, and no evidence yet, go to the smaller ``β`` (the full learned tier). Where the learned
tier beats its counters model on data it has not seen, it is served; where it does not, the
counters model is: the do-no-harm mechanism.

Examples
--------
>>> import numpy as np
>>> mix = MixSelector()
>>> base = np.array([1.0, 0.0, 1.0, 0.0])           # the learned score of 4 exposed items, 2 requests
>>> delta = np.array([-3.0, 3.0, 0.0, 0.0])          # moving towards the other gets request 0 wrong
>>> mix.add(mix.evidence(base, delta, group=np.array([0, 0, 1, 1]), positive=np.array([1, 0, 1, 0], bool)))
>>> mix.beta
0.0
>>> later = mix.evidence(1 - base, np.array([2.0, -2.0, 2.0, -2.0]), np.array([0, 0, 1, 1]),
...                      np.array([1, 0, 1, 0], bool))
>>> for _ in range(50):  # now the learned score is wrong by 1 and the other right by 3
...     mix.add(later)
>>> mix.beta  # the smallest weight that orders both pairs
0.5
"""

from __future__ import annotations

import numpy as np

from learner.progressive import group_pair_counts

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: the weight of a batch's pairs in the running counts falls by this factor per batch
DECAY = 0.98


class MixSelector:
    """A served mixing weight ``β`` of ``base + β · delta``, chosen by progressive exposed-pair accuracy."""

    def __init__(self, betas: tuple[float, ...] = BETAS, decay: float = DECAY) -> None:
        self.betas = np.asarray(betas, np.float64)
        self.decay = decay
        self.correct = np.zeros(len(betas))
        self.pairs = 0.0
        self.beta = 0.0

    def state(self) -> dict[str, float | list[float]]:
        """The running counts and the served weight (JSON, for a checkpoint)."""
        return {"correct": self.correct.tolist(), "pairs": self.pairs, "beta": self.beta}

    def load(self, state: dict[str, float | list[float]]) -> None:
        """Take back what :meth:`state` gave."""
        self.correct = np.asarray(state["correct"], np.float64)
        self.pairs, self.beta = float(state["pairs"]), float(state["beta"])

    def evidence(self, base: np.ndarray, delta: np.ndarray, group: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """A batch of exposed items (``base`` and ``delta`` of their scores; ``group``: their request;
        ``positive``: clicked), scored by weights that have not trained on it: the pairs each ``β``
        orders correctly, then the pairs (what :meth:`add` takes; the evidence of disjoint batches
        adds up)."""
        n_pos = np.bincount(group, weights=positive)
        n_neg = np.bincount(group, weights=~positive)
        pairs = float((n_pos * n_neg).sum())
        if pairs == 0:
            return np.zeros(len(self.betas) + 1)
        negative = ~positive
        correct = [float(group_pair_counts(base + b * delta, group, positive)[negative].sum())
                   for b in self.betas]
        return np.asarray([*correct, pairs])

    def add(self, evidence: np.ndarray) -> None:
        """Count a batch's :meth:`evidence` (nothing without a pair)."""
        if evidence[-1] == 0:
            return
        self.correct = self.decay * self.correct + evidence[:-1]
        self.pairs = self.decay * self.pairs + float(evidence[-1])
        best = np.flatnonzero(self.correct >= self.correct.max() - 1e-9)[0]  # ties: the smallest β
        self.beta = float(self.betas[best])
