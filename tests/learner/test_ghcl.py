"""GHCL mechanics: path losses, harmonization, conflict-sensitive sampling."""

import torch

from learner.ghcl import ConflictSampler, contrastive_path_loss, group_logsumexp, harmonize


def test_path_loss_is_softmax_of_each_positive_against_its_groups_negatives():
    scores = torch.tensor([2.0, 0.0, 1.0, 5.0, 0.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    pos = torch.tensor([True, False, False, True, False])
    neg = torch.tensor([False, True, True, False, False])  # group 1 has no negative on this path
    loss = contrastive_path_loss(scores, group, pos, neg, 2)
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0, 1.0]), 0)[0]
    assert torch.isclose(loss, expected)
    assert torch.isinf(group_logsumexp(scores[neg], group[neg], 2)[1])


def test_harmonize_protects_the_hard_path():
    easy, hard = torch.tensor([10.0, 0.0]), torch.tensor([-1.0, 1.0])
    combined, cosine = harmonize(easy, hard)
    assert cosine < 0
    # the hard gradient is applied whole: the easy part has nothing left against it
    assert torch.isclose(combined @ hard, hard @ hard)
    assert (combined - hard) @ easy > 0  # what is kept of the easy gradient still serves the easy path
    assert (combined - hard).norm() <= hard.norm() + 1e-6  # easy part capped at the hard norm
    aligned, cos2 = harmonize(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert cos2 == 1.0 and torch.allclose(aligned, torch.tensor([2.0, 0.0]))  # no projection, only the cap
    loose, _ = harmonize(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 0.0]), max_ratio=10.0)
    assert torch.allclose(loose, torch.tensor([5.0, 0.0]))


def test_hard_share_falls_with_conflict_and_stays_in_bounds():
    sampler = ConflictSampler(min_share=0.3, max_share=1.0, decay=0.5)
    assert sampler.share == 1.0
    for _ in range(50):
        sampler.update(-1.0)
    assert 0.3 <= sampler.share < 0.31
    hard = torch.tensor([True] * 1000 + [False] * 10)
    kept = sampler.keep(hard)
    assert kept[1000:].all() and 200 < kept[:1000].sum() < 400
