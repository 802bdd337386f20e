"""The router's numpy forward passes give the torch models' scores."""

import numpy as np
import torch

from feature_store.featurize import featurize_items, featurize_user
from learner.models import ExpressiveCross, LightTwoTower, item_tensors, user_tensors
from router.serving import ExpressiveTier, LightTier


def test_numpy_serving_matches_torch_for_both_tiers():
    torch.manual_seed(0)
    user = featurize_user("u7", {"history": ["a", "b", "c"]})
    items = featurize_items([f"i{i}" for i in range(30)], ["video", "news"] * 15,
                            [{"exp_1h": float(i), "ctr_1h": 0.1, "age_h": i / 3, "user_seen": float(i % 2),
                              "in_history": float(i % 3 == 0)} for i in range(30)])
    group = torch.zeros(30, dtype=torch.long)
    light = LightTwoTower(dim=8)
    with torch.no_grad():  # a trained wide part reads every feature, the user-by-item ones included
        light.wide.linear.weight.normal_()
        light.counter.linear.weight.normal_()
        light.fallback.fill_(0.25)  # the served weight of the tier's counters model
    for model, tier in ((light, LightTier), (ExpressiveCross(dim=8), ExpressiveTier)):
        with torch.no_grad():
            expected = model(user_tensors([user]), item_tensors(items), group).numpy()
        served = tier.from_form(*model.export())
        got = (served.score(served.user_vector(user), served.item_vectors(items), items.dense)
               if tier is LightTier else served.score(user, items))
        np.testing.assert_allclose(got, expected, atol=1e-4)
