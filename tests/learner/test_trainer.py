"""The online trainer: both methods learn, deltas cover exactly the rows that changed."""

import numpy as np
import torch

from learner.batching import Batch
from learner.models import combine
from learner.progressive import ProgressiveMetrics
from learner.trainer import METHODS, OnlineTrainer
from streams.contract.schemas import SOURCES

from .groups import simulated_groups


def held_out_auc(trainer: OnlineTrainer, groups) -> float:
    batch = Batch.from_groups(groups)
    metrics = ProgressiveMetrics()
    with torch.no_grad():
        scores = trainer.light(batch.users, batch.items, batch.group).numpy()
    metrics.update(scores, batch.group.numpy(), np.array(SOURCES)[batch.source.numpy()])
    return metrics.report()["auc"]


def test_every_method_learns_on_simulated_traffic():
    groups = simulated_groups(240, seed=2)
    train, test = groups[:200], groups[200:]
    for method in METHODS:
        # the tiers themselves: the fallback to the counters model may serve the counter alone on a run
        # this short (test_the_served_light_score_falls_back_to_the_counters_model_by_its_weight)
        t = OnlineTrainer(method=method, seed=0, mix_selection=False)
        before = held_out_auc(t, test)
        for i in range(0, 200, 8):
            t.step(train[i:i + 8])
        after = held_out_auc(t, test)
        print(method, before, after)
        assert after > before + 0.1 and after > 0.75, method
        assert t.samples_seen == sum(len(g.items) for g in train)


def test_touched_rows_are_exactly_the_embedding_rows_that_changed():
    t = OnlineTrainer(seed=0)
    groups = simulated_groups(6, seed=4)
    t.step(groups[:3])
    t.take_touched()
    before = {k: v.copy() for k, v in t.light.export()[0].items()}
    t.step(groups[3:])
    touched = t.take_touched()["light"]
    after = t.light.export()[0]
    for name in t.light.embeddings:
        changed = np.flatnonzero(np.abs(after[name] - before[name]).sum(1) > 0)
        assert set(changed) <= set(touched[name]) and len(changed) > 0


def test_the_served_light_score_falls_back_to_the_counters_model_by_its_weight():
    groups = simulated_groups(40, seed=3)
    t = OnlineTrainer(method="ghcl", seed=0)
    for i in range(0, 32, 8):
        t.step(groups[i:i + 8])
    assert float(t.light.fallback) == t.mixer.beta  # the selector's choice is what the tier serves
    batch = Batch.from_groups(groups[32:])
    with torch.no_grad():
        learned = combine(*t.light.parts(batch.users, batch.items, batch.group))
        counter = t.light.counter_score(batch.items)
        for alpha in (0.0, 0.25, 1.0):
            t.light.fallback.fill_(alpha)
            served = t.light(batch.users, batch.items, batch.group)
            torch.testing.assert_close(served, (1 - alpha) * learned + alpha * counter)
