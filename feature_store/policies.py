"""The routing policies and the one scoring function every component uses.

:func:`score_policy` scores a request's candidates under ``light``, ``damr`` or
``expressive_all``; the router serves with it, the learner's progressive validation and
``hap eval`` measure with it, so what is measured is what is served.

Difficulty-Aware Model Routing: spend the expressive tier only near the top-k boundary.

The light tier ranks all ``N`` candidates. The ``budget`` candidates whose light rank is
closest to the boundary ``k`` (ranks ``k - budget/2 .. k + budget/2``, shifted to stay in
range) are the hard ones: the light tier cannot tell whether they belong in the top k.
The expressive tier re-orders them *within the same score slots*: the routed candidates keep
the light scores they had as a set, reassigned in the expressive tier's order. Clear winners
stay above and clear losers below, so the two score scales never have to be calibrated.

Pure numpy and free of I/O.

Examples
--------
>>> import numpy as np
>>> light = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
>>> hard = route(light, k=2, budget=2)
>>> sorted(hard.tolist())
[1, 2]
>>> merge(light, hard, np.array([0.1, 0.9])).tolist()
[5.0, 3.0, 4.0, 2.0, 1.0]
>>> scores, routed = score_policy("damr", k=2, budget=2, light=lambda: light,
...                               expressive=lambda rows: np.array([0.1, 0.9]))
>>> scores.tolist(), sorted(routed.tolist())
([5.0, 3.0, 4.0, 2.0, 1.0], [1, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: the default expressive budget, a fraction of the candidates: the router serves with it, and the learner's
#: progressive ``damr`` metric and ``hap eval``'s closed loop measure with it (the operator's settings may name another)
DAMR_BUDGET = 0.2


def budget_count(n: int, budget: float) -> int:
    """Candidates to route: ``budget`` is a fraction when below 1, a count otherwise."""
    count = math.ceil(budget * n) if budget < 1 else int(budget)
    return max(0, min(n, count))


def route(light_scores: np.ndarray, k: int, budget: int) -> np.ndarray:
    """Indices of the ``budget`` candidates nearest the top-``k`` boundary of ``light_scores``."""
    n = len(light_scores)
    budget = min(budget, n)
    if budget == 0 or k >= n:
        return np.empty(0, dtype=np.int64)
    start = min(max(0, k - budget // 2), n - budget)
    end = start + budget
    # partial sorts: only the window around the boundary needs an exact order
    order = np.argpartition(-light_scores, [start, end - 1] if end - 1 > start else [start])
    window = order[start:end]
    return window


def merge(light_scores: np.ndarray, routed: np.ndarray, expressive_scores: np.ndarray) -> np.ndarray:
    """Final scores: routed candidates swap the light scores of their slots into expressive order."""
    final = light_scores.astype(np.float64, copy=True)
    if len(routed) == 0:
        return final
    slots = np.sort(light_scores[routed])[::-1]
    final[routed[np.argsort(-expressive_scores, kind="stable")]] = slots
    return final


def score_policy(policy: str, k: int, budget: int, light: Callable[[], np.ndarray],
                 expressive: Callable[[np.ndarray | None], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Final scores of a request's candidates under ``policy``, and the rows the expressive tier scored.

    ``light()`` gives every candidate's light score; ``expressive(rows)`` the expressive scores of
    ``rows`` (``None``: every candidate). ``budget`` is the number of candidates DAMR routes; the
    tiers are only asked for what the policy needs.
    """
    if policy == "expressive_all":
        scores = np.asarray(expressive(None), dtype=np.float64)
        return scores, np.arange(len(scores))
    scores = np.asarray(light(), dtype=np.float64)
    routed = route(scores, k, budget) if policy == "damr" else np.empty(0, dtype=np.int64)
    if len(routed):
        scores = merge(scores, routed, expressive(routed))
    return scores, routed
