"""Gradient-Harmonized Contrastive Learning: two loss paths, harmonized gradients, adaptive sampling.

- easy path: each positive against the request's easy negatives (``gn``, ``prn``), InfoNCE;
- hard path: each positive against the request's hard negatives (``exp_neg``, ``rn``), listwise;
- :func:`harmonize` protects the hard path: when the two gradients conflict (negative cosine)
  only the easy gradient is projected onto the normal plane of the hard one, and the easy
  gradient's norm is capped at a fraction of the hard one's, so the easy path can never
  dominate or undo the hard path's step;
- :class:`ConflictSampler` keeps a share of the *constructed* hard negatives (``rn``) that
  falls as the EMA of the measured conflict rises (bounded); real-label negatives (``exp_neg``)
  are never dropped.

The equations are in ``docs/method.md``.

Examples
--------
>>> import torch
>>> g, c = harmonize(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
>>> round(c, 3), [round(x, 3) for x in g.tolist()]
(-0.707, [-0.5, 1.5])
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F


def contrastive_path_loss(scores: torch.Tensor, group: torch.Tensor, positive: torch.Tensor,
                          negative: torch.Tensor, n_groups: int, temperature: float = 1.0,
                          count: float | None = None) -> torch.Tensor:
    """Mean over positives of ``-log softmax`` of the positive among itself and its group's negatives.

    ``-log(e^{s_p} / (e^{s_p} + sum_n e^{s_n})) = softplus(logsumexp_n s_n - s_p)``; positives
    whose group has no negative of the path are left out. Returns 0 when none is left. With
    ``count`` the sum is divided by it instead of by this batch's positives left in
    (:func:`path_positives`): data-parallel ranks divide by their total, so that their losses add
    up to the mean over all of their batches.
    """
    s = scores / temperature
    neg = group_logsumexp(s[negative], group[negative], n_groups)
    pos_idx = positive.nonzero().squeeze(-1)
    lse = neg[group[pos_idx]]
    valid = torch.isfinite(lse)
    if not valid.any():
        return s.sum() * 0.0
    terms = F.softplus(lse[valid] - s[pos_idx][valid])
    return terms.mean() if count is None else terms.sum() / count


def path_positives(group: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, n_groups: int) -> int:
    """The positives :func:`contrastive_path_loss` averages over: those whose group has a negative.

    >>> path_positives(torch.tensor([0, 0, 1]), torch.tensor([True, False, True]),
    ...                torch.tensor([False, True, False]), 2)
    1
    """
    has_negative = torch.zeros(n_groups, dtype=torch.bool, device=group.device)
    has_negative[group[negative]] = True
    return int((positive & has_negative[group]).sum())


def group_logsumexp(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``logsumexp`` of ``values`` per group; ``-inf`` for a group without values."""
    top = torch.full((n_groups,), float("-inf"), dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, group, values.detach(), "amax")
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(
        0, group, torch.exp(values - safe[group]))
    return torch.where(sums > 0, safe + torch.log(sums.clamp(min=1e-30)), top)


def harmonize(g_easy: torch.Tensor, g_hard: torch.Tensor, max_ratio: float = 1.0,
              eps: float = 1e-12) -> tuple[torch.Tensor, float]:
    """Combine two flat gradients, protecting the hard path.

    On conflict (negative cosine) the easy gradient loses its component against the hard one;
    then its norm is capped at ``max_ratio`` times the hard gradient's. The hard gradient is
    applied as it is. Returns the combined gradient and the cosine measured before.
    """
    n_e, n_h = g_easy.norm(), g_hard.norm()
    if n_e < eps or n_h < eps:
        return g_easy + g_hard, 0.0
    cos = float(g_easy @ g_hard / (n_e * n_h))
    e = g_easy
    if cos < 0:
        e = e - (e @ g_hard) / (n_h * n_h) * g_hard
    cap = max_ratio * n_h
    n = e.norm()
    if n > cap:
        e = e * (cap / n)
    return e + g_hard, cos


@dataclasses.dataclass
class ConflictSampler:
    """Share of droppable hard negatives (``rn``) kept per batch, adapted to the EMA of gradient conflict.

    ``share = max_share - (max_share - min_share) * ema(max(0, -cos))``, always within
    ``[min_share, max_share]``.
    """

    min_share: float = 0.3
    max_share: float = 1.0
    decay: float = 0.9
    seed: int = 0
    conflict_ema: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def share(self) -> float:
        return self.max_share - (self.max_share - self.min_share) * min(1.0, self.conflict_ema)

    def update(self, cosine: float) -> None:
        self.conflict_ema = self.decay * self.conflict_ema + (1 - self.decay) * max(0.0, -cosine)

    def keep(self, droppable: torch.Tensor, start: int = 0, total: int | None = None) -> torch.Tensor:
        """A CPU mask keeping every item that is not ``droppable`` and a ``share`` of those that are.

        Data-parallel ranks (one sampler each, in the same state) draw the numbers of the step's
        ``total`` items and take those from ``start`` on: together, the draws of one sampler over
        all of their items in rank order."""
        n = len(droppable)
        draw = torch.as_tensor(self.rng.random(n if total is None else total)[start: start + n] < self.share)
        return ~droppable.cpu() | draw
