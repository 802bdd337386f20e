"""How much of the light tier's learned preference to serve: chosen by progressive validation.

The light tier scores ``wide + β · preference + log σ(gate)``. The towers train on the whole
preference (``β`` plays no part in training), but a preference that has not learned anything the
wide part does not know adds noise to a ranking the wide part already makes (a log where users
do not come back). :class:`MixSelector` keeps, for each ``β`` of a small grid, a running
(exponentially decayed) count of the exposed pairs (a clicked against an unclicked exposed item
of one request) each ``β`` orders correctly, measured on every batch *before* it is trained on,
and serves the ``β`` with the best record; ties go to the smaller ``β``, and with no evidence
yet it serves 0, the wide part's ranking. Where the preference helps on data it has not seen
it is switched on; where it does not, it is switched off: the do-no-harm mechanism.

Examples
--------
>>> import numpy as np
>>> mix = MixSelector()
>>> base = np.array([1.0, 0.0, 1.0, 0.0])           # the wide part (and gate) of 4 exposed items
>>> preference = np.array([-3.0, 3.0, 0.0, 0.0])     # it gets the first request's pair wrong
>>> mix.update(base, preference, group=np.array([0, 0, 1, 1]), positive=np.array([1, 0, 1, 0], bool))
>>> mix.beta
0.0
>>> for _ in range(50):  # now the wide part is wrong by 1 and the preference right by 4
...     mix.update(1 - base, np.array([2.0, -2.0, 2.0, -2.0]), np.array([0, 0, 1, 1]), np.array([1, 0, 1, 0], bool))
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
    """The served weight of the light tier's preference, chosen by progressive exposed-pair accuracy."""

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

    def update(self, base: np.ndarray, preference: np.ndarray, group: np.ndarray, positive: np.ndarray) -> None:
        """Count a batch of exposed items (``base``: the rest of their score; ``group``: their
        request; ``positive``: clicked), scored by weights that have not trained on it."""
        n_pos = np.bincount(group, weights=positive)
        n_neg = np.bincount(group, weights=~positive)
        pairs = float((n_pos * n_neg).sum())
        if pairs == 0:
            return
        negative = ~positive
        correct = [float(group_pair_counts(base + b * preference, group, positive)[negative].sum())
                   for b in self.betas]
        self.correct = self.decay * self.correct + np.asarray(correct)
        self.pairs = self.decay * self.pairs + pairs
        best = np.flatnonzero(self.correct >= self.correct.max() - 1e-9)[0]  # ties: the smallest β
        self.beta = float(self.betas[best])
