"""Paired comparisons of arms over independent blocks: block bounds, t-intervals, per-block differences."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

#: paired differences (per block and bootstrap over users) are reported against these arms: the
#: smoothed-CTR counter and the logistic regression over every as-of feature (``learner.counters``)
REFERENCES = (("ctr", "counter", 0.0), ("counters", "counter", 0.0))
LOOP_BLOCK = 50  # closed-loop requests per block of the paired comparison
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}  # by degrees of freedom


def block_bounds(n: int, blocks: int) -> list[tuple[int, int]]:
    """``blocks`` contiguous ``[start, end)`` ranges covering ``0..n``, as equal as possible.

    >>> block_bounds(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    edges = [n * b // blocks for b in range(blocks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval over independent values (seeds or blocks)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return (values[0] if values else float("nan")), float("nan")
    df = len(values) - 1
    t = T95.get(df) or T95[max(k for k in T95 if k <= df)]
    return float(np.mean(values)), t * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def paired_blocks(rows: list[dict[str, Any]], source: str, arm: tuple[str, str, float],
                  reference: tuple[str, str, float], metric: str = "gauc") -> list[float]:
    """Per block, ``arm`` minus ``reference`` on ``metric`` (each averaged over seeds first)."""
    by: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["source"] == source and "block" in r and r[metric] is not None:
            by[(r["method"], r["policy"], r["budget"])][r["block"]].append(r[metric])
    a, b = by.get(arm, {}), by.get(reference, {})
    return [float(np.mean(a[k]) - np.mean(b[k])) for k in sorted(a) if k in b]


def paired_loop(rows: list[dict[str, Any]], arm: tuple[str, str], reference: tuple[str, str]) -> list[float]:
    """Closed loop, second half: per block of ``LOOP_BLOCK`` requests and per seed, the mean
    per-request engagement of ``arm`` minus ``reference`` (same requests, same click draws)."""
    loop = {(r["method"], r["policy"], r["seed"]): r["rewards"] for r in rows if r.get("closed_loop")}
    out = []
    for (method, policy, seed), rewards in sorted(loop.items()):
        other = loop.get((*reference, seed))
        if (method, policy) != arm or other is None:
            continue
        diff = np.asarray(rewards) - np.asarray(other)
        diff = diff[len(diff) // 2:]
        out += [float(block.mean()) for block in np.array_split(diff, max(1, len(diff) // LOOP_BLOCK))]
    return out
