"""The ``counters`` arm: a logistic regression over the as-of features, trained online.

The strongest non-deep baseline a learned pre-ranker must beat: :class:`learner.models.Wide`
(every as-of feature of ``feature_store.featurize.FEATURES``, starting as the centred CTR logit)
trained on the real labels alone, as the light tier's wide part is: a softmax of each clicked
exposed item against the request's unclicked exposed items (a conditional logit, the form of the
exposed-ranking task). Scored progressively like every arm: each micro-batch before it is
trained on.

Examples
--------
>>> from streams.contract.schemas import SampleGroup, SampleItem
>>> items = [SampleItem("a", "exp_pos", 1, 0, 0, "video", {"ctr_1d": 0.2}),
...          SampleItem("b", "exp_neg", 0, 1, 1, "video", {"ctr_1d": 0.01})]
>>> arm = OnlineCounters()
>>> scores = arm.step([SampleGroup("g1", "r1", "u1", 0, 0, items)])
>>> bool(scores[0] > scores[1]), arm.steps
(True, 1)
"""

from __future__ import annotations

import numpy as np
import torch

from learner.batching import SOURCE_CODE, Batch
from learner.ghcl import contrastive_path_loss
from learner.models import Wide
from learner.progressive import ProgressiveMetrics
from streams.contract.schemas import SOURCES, SampleGroup


class OnlineCounters:
    """A :class:`Wide` model trained online (Adam) on the real labels, with its progressive metrics."""

    def __init__(self, lr: float = 0.01, k: int = 10, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = Wide()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.k = k
        self.metrics = ProgressiveMetrics(k, keep_requests=True)
        self.steps = 0

    def take_metrics(self) -> ProgressiveMetrics:
        """The progressive metrics since the previous call (or the start), then restarted."""
        taken, self.metrics = self.metrics, ProgressiveMetrics(self.k, keep_requests=True)
        return taken

    def step(self, groups: list[SampleGroup]) -> np.ndarray:
        """Score the groups' items (recorded in the metrics), then train on them; returns the scores."""
        batch = Batch.from_groups(groups)
        scores = self.model(batch.items["dense"])
        names = np.array(SOURCES)[batch.source.numpy()]
        self.metrics.update(scores.detach().numpy().astype(np.float64), batch.group.numpy(), names, batch.rank_pos)
        positive = batch.source == SOURCE_CODE["exp_pos"]
        loss = contrastive_path_loss(scores, batch.group, positive, batch.mask((SOURCE_CODE["exp_neg"],)),
                                     batch.n_groups)
        self.optimizer.zero_grad()
        if loss.requires_grad:  # a batch with no clicked and unclicked exposed items in one request teaches nothing
            loss.backward()
            self.optimizer.step()
        self.steps += 1
        return scores.detach().numpy()
