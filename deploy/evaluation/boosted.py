"""The ``gbdt`` reference arm of ``hap eval``: gradient-boosted trees (LightGBM) over the same as-of
features as ``counters``, refitted on a schedule.

A reference row a sceptical reviewer asks for, not a servable model (the router serves the two
tiers). It sees exactly what the ``counters`` arm sees: the dense as-of features of each exposed
item (``feature_store.featurize.FEATURES``, conditioned by ``dense_stats_matrix``) and its click.
Scored progressively like every arm: each micro-batch is scored with the latest fit before it
joins the training data. Every ``refit_groups`` groups the trees are fitted again, from scratch,
on the exposed items of the last ``window_rows`` rows (binary log-loss, clicked against not);
before the first fit it scores with the centred CTR logit, where ``counters`` starts. Parameters
are LightGBM's defaults except 200 rounds at ``learning_rate=0.05``, fixed before any run and
not tuned on the shared logs.

Examples
--------
>>> from streams.contract.schemas import SampleGroup, SampleItem
>>> items = [SampleItem("a", "exp_pos", 1, 0, 0, "video", {"ctr_1d": 0.2}),
...          SampleItem("b", "exp_neg", 0, 1, 1, "video", {"ctr_1d": 0.01})]
>>> arm = RefittedGBDT(refit_groups=1)
>>> scores = arm.step([SampleGroup("g1", "r1", "u1", 0, 0, items)])  # before any fit: the CTR logit
>>> bool(scores[0] > scores[1]), arm.fits
(True, 1)
"""

from __future__ import annotations

import numpy as np

from feature_store.featurize import PRIOR_INDEX
from learner.batching import SOURCE_CODE, Batch
from learner.progressive import ProgressiveMetrics
from streams.contract.schemas import SOURCES, SampleGroup

#: LightGBM's parameters (its defaults otherwise) and boosting rounds; fixed, not tuned on any log
PARAMS = {"objective": "binary", "learning_rate": 0.05, "verbose": -1, "num_threads": 1}
ROUNDS = 200


class RefittedGBDT:
    """LightGBM refitted every ``refit_groups`` groups on the last ``window_rows`` exposed items,
    with its progressive metrics."""

    def __init__(self, refit_groups: int = 1000, window_rows: int = 300_000, k: int = 10, seed: int = 0) -> None:
        try:
            import lightgbm
        except ImportError as exc:  # an optional dependency: the eval extra
            raise SystemExit("hap eval: the gbdt arm needs LightGBM (pip install 'hap-prerank[eval]')") from exc
        self._lightgbm, self.seed = lightgbm, seed
        self._booster: lightgbm.Booster | None = None
        self.refit_groups, self.window_rows, self.k = refit_groups, window_rows, k
        self.metrics = ProgressiveMetrics(k, keep_requests=True)
        self.fits = self.since_fit = 0
        self._rows: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def take_metrics(self) -> ProgressiveMetrics:
        """The progressive metrics since the previous call (or the start), then restarted."""
        taken, self.metrics = self.metrics, ProgressiveMetrics(self.k, keep_requests=True)
        return taken

    def step(self, groups: list[SampleGroup]) -> np.ndarray:
        """Score the groups' items (recorded in the metrics), keep their exposed items for the next
        fit, and refit when due; returns the scores."""
        batch = Batch.from_groups(groups)
        dense = batch.items["dense"].numpy()
        scores = dense[:, PRIOR_INDEX] if self._booster is None else self._booster.predict(dense, raw_score=True)
        scores = np.asarray(scores, np.float64)
        source = batch.source.numpy()
        self.metrics.update(scores, batch.group.numpy(), np.array(SOURCES)[source], batch.rank_pos)
        exposed = (source == SOURCE_CODE["exp_pos"]) | (source == SOURCE_CODE["exp_neg"])
        self._rows.append(dense[exposed])
        self._labels.append(source[exposed] == SOURCE_CODE["exp_pos"])
        self.since_fit += len(groups)
        if self.since_fit >= self.refit_groups:
            self._refit()
        return scores

    def _refit(self) -> None:
        rows, labels = np.concatenate(self._rows)[-self.window_rows:], np.concatenate(self._labels)[-self.window_rows:]
        self._rows, self._labels = [rows], [labels]
        self.since_fit = 0
        if labels.all() or not labels.any():  # one class: nothing to fit yet
            return
        data = self._lightgbm.Dataset(rows, labels.astype(np.float64))
        self._booster = self._lightgbm.train({**PARAMS, "seed": self.seed}, data, num_boost_round=ROUNDS)
        self.fits += 1
