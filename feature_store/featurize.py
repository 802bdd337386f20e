"""The one featurization shared by training (learner) and serving (router).

IDs are hashed with a stable hash into ``ID_BUCKETS`` rows (row 0 is padding); the content
type is hashed into ``CONTENT_TYPE_BUCKETS``. The as-of features of a candidate (``FEATURES``)
become a dense vector conditioned for learning:

- ``ITEM_STAT_FEATURES``: the item's exposures, clicks, positives and smoothed click rate over
  every window (``log1p`` of counts; rates as their logit centred on the prior's, ``0`` = no
  evidence either way, which is also what a missing rate reads as);
- ``ITEM_TIME_FEATURES``: the item's age (hours since its first exposure, ``log1p``) and the
  minutes since its last exposure within the hour (``log1p``, a missing value reads as the hour);
- ``USER_ITEM_FEATURES``: whether this user was shown this item before, clicked it before, and
  whether it is in the history the request brings (0/1, missing reads as 0).

The first two groups depend on the item alone (``ITEM_DIM`` columns, what a tower that caches
item vectors may read); the last depends on the (user, item) pair. ``PRIOR_FEATURE`` (the day's
centred CTR logit) is where both tiers' linear part starts, so a fresh model ranks as the
counter does.

Examples
--------
>>> items = featurize_items(["n1", "n2"], ["video", "news"], [{"exp_1h": 9.0}, {}])
>>> items.item_idx.shape, items.dense.shape
((2,), (2, 17))
>>> round(float(items.dense[0, ITEM_STAT_FEATURES.index("exp_1h")]), 3)
2.303
>>> round(float(items.dense[1, PRIOR_INDEX]), 3)  # no statistics: the prior itself
0.0
>>> round(ctr_logit(0.1), 3)
0.747
>>> featurize_user("u1", {"history": ["n1"]}).history[:2].tolist() == [hash_id("item", "n1"), 0]
True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

WINDOWS = ("10m", "1h", "1d")
ITEM_STAT_FEATURES: tuple[str, ...] = tuple(
    f"{kind}_{w}" for w in WINDOWS for kind in ("exp", "clk", "pos", "ctr")
)
#: the item's age (hours since its first exposure) and minutes since its last exposure (within the hour)
ITEM_TIME_FEATURES = ("age_h", "since_last_m")
#: this user and this item: shown before, clicked before, in the request's history
USER_ITEM_FEATURES = ("user_seen", "user_clicked", "in_history")
ITEM_FEATURES: tuple[str, ...] = ITEM_STAT_FEATURES + ITEM_TIME_FEATURES
FEATURES: tuple[str, ...] = ITEM_FEATURES + USER_ITEM_FEATURES
RATE_FEATURES = frozenset(f for f in ITEM_STAT_FEATURES if f.startswith("ctr_"))
#: the look-back of ``since_last_m`` (minutes); no exposure within it reads as this value
SINCE_LAST_MAX_M = 60
ID_BUCKETS = 1 << 17
CONTENT_TYPE_BUCKETS = 16
HISTORY_LEN = 50
DENSE_DIM = len(FEATURES)
ITEM_DIM = len(ITEM_FEATURES)
#: the smoothing of every click rate: ``(clicks + PRIOR_EXPOSURES * PRIOR_CTR) / (exposures + PRIOR_EXPOSURES)``
PRIOR_EXPOSURES, PRIOR_CTR = 20.0, 0.05
#: the dense column both tiers add to their score (the residual prior)
PRIOR_FEATURE = "ctr_1d"
PRIOR_INDEX = ITEM_STAT_FEATURES.index(PRIOR_FEATURE)
_RATE_CLIP = 1e-4
_PRIOR_LOGIT = math.log(PRIOR_CTR / (1 - PRIOR_CTR))


@functools.lru_cache(maxsize=1 << 17)
def hash_id(namespace: str, value: str, buckets: int = ID_BUCKETS) -> int:
    """Stable hash of ``value`` into ``1..buckets-1`` (0 is reserved for padding); the most recent
    ids are cached (a few MB), as the same items recur across a stream's requests."""
    return 1 + zlib.crc32(f"{namespace}:{value}".encode()) % (buckets - 1)


@dataclasses.dataclass(frozen=True, slots=True)
class UserInput:
    user_idx: int
    history: np.ndarray  # (HISTORY_LEN,) int64, most recent first, 0 = padding


@dataclasses.dataclass(frozen=True, slots=True)
class ItemBatch:
    item_idx: np.ndarray  # (N,) int64
    ctype_idx: np.ndarray  # (N,) int64
    dense: np.ndarray  # (N, DENSE_DIM) float32

    def __len__(self) -> int:
        return len(self.item_idx)

    def take(self, rows: np.ndarray) -> ItemBatch:
        """The sub-batch of ``rows``."""
        return ItemBatch(self.item_idx[rows], self.ctype_idx[rows], self.dense[rows])


def featurize_user(user_id: str, user_features: Mapping[str, Any] | None = None) -> UserInput:
    """Hashed user id and the last ``HISTORY_LEN`` history items (most recent first)."""
    history = list((user_features or {}).get("history") or [])[-HISTORY_LEN:][::-1]
    ids = np.zeros(HISTORY_LEN, dtype=np.int64)
    ids[: len(history)] = [hash_id("item", h) for h in history]
    return UserInput(hash_id("user", user_id), ids)


def smoothed_ctr(clicks: float, exposures: float) -> float:
    """The click rate every component uses: shrunk towards ``PRIOR_CTR`` by ``PRIOR_EXPOSURES``."""
    return (clicks + PRIOR_EXPOSURES * PRIOR_CTR) / (exposures + PRIOR_EXPOSURES)


def ctr_logit(rate: float) -> float:
    """``logit(rate) - logit(PRIOR_CTR)``, the rate clipped to ``[1e-4, 1 - 1e-4]``."""
    r = min(max(rate, _RATE_CLIP), 1 - _RATE_CLIP)
    return math.log(r / (1 - r)) - _PRIOR_LOGIT



def dense_stats(stats: Mapping[str, float] | None) -> list[float]:
    """The dense vector of one candidate's features (:func:`dense_stats_matrix` of one row).

    A missing count or flag reads as 0, a missing rate as the prior (centred logit 0).
    """
    return dense_stats_matrix(stats_matrix([stats]))[0].astype(np.float64).tolist()


def featurize_items(
    item_ids: Sequence[str], content_types: Sequence[str], stats: Sequence[Mapping[str, float] | None]
) -> ItemBatch:
    """Arrays for a list of items; the three sequences are aligned."""
    return ItemBatch(
        item_idx=np.fromiter((hash_id("item", i) for i in item_ids), np.int64, len(item_ids)),
        ctype_idx=np.fromiter(
            (hash_id("ctype", c, CONTENT_TYPE_BUCKETS) for c in content_types), np.int64, len(content_types)
        ),
        dense=dense_stats_matrix(stats_matrix(stats)),
    )


_COLUMN = {name: i for i, name in enumerate(FEATURES)}


def stats_matrix(stats: Sequence[Mapping[str, float] | None]) -> np.ndarray:
    """The raw features of many candidates as a ``(N, DENSE_DIM)`` float64 matrix in
    ``FEATURES`` order, NaN where a feature is missing (names not in the list are
    ignored): the input of :func:`dense_stats_matrix`.

    >>> stats_matrix([{"exp_1h": 3.0, "other": 1.0}, None])[:, ITEM_STAT_FEATURES.index("exp_1h")].tolist()
    [3.0, nan]
    """
    values = np.full((len(stats), DENSE_DIM), np.nan)
    column = _COLUMN.get
    for row, item in enumerate(stats):
        for name, value in (item or {}).items():
            j = column(name)
            if j is not None and value is not None:
                values[row, j] = value
    return values


_RATE = np.array([name in RATE_FEATURES for name in FEATURES])
_COUNT = np.array([name in ITEM_STAT_FEATURES and name not in RATE_FEATURES for name in FEATURES])
_AGE = np.array([name == "age_h" for name in FEATURES])
_SINCE = np.array([name == "since_last_m" for name in FEATURES])
_FLAG = np.array([name in USER_ITEM_FEATURES for name in FEATURES])


def dense_stats_matrix(values: np.ndarray) -> np.ndarray:
    """:func:`dense_stats` of many candidates at once: ``values`` is ``(N, DENSE_DIM)`` float64 in
    ``FEATURES`` order with NaN for a missing feature; the result is the float32 dense matrix (one
    array operation per kind of column).

    >>> raw = np.full((1, DENSE_DIM), np.nan)
    >>> raw[0, FEATURES.index("since_last_m")] = 5.0
    >>> round(float(dense_stats_matrix(raw)[0, FEATURES.index("since_last_m")]), 3)  # log1p(5)
    1.792
    >>> round(float(dense_stats_matrix(np.full((1, DENSE_DIM), np.nan))[0, FEATURES.index("since_last_m")]), 3)
    4.111
    """
    values = np.asarray(values, np.float64).reshape(-1, DENSE_DIM)
    missing = np.isnan(values)
    out = np.zeros(values.shape, np.float64)
    counts = np.where(missing[:, _COUNT | _AGE], 0.0, values[:, _COUNT | _AGE])
    out[:, _COUNT | _AGE] = np.log1p(np.maximum(counts, 0.0))
    rates = values[:, _RATE]
    clipped = np.clip(np.where(missing[:, _RATE], PRIOR_CTR, rates), _RATE_CLIP, 1 - _RATE_CLIP)
    out[:, _RATE] = np.where(missing[:, _RATE], 0.0, np.log(clipped / (1 - clipped)) - _PRIOR_LOGIT)
    since = np.where(missing[:, _SINCE], SINCE_LAST_MAX_M, values[:, _SINCE])
    out[:, _SINCE] = np.log1p(np.clip(since, 0.0, SINCE_LAST_MAX_M))
    out[:, _FLAG] = np.where(missing[:, _FLAG], 0.0, values[:, _FLAG] > 0)
    return out.astype(np.float32)
