"""The router's numpy forward passes give the torch models' scores."""

import numpy as np
import pytest
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
        light.dense_mlp[-1].weight.normal_()  # the non-linear wide part, grown past its zero start
    for model, tier in ((light, LightTier), (ExpressiveCross(dim=8), ExpressiveTier)):
        with torch.no_grad():
            expected = model(user_tensors([user]), item_tensors(items), group).numpy()
        served = tier.from_form(*model.export())
        got = (served.score(served.user_vector(user), served.item_vectors(items), items.dense)
               if tier is LightTier else served.score(user, items))
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_non_linear_wide_part_moves_scores_and_is_cached_with_the_items_until_the_user_met_them():
    torch.manual_seed(1)
    user = featurize_user("u1", {"history": ["a"]})
    items = featurize_items(["a", "b", "c"], ["news"] * 3, [{"ctr_1d": 0.2, "user_seen": 1.0}, {"exp_1d": 50.0}, {}])
    light = LightTwoTower(dim=8)
    with torch.no_grad():
        light.dense_mlp[-1].weight.normal_()
    served = LightTier.from_form(*light.export())
    with_part = served.score(served.user_vector(user), served.item_vectors(items), items.dense)
    tensors, spec = light.export()
    tensors["dense_mlp.2.weight"] = np.zeros_like(tensors["dense_mlp.2.weight"])
    silent = LightTier.from_form(tensors, spec)
    without = silent.score(silent.user_vector(user), silent.item_vectors(items), items.dense)
    assert np.abs(with_part - without).min() > 1e-4  # every candidate, met or not
    # without the candidates' rows: every user-by-item column reads 0, the met candidate's included
    unmet = featurize_items(["a", "b", "c"], ["news"] * 3, [{"ctr_1d": 0.2}, {"exp_1d": 50.0}, {}])
    no_rows = served.score(served.user_vector(user), served.item_vectors(items))
    np.testing.assert_allclose(no_rows, served.score(served.user_vector(user), served.item_vectors(unmet), unmet.dense),
                               atol=1e-6)
    assert abs(no_rows[0] - with_part[0]) > 1e-4 and np.allclose(no_rows[1:], with_part[1:], atol=1e-6)


def test_a_spec_published_before_the_non_linear_wide_part_is_a_linear_tier():
    _, spec = LightTwoTower(dim=8, dense_hidden=0).export()
    assert "dense_hidden" not in spec
    rebuilt = LightTwoTower.from_spec(spec)
    assert rebuilt.dense_hidden == 0 and rebuilt.spec() == LightTwoTower(dim=8, dense_hidden=0).spec()
    assert LightTwoTower.from_spec(LightTwoTower(dim=8).spec()).dense_hidden == LightTwoTower(dim=8).dense_hidden > 0


@pytest.mark.parametrize("history", [[], ["a", "b", "c", "d"]])
@pytest.mark.parametrize("gate", [False, True])
def test_the_expressive_tiers_folded_first_layer_gives_the_torch_scores(history, gate):
    """The served first layer folds the request's constant blocks (user, content type, target x user) out of
    the per-candidate product; with a history and without one (the attention's blocks are then skipped),
    with the gate and without, the scores stay the model's."""
    torch.manual_seed(2)
    user = featurize_user("u3", {"history": history})
    items = featurize_items([f"i{i}" for i in range(40)], ["video", "news", "unknown", "live"] * 10,
                            [{"exp_1h": float(i), "ctr_1h": 0.05 * (i % 4), "user_seen": float(i % 2)}
                             for i in range(40)])
    model = ExpressiveCross(dim=8, hidden=32, gate=gate)
    with torch.no_grad():
        for emb in (model.item_emb, model.user_emb, model.ctype_emb):  # far from the near-zero init: folds matter
            emb.weight.normal_()
        model.mlp[0].weight.normal_(std=0.5)
        expected = model(user_tensors([user]), item_tensors(items), torch.zeros(40, dtype=torch.long)).numpy()
    np.testing.assert_allclose(ExpressiveTier.from_form(*model.export()).score(user, items), expected, atol=1e-4)
