"""Numpy forward passes of both tiers from their serving form (no torch at serving time).

The layouts mirror :mod:`learner.models`: a tier is ``tensors`` (state-dict names to float32
arrays) plus a ``spec``. A test checks both forms give the same scores.
"""

from __future__ import annotations

import numpy as np

from feature_store.featurize import ITEM_DIM, USER_ITEM_FEATURES, ItemBatch, UserInput

Tensors = dict[str, np.ndarray]
Layers = list[tuple[np.ndarray, np.ndarray]]


def _layers(t: Tensors, prefix: str) -> Layers:
    """The ``(weight.T, bias)`` of each linear layer under ``prefix``, in order (found once per version,
    not per call)."""
    index = sorted({int(k.split(".")[1]) for k in t if k.startswith(prefix + ".")})
    return [(t[f"{prefix}.{i}.weight"].T, t[f"{prefix}.{i}.bias"]) for i in index]


def _mlp(layers: Layers, x: np.ndarray) -> np.ndarray:
    for n, (weight_t, bias) in enumerate(layers):
        x = x @ weight_t + bias
        if n < len(layers) - 1:
            np.maximum(x, 0.0, out=x)
    return x


def _has_wide(spec: dict) -> bool:
    """Whether the tier has the wide part (the residual prior)."""
    return spec.get("prior_feature") is not None


def _wide(t: Tensors, dense: np.ndarray) -> np.ndarray:
    """The wide part's score of every candidate (``learner.models.Wide``)."""
    return dense @ t["wide.linear.weight"][0] + t["wide.linear.bias"][0]


def _item_only(dense: np.ndarray) -> np.ndarray:
    """``dense`` with the user-by-item columns zeroed (a copy)."""
    out = dense.copy()
    out[:, ITEM_DIM:] = 0.0
    return out


def _history_mean(emb: np.ndarray, history: np.ndarray) -> np.ndarray:
    ids = history[history > 0]
    return emb[ids].mean(0) if len(ids) else np.zeros(emb.shape[1], np.float32)


class LightTier:
    """The two-tower tier: ``score = item_vectors @ user_vector`` (the folded linear part is one more
    component), plus the linear part's user-by-item share, the non-linear wide part and the gate;
    served as ``(1 - α) · light + α · counter`` (``learner.models.LightTwoTower``)."""

    def __init__(self, tensors: Tensors, spec: dict) -> None:
        self.t, self.spec = tensors, spec
        self.prior = _has_wide(spec)
        self.gate = bool(spec.get("gate"))
        self.head = int(spec["dim"]) + self.prior  # the preference part of a vector
        self.alpha = float(tensors["fallback"][0]) if self.prior and "fallback" in tensors else 0.0
        self.dense_mlp = self.prior and int(spec.get("dense_hidden", 0)) > 0
        self._ones = np.ones(len(USER_ITEM_FEATURES), np.float32)
        self._user_tower, self._item_tower = _layers(tensors, "user_tower"), _layers(tensors, "item_tower")
        self._dense_mlp = _layers(tensors, "dense_mlp")
        if self.prior:  # the two linear models folded into one: (1 - α) wide + α counter
            a = self.alpha
            self.w = (1 - a) * tensors["wide.linear.weight"][0] + a * tensors.get(
                "counter.linear.weight", tensors["wide.linear.weight"])[0]
            self.b = (1 - a) * tensors["wide.linear.bias"][0] + a * tensors.get(
                "counter.linear.bias", tensors["wide.linear.bias"])[0]

    @classmethod
    def from_form(cls, tensors: Tensors, spec: dict) -> LightTier:
        return cls(tensors, spec)

    def user_vector(self, user: UserInput) -> np.ndarray:
        x = np.concatenate([self.t["user_emb.weight"][user.user_idx], _history_mean(self.t["item_emb.weight"],
                                                                                   user.history)])
        u = _mlp(self._user_tower, x[None, :])[0]
        d = int(self.spec["dim"])
        return u if not self.prior else np.concatenate([u[:d] * (1 - self.alpha), np.ones(1, u.dtype), u[d:]])

    def item_vectors(self, items: ItemBatch) -> np.ndarray:
        x = np.concatenate(
            [self.t["item_emb.weight"][items.item_idx], self.t["ctype_emb.weight"][items.ctype_idx],
             items.dense[:, :ITEM_DIM]], axis=1,
        )
        v = _mlp(self._item_tower, x)
        d = int(self.spec["dim"])
        if not self.prior:
            return v
        linear_item = items.dense[:, :ITEM_DIM] @ self.w[:ITEM_DIM] + self.b
        if self.dense_mlp:  # the non-linear wide part with no user-by-item signal: the item's alone
            linear_item += (1 - self.alpha) * self._nonlinear(_item_only(items.dense))
        return np.concatenate([v[:, :d], linear_item[:, None], v[:, d:]], axis=1)

    def _nonlinear(self, dense: np.ndarray) -> np.ndarray:
        return _mlp(self._dense_mlp, dense)[:, 0]

    def score(self, user_vec: np.ndarray, item_vecs: np.ndarray, dense: np.ndarray | None = None) -> np.ndarray:
        """Preference dot product (with the linear part's item share), plus the linear part's
        user-by-item share of ``dense`` (the candidates' features; none given: zeros), plus
        the non-linear wide part's change where ``dense`` has user-by-item signal (the item vectors
        hold its item-only value), plus ``(1 - α) log σ`` of the gate's dot product for a gated tier."""
        score = item_vecs[:, :self.head] @ user_vec[:self.head]
        if self.prior and dense is not None:
            score = score + dense[:, ITEM_DIM:] @ self.w[ITEM_DIM:]
        if self.dense_mlp and dense is not None:
            # the item vectors hold the non-linear part without user-by-item signal; the few candidates
            # with one (the user met them) get the difference
            met = np.flatnonzero(dense[:, ITEM_DIM:] @ self._ones)  # flags are 0 or 1: a sum, 20x faster than any()
            if len(met):
                rows = dense[met]
                score[met] += (1 - self.alpha) * (self._nonlinear(rows) - self._nonlinear(_item_only(rows)))
        if not self.gate:
            return score
        return score - (1 - self.alpha) * np.logaddexp(0.0, -(item_vecs[:, self.head:] @ user_vec[self.head:]))


class ExpressiveTier:
    """The cross tier with target attention over the user's history, plus the wide part.

    The first layer's input is the concatenation ``[user, attended, target, ctype, target * attended,
    target * user, dense]``; served, its blocks that one request holds constant are folded out of the
    per-candidate product: the user's block and the bias are one row for every candidate, the content
    type's a row of a table made once per version, and ``target * user`` joins ``target``'s weights
    (``W_target + diag(user) W_target_user``). Each candidate then multiplies 4 blocks (2 without a
    history: the attention's blocks are zero) instead of 7: the same sums in another order.
    """

    def __init__(self, tensors: Tensors, spec: dict) -> None:
        self.t, self.spec = tensors, spec
        self.prior = _has_wide(spec)
        (first, self._bias), *self._rest = _layers(tensors, "mlp")
        d = tensors["item_emb.weight"].shape[1]
        self._w_user, self._w_target, self._w_target_user = first[:d], first[2 * d:3 * d], first[5 * d:6 * d]
        self._w_ctype = tensors["ctype_emb.weight"] @ first[3 * d:4 * d]  # each content type's share
        self._w_dense = first[6 * d:]
        self._w_history = np.concatenate([first[d:2 * d], first[4 * d:5 * d], first[6 * d:]])  # attended, its cross

    @classmethod
    def from_form(cls, tensors: Tensors, spec: dict) -> ExpressiveTier:
        return cls(tensors, spec)

    def score(self, user: UserInput, items: ItemBatch) -> np.ndarray:
        emb = self.t["item_emb.weight"]
        dim = emb.shape[1]
        hist = user.history[user.history > 0]
        target = emb[items.item_idx]  # (N, d)
        user_vec = self.t["user_emb.weight"][user.user_idx]
        w_target = self._w_target + user_vec[:, None] * self._w_target_user
        if len(hist):
            keys = emb[hist]  # (H, d)
            logits = target @ keys.T / dim**0.5
            logits -= logits.max(1, keepdims=True)
            w = np.exp(logits)
            w /= w.sum(1, keepdims=True)
            attended = w @ keys
            x = np.concatenate([target, attended, target * attended, items.dense], axis=1)
            weights = np.concatenate([w_target, self._w_history])
        else:
            x, weights = np.concatenate([target, items.dense], axis=1), np.concatenate([w_target, self._w_dense])
        hidden = x @ weights
        hidden += self._w_ctype[items.ctype_idx]
        hidden += self._bias + user_vec @ self._w_user
        out = _mlp(self._rest, np.maximum(hidden, 0.0, out=hidden))
        score = out[:, 0] + _wide(self.t, items.dense) if self.prior else out[:, 0]
        return score - np.logaddexp(0.0, -out[:, 1]) if self.spec.get("gate") else score
