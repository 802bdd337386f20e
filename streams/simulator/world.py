"""A synthetic world with ground truth: users and items with latent preferences.

The true click probability of user ``u`` on item ``i`` at request ``t`` is
``sigmoid(affinity * <p_u, q_i> + popularity_i(t) + taste_u[type_i] + bias)``, times
``(1 + position)^-position_bias`` for the slot the item is shown in: personal affinity over
``dim`` latent factors, an item popularity that drifts (``drift`` * a sinusoid of period
``drift_period`` requests, each item in its own phase), a per-user taste for each content type,
and position bias. The cascade's stages are not the truth: the pre-ranker is a noisy static
popularity heuristic, and the ranker a noisy mixture of the factors with weights of its own
(``RANKER_WEIGHTS``) and the popularity it learned before any drift. ``legacy=True`` gives the
first world (two factors, the ranker the truth plus noise, no drift, no position bias).
Retrieval mixes channels (popular, personal, content type, random) into about ``n_candidates``.

Common random numbers: request ``index`` draws its user, retrieval and stage noise from a
generator seeded by ``(seed, index)``, and each exposed item's click and feedback from one
seeded by ``(seed, index, item)``; two pre-rankers run on worlds of the same seed therefore
face the same users, the same requests and the same click draw per (request, item), and
their engagement can be compared request by request.

Examples
--------
>>> w = World(seed=1, n_users=50, n_items=400)
>>> r = w.request(0, n_candidates=100)
>>> len(r.ranking.candidates), len(r.exposed)
(100, 10)
"""

from __future__ import annotations

import logging

import numpy as np

from streams.simulator.cascade import PreRanker, Request, feedback_events, run_cascade

CONTENT_TYPES = ("video", "article", "image", "live")
CHANNELS = ("popular", "personal", "content", "random")
#: the ranker's weights on (personal affinity, static popularity, content-type taste); noise sd
RANKER_WEIGHTS, RANKER_NOISE = (0.6, 1.0, 0.4), 0.5
log = logging.getLogger(__name__)


class World:
    """Users, items and the cascade around each request; deterministic for a seed."""

    def __init__(self, seed: int = 0, n_users: int = 2000, n_items: int = 20000, dim: int = 8,
                 affinity: float = 1.5, feedback_delay_ms: float = 2000.0, n_exposed: int = 10,
                 drift: float = 1.0, drift_period: int = 2000, taste: float = 1.0, position_bias: float = 0.5,
                 legacy: bool = False) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)  # the world itself; requests draw from their own
        self.n_exposed = n_exposed
        self.feedback_delay_ms = feedback_delay_ms
        self.users = self.rng.normal(size=(n_users, dim)) / np.sqrt(dim)
        self.items = self.rng.normal(size=(n_items, dim)) / np.sqrt(dim)
        self.popularity = self.rng.normal(0.0, 1.0, n_items)
        self.affinity = affinity
        self.bias = -7.0
        self.item_types = self.rng.integers(0, len(CONTENT_TYPES), n_items)
        self.legacy = legacy
        self.drift, self.drift_period = (0.0, drift_period) if legacy else (drift, drift_period)
        self.phase = self.rng.uniform(0, 2 * np.pi, n_items)
        self.taste = self.rng.normal(0.0, 0.0 if legacy else taste, (n_users, len(CONTENT_TYPES)))
        self.position_bias = 0.0 if legacy else position_bias
        self.histories: list[list[int]] = [[] for _ in range(n_users)]
        self._popular = np.argsort(-self.popularity)[: n_items // 10]
        self.prerank_fallbacks = 0  # requests pre-ranked by the heuristic because the router failed

    def item_id(self, i: int) -> str:
        return f"i{i}"

    def _personal(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.affinity * self.items[items] @ self.users[user] * np.sqrt(self.users.shape[1])

    def popularity_at(self, items: np.ndarray, index: int) -> np.ndarray:
        """Item popularity at request ``index`` (drifting around ``popularity``)."""
        return self.popularity[items] + self.drift * np.sin(2 * np.pi * index / self.drift_period + self.phase[items])

    def click_prob(self, user: int, items: np.ndarray, index: int = 0) -> np.ndarray:
        """True click probability at request ``index`` of an item shown in the top slot."""
        taste = self.taste[user, self.item_types[items]]
        logit = self._personal(user, items) + self.popularity_at(items, index) + taste + self.bias
        return 1 / (1 + np.exp(-logit))

    def examination(self, positions: np.ndarray) -> np.ndarray:
        """Probability that a user looks at the item in each slot (1 for all in the legacy world)."""
        return (1.0 + np.asarray(positions, dtype=np.float64)) ** -self.position_bias

    def _rank_scores(self, user: int, items: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.legacy:
            return np.log(truth) + rng.normal(0, 0.3, len(items))
        w_personal, w_popularity, w_taste = RANKER_WEIGHTS
        return (w_personal * self._personal(user, items) + w_popularity * self.popularity[items]
                + w_taste * self.taste[user, self.item_types[items]] + rng.normal(0, RANKER_NOISE, len(items)))

    def _retrieve(self, user: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        per = n // len(CHANNELS)
        personal = np.argsort(-(self.items @ self.users[user] + 0.5 * rng.normal(size=len(self.items))))[:per]
        liked_type = self.item_types[self.histories[user][-1]] if self.histories[user] else 0
        same_type = np.flatnonzero(self.item_types == liked_type)
        picks = [
            rng.choice(self._popular, min(per, len(self._popular)), replace=False),
            personal,
            rng.choice(same_type, min(per, len(same_type)), replace=False),
            rng.choice(len(self.items), min(n, len(self.items)), replace=False),
        ]
        chosen, channels, seen = [], [], set()
        for channel, ids in zip(CHANNELS, picks, strict=True):
            for i in ids:
                if i not in seen and len(chosen) < n:
                    seen.add(int(i))
                    chosen.append(int(i))
                    channels.append(channel)
        return np.array(chosen), channels

    def user_of(self, index: int) -> int:
        """The user of request ``index`` (its generator's first draw, as :meth:`request` makes it), without
        the request: emitters that split the requests by user each keep their users' histories whole,
        so that together they send what one emitter would.

        >>> w = World(seed=1, n_users=50, n_items=400)
        >>> [w.user_of(i) for i in range(3)] == [int(w.request(i, 20).ranking.user_id[1:]) for i in range(3)]
        True
        """
        return int(np.random.default_rng((self.seed, index)).integers(len(self.users)))

    def request(self, index: int, n_candidates: int = 1000, preranker: PreRanker | None = None) -> Request:
        """Simulate request ``index`` (its id is ``req-<index>``); ``preranker`` defaults to a
        noisy popularity heuristic, which also stands in whenever ``preranker`` fails."""
        rng = np.random.default_rng((self.seed, index))
        user = int(rng.integers(len(self.users)))
        items, channels = self._retrieve(user, n_candidates, rng)
        truth = self.click_prob(user, items, index)
        ids = [self.item_id(i) for i in items]
        types = [CONTENT_TYPES[t] for t in self.item_types[items]]
        user_id = f"u{user}"
        features = {"history": [self.item_id(i) for i in self.histories[user][-50:]]}
        request_id = f"req-{index}"
        heuristic = self.popularity[items] + rng.normal(0, 1.0, len(items))
        pre = heuristic
        if preranker is not None:
            try:
                pre = preranker(request_id, user_id, features, ids, types)
            except (OSError, ValueError, KeyError) as exc:
                if not self.prerank_fallbacks:
                    log.warning("router pre-ranking failed (%s); falling back to the heuristic", exc)
                self.prerank_fallbacks += 1
                pre = heuristic  # router unavailable: the cascade's fallback pre-ranker
        rank = self._rank_scores(user, items, truth, rng)
        ranking, exposed = run_cascade(request_id, user_id, features, ids, channels, types, pre, rank,
                                       self.n_exposed)
        index_of = {item_id: n for n, item_id in enumerate(ids)}
        events, labels = [], {}
        for pos, item_id in enumerate(exposed):
            item = int(items[index_of[item_id]])
            item_rng = np.random.default_rng((self.seed, index, item))
            clicked = bool(item_rng.random() < truth[index_of[item_id]] * self.examination(pos))
            labels[item_id] = int(clicked)
            if clicked:
                self.histories[user].append(item)
            events += feedback_events(request_id, user_id, item_id, pos, clicked, item_rng, self.feedback_delay_ms)
        return Request(ranking, events, labels)

    def reward(self, request: Request) -> float:
        """Ground-truth engagement of the exposed items: their true click probabilities in the slots
        they were shown in, summed."""
        user = int(request.ranking.user_id[1:])
        index = int(request.ranking.request_id.rsplit("-", 1)[1])
        items = np.array([int(i[1:]) for i in request.exposed])  # in slot order
        if not len(items):
            return 0.0
        return float((self.click_prob(user, items, index) * self.examination(np.arange(len(items)))).sum())
