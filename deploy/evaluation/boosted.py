"""The ``gbdt`` reference arm of ``hap eval``: gradient-boosted trees (LightGBM) over the same as-of
features as ``counters``, refitted on a schedule.

A reference row a sceptical reviewer asks for, not a servable model (the router serves the two
tiers). It sees exactly what the ``counters`` arm sees: the dense as-of features of each exposed
item (``feature_store.featurize.FEATURES``, conditioned by ``dense_stats_matrix``) and its click.
Scored progressively like every arm: each micro-batch is scored with the latest fit before it
joins the training data. Every ``refit_groups`` groups the trees are fitted again, from scratch,
on the exposed items of the requests that fill the last ``window_rows`` rows, ranking each
request's clicked items above its unclicked ones (LightGBM's ``lambdarank``, one query per
request: the task ``counters`` learns with its conditional logit); before the first fit it
scores with the centred CTR logit, where ``counters`` starts. Parameters are LightGBM's defaults
except 200 rounds at ``learning_rate=0.05``, fixed before any run and not tuned on the shared
logs. (A first run with binary log-loss over the pooled items ranked EB-NeRD's exposed items
worse, 0.715 exposed GAUC against ``lambdarank``'s, in ``docs/results.md``: pooled labels mostly
teach which requests get clicks, not which item within one.)

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
PARAMS = {"objective": "lambdarank", "learning_rate": 0.05, "verbose": -1, "num_threads": 1}
ROUNDS = 200


class RefittedGBDT:
    """LightGBM (``lambdarank``) refitted every ``refit_groups`` groups on the requests of the last
    ``window_rows`` exposed items, with its progressive metrics."""

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
        #: per batch: its exposed items' features, clicks, and items per request (in order)
        self._batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

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
        sizes = np.bincount(batch.group.numpy()[exposed], minlength=batch.n_groups)  # rows come group by group
        self._batches.append((dense[exposed], source[exposed] == SOURCE_CODE["exp_pos"], sizes[sizes > 0]))
        self.since_fit += len(groups)
        if self.since_fit >= self.refit_groups:
            self._refit()
        return scores

    def _refit(self) -> None:
        kept = sum(len(b[0]) for b in self._batches)
        while len(self._batches) > 1 and kept - len(self._batches[0][0]) >= self.window_rows:
            kept -= len(self._batches.pop(0)[0])  # whole batches, so whole requests: at least window_rows kept
        self.since_fit = 0
        rows, labels, sizes = (np.concatenate(part) for part in zip(*self._batches, strict=True))
        if labels.all() or not labels.any():  # one class: nothing to rank yet
            return
        data = self._lightgbm.Dataset(rows, labels.astype(np.float64), group=sizes)
        self._booster = self._lightgbm.train({**PARAMS, "seed": self.seed}, data, num_boost_round=ROUNDS)
        self.fits += 1
