"""The two tiers: a light two-tower model and an expressive cross model with target attention.

Both read the arrays of :mod:`feature_store.featurize` and export a serving form
``(tensors, spec)`` that :mod:`router.serving` runs in numpy, without torch.

Wide part (the residual prior): with ``prior=True`` (the default) each tier adds a linear
function of every as-of feature (:class:`Wide`: item statistics over all windows, item age and
recency, the user-by-item signals) to what its deep part learns. It starts as the item's
centred CTR logit (``feature_store.featurize.PRIOR_FEATURE``, weight 1, every other weight 0)
and the deep part starts near 0, so a fresh model ranks as the smoothed-CTR counter does and
training learns the correction. ``prior=False`` is the ablation (the features are still inputs
of the towers). The light tier's towers read the item-only columns (``ITEM_DIM``), so its item
vectors stay cacheable; the user-by-item columns enter through the wide part only.

Non-linear wide part of the light tier (``dense_hidden``, default ``DENSE_HIDDEN``): a small MLP
over every as-of feature, added to the linear wide part and trained with it (real labels only).
A linear model cannot say "seen before *and* popular today" or "old *and* still clicked"; trees over
the same features showed those interactions are worth about 0.02 exposed GAUC on EB-NeRD
(``docs/results.md``). Its last layer starts at 0, so a fresh tier still ranks as the counter.
The router serves it from the cached item vectors (its value with the user-by-item columns at 0)
and recomputes it per request only for the few candidates the user met (``router.serving``).
``dense_hidden=0`` is the ablation (``ghcl-linear-wide`` in ``hap eval``).

Plausibility gate: with ``gate=True`` (the default) each tier also has a second head ``g``
and scores ``s = preference + prior + log σ(g)``. ``log σ`` saturates at 0: among plausible
items (``g`` large, e.g. everything the ranking stage would show) the order is the preference
head's alone, while implausible candidates (random and pre-ranking negatives) are pushed down
by as much as the gate learns. Separating "could this be shown" from "which of the shown will
be clicked" keeps the constructed negatives from re-ordering the real-label ranking.
``gate=False`` is the ablation.

Examples
--------
>>> import numpy as np
>>> from feature_store.featurize import featurize_items, featurize_user
>>> light = LightTwoTower(dim=8)
>>> users = user_tensors([featurize_user("u1", {"history": ["a"]})])
>>> items = item_tensors(featurize_items(["a", "b"], ["video", "news"], [{}, {}]))
>>> light(users, items, torch.tensor([0, 0])).shape
torch.Size([2])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feature_store.featurize import (
    CONTENT_TYPE_BUCKETS,
    DENSE_DIM,
    HISTORY_LEN,
    ID_BUCKETS,
    ITEM_DIM,
    PRIOR_FEATURE,
    PRIOR_INDEX,
    ItemBatch,
    UserInput,
)

Tensors = dict[str, torch.Tensor]
#: hidden units of the light tier's non-linear wide part (0: linear only); chosen on the EB-NeRD dev split
#: (32 or 64 units, one or two layers: docs/method.md)
DENSE_HIDDEN = 64


def user_tensors(users: list[UserInput]) -> Tensors:
    """Stack user inputs into ``user_idx (G,)`` and ``history (G, H)``."""
    return {
        "user_idx": torch.as_tensor(np.array([u.user_idx for u in users], dtype=np.int64)),
        "history": torch.as_tensor(np.array([u.history for u in users], np.int64).reshape(len(users), HISTORY_LEN)),
    }


def item_tensors(items: ItemBatch) -> Tensors:
    return {
        "item_idx": torch.as_tensor(items.item_idx),
        "ctype_idx": torch.as_tensor(items.ctype_idx),
        "dense": torch.as_tensor(items.dense, dtype=torch.get_default_dtype()),  # float32 unless told otherwise
    }


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _shrink_last(mlp: nn.Sequential, factor: float) -> None:
    """Scale the last layer's initial weights, so the learned part starts small."""
    with torch.no_grad():
        mlp[-1].weight.mul_(factor)
        mlp[-1].bias.zero_()


def _history_mean(emb: nn.Embedding, history: torch.Tensor) -> torch.Tensor:
    mask = (history > 0).float().unsqueeze(-1)
    return (emb(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Wide(nn.Module):
    """A linear score over every as-of feature, starting as the centred CTR logit: the
    ``counters`` arm of ``hap eval`` (a logistic regression, trained alone) and the wide part of
    both tiers.

    >>> from feature_store.featurize import featurize_items
    >>> dense = torch.as_tensor(featurize_items(["a"], ["x"], [{"ctr_1d": 0.1}]).dense)
    >>> round(float(Wide()(dense)[0]), 3)  # ctr_logit(0.1)
    0.747
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DENSE_DIM, 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[0, PRIOR_INDEX] = 1.0
            self.linear.bias.zero_()

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.linear(dense)[:, 0]

    def item_part(self, dense: torch.Tensor) -> torch.Tensor:
        """The item-only columns' share (with the bias): what a cached item vector can hold."""
        return dense[:, :ITEM_DIM] @ self.linear.weight[0, :ITEM_DIM] + self.linear.bias[0]

    def pair_part(self, dense: torch.Tensor) -> torch.Tensor:
        """The user-by-item columns' share."""
        return dense[:, ITEM_DIM:] @ self.linear.weight[0, ITEM_DIM:]


class Tier(nn.Module):
    """Common export of a tier: tensors as float32 numpy arrays plus a JSON spec."""

    name = ""
    #: the large id tables: sparse gradients (only the rows a batch touches), sent as deltas
    embeddings: tuple[str, ...] = ()
    dim: int
    hidden: int
    prior: bool
    gate: bool

    def spec(self) -> dict:
        return {"dim": self.dim, "hidden": self.hidden, "prior_feature": PRIOR_FEATURE if self.prior else None,
                "gate": self.gate}

    @classmethod
    def from_spec(cls, spec: dict) -> Tier:
        """The (untrained) tier whose exported spec is ``spec``: what a reader checks shapes against."""
        return cls(**cls.spec_arguments(spec))

    @classmethod
    def spec_arguments(cls, spec: dict) -> dict:
        """The constructor's keywords that ``spec`` records (a tier with more adds its own)."""
        return {"dim": int(spec["dim"]), "hidden": int(spec["hidden"]),
                "prior": spec.get("prior_feature") is not None, "gate": bool(spec.get("gate"))}

    def _init_prior(self, prior: bool) -> None:
        self.prior = prior
        if prior:
            self.wide = Wide()

    def prior_term(self, items: Tensors) -> torch.Tensor:
        """The wide part's score per item (zeros without the prior)."""
        if not self.prior:
            return torch.zeros(len(items["dense"]), device=items["dense"].device)
        return self.wide(items["dense"])

    def export(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.state_dict().items()}
        return tensors, {**self.spec(), "tier": self.name, "embeddings": list(self.embeddings)}


class LightTwoTower(Tier):
    """User tower (id + mean of history items) and item tower (id, content type, statistics).

    ``light = <u_p, v_p> + wide(x) + log σ(<u_g, v_g>)`` with ``(u_p, u_g)`` the user tower's
    output and ``(v_p, v_g)`` the item tower's. With the wide part the tier also holds a second
    linear model over the same features, ``counter(x)`` (trained on its own, as the ``counters``
    arm), and serves ``(1 - α) · light + α · counter`` with ``α = fallback`` chosen by progressive
    validation (``learner.mixing``; 0 unless a trainer sets it). Both linear parts fold into one:
    served as two dot products of one user vector ``[(1 - α) u_p, 1, u_g]`` and cached item
    vectors ``[v_p, wide_item(i), v_g]`` (the folded linear part's
    item-only share), plus the wide part's user-by-item share per candidate: item vectors depend
    on the item alone, so a router caches them per model version.
    """

    name = "light"
    embeddings = ("item_emb.weight", "user_emb.weight")

    def __init__(self, dim: int = 16, hidden: int = 64, buckets: int = ID_BUCKETS, prior: bool = True,
                 gate: bool = True, dense_hidden: int = DENSE_HIDDEN) -> None:
        super().__init__()
        self.dim, self.hidden, self.gate = dim, hidden, gate
        self.dense_hidden = dense_hidden if prior else 0
        out = 2 * dim if gate else dim
        self.item_emb = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        self.user_emb = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        self.ctype_emb = nn.Embedding(CONTENT_TYPE_BUCKETS, dim)
        self.item_tower = _mlp([2 * dim + ITEM_DIM, hidden, out])
        self.user_tower = _mlp([2 * dim, hidden, out])
        for emb in (self.item_emb, self.user_emb, self.ctype_emb):
            nn.init.normal_(emb.weight, std=0.05)
        self._init_prior(prior)
        if prior:
            _shrink_last(self.item_tower, 0.3)
        if prior:
            #: the counters model inside the tier, and its served weight α (``learner.mixing``)
            self.counter = Wide()
        if self.dense_hidden:
            #: the non-linear wide part: an MLP over every as-of feature
            self.dense_mlp = _mlp([DENSE_DIM, self.dense_hidden, 1])
            _shrink_last(self.dense_mlp, 0.0)  # exactly 0 at the start: the fresh tier ranks as before
        self.register_buffer("fallback", torch.zeros(1))

    def spec(self) -> dict:
        """The common spec, plus ``dense_hidden`` when the tier has the non-linear wide part (a spec
        without it, as versions published before it have, is a tier without one)."""
        return {**super().spec(), "dense_hidden": self.dense_hidden} if self.dense_hidden else super().spec()

    @classmethod
    def spec_arguments(cls, spec: dict) -> dict:
        return {**super().spec_arguments(spec), "dense_hidden": int(spec.get("dense_hidden", 0))}

    def user_vectors(self, users: Tensors) -> torch.Tensor:
        x = torch.cat([self.user_emb(users["user_idx"]), _history_mean(self.item_emb, users["history"])], -1)
        u = self.user_tower(x)
        if not self.prior:
            return u
        return torch.cat([u[:, :self.dim], torch.ones(len(u), 1, device=u.device), u[:, self.dim:]], -1)

    def item_vectors(self, items: Tensors) -> torch.Tensor:
        dense = items["dense"]
        x = torch.cat([self.item_emb(items["item_idx"]), self.ctype_emb(items["ctype_idx"]), dense[:, :ITEM_DIM]], -1)
        v = self.item_tower(x)
        if not self.prior:
            return v
        return torch.cat([v[:, :self.dim], self.wide.item_part(dense)[:, None], v[:, self.dim:]], -1)

    def parts(self, users: Tensors, items: Tensors, group: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(wide, preference, gate)`` per item: the score is ``wide + preference + log σ(gate)``
        (zeros for the wide part of a tier without it; ``gate`` ``None`` for a tier without one), so a
        trainer can cut one part's gradient on one path."""
        products = self.user_vectors(users)[group] * self.item_vectors(items)
        d = self.dim
        dense = items["dense"]
        wide = (products[:, d] + self.wide.pair_part(dense) if self.prior
                else torch.zeros(len(products), device=products.device))
        gate = products[:, d + int(self.prior):].sum(-1) if self.gate else None
        if self.dense_hidden:
            wide = wide + self.dense_mlp(dense)[:, 0]
        return wide, products[:, :d].sum(-1), gate

    def forward(self, users: Tensors, items: Tensors, group: torch.Tensor) -> torch.Tensor:
        """Served scores of ``items``; ``group[i]`` is the row in ``users`` of item ``i``'s request."""
        return self.served(combine(*self.parts(users, items, group)), self.counter_score(items))

    def counter_score(self, items: Tensors) -> torch.Tensor | None:
        """The tier's counters model's score per item (``None`` without the wide part)."""
        return self.counter(items["dense"]) if self.prior else None

    def served(self, light: torch.Tensor, counter: torch.Tensor | None) -> torch.Tensor:
        """``(1 - α) · light + α · counter``, ``α`` the ``fallback`` buffer."""
        return light if counter is None else light + self.fallback * (counter - light)


def combine(wide: torch.Tensor, preference: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """The light tier's score from its :meth:`LightTwoTower.parts`."""
    return wide + preference if gate is None else wide + preference + F.logsigmoid(gate)


class ExpressiveCross(Tier):
    """A cross model: target attention of the candidate over the user's history, then an MLP
    over user, item, attention and their interactions, plus the residual prior."""

    name = "expressive"
    embeddings = ("item_emb.weight", "user_emb.weight")

    def __init__(self, dim: int = 16, hidden: int = 128, buckets: int = ID_BUCKETS, prior: bool = True,
                 gate: bool = True) -> None:
        super().__init__()
        self.dim, self.hidden, self.gate = dim, hidden, gate
        self.item_emb = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        self.user_emb = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        self.ctype_emb = nn.Embedding(CONTENT_TYPE_BUCKETS, dim)
        self.mlp = _mlp([6 * dim + DENSE_DIM, hidden, hidden // 2, 2 if gate else 1])
        for emb in (self.item_emb, self.user_emb, self.ctype_emb):
            nn.init.normal_(emb.weight, std=0.05)
        self._init_prior(prior)
        if prior:
            _shrink_last(self.mlp, 0.1)

    def forward(self, users: Tensors, items: Tensors, group: torch.Tensor) -> torch.Tensor:
        history = users["history"][group]  # (N, H)
        keys = self.item_emb(history)  # (N, H, d)
        target = self.item_emb(items["item_idx"])  # (N, d)
        logits = (keys * target.unsqueeze(1)).sum(-1) / self.dim**0.5
        logits = logits.masked_fill(history == 0, -1e9)
        weights = torch.softmax(logits, -1) * (history > 0).any(-1, keepdim=True).float()
        attended = (weights.unsqueeze(-1) * keys).sum(1)
        user = self.user_emb(users["user_idx"])[group]
        x = torch.cat(
            [user, attended, target, self.ctype_emb(items["ctype_idx"]), target * attended, target * user,
             items["dense"]], -1,
        )
        out = self.mlp(x)
        score = out[:, 0] + self.prior_term(items)
        return score + F.logsigmoid(out[:, 1]) if self.gate else score
