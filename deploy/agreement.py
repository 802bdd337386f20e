"""Live against offline: the exposed GAUC the learner published next to what `hap eval` measures.

`hap replay` compares three figures per scorer on the same requests:

- ``live``: the progressive metrics the running learner published in the model manifest;
- ``offline_live_groups``: `hap eval`'s trainer and counters (same code, same seed, same
  micro-batch size) over the very groups the streams emitted (read back from ``hap.samples``):
  what the live learner should have measured, with block intervals;
- ``offline``: `hap eval` itself, its groups assembled in-process from the same log, with
  cumulative item counts in place of the live sliding windows.

The live figure is one running sum (the manifest holds no per-block sums), so its interval is
taken as that of ``offline_live_groups`` over the same groups: the spread of a GAUC over these
requests, which does not depend on which process computed it. Two figures agree when they differ
by less than the combined half-width ``sqrt(h1^2 + h2^2)``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from deploy.evaluation.paired import ci95

#: the non-learned arm of `hap eval` set beside the tiers: the smoothed item CTR as of the request
COUNTER = "ctr"


def scorer_name(row: dict[str, Any]) -> str:
    """The manifest's name for an eval row's scorer: ``light``, ``damr@0.2``, ``expressive_all`` or ``ctr``.

    >>> scorer_name({"method": "ghcl", "policy": "damr", "budget": 0.2})
    'damr@0.2'
    >>> scorer_name({"method": "ctr", "policy": "counter", "budget": 0.0})
    'ctr'
    """
    if row["policy"] == "counter":
        return str(row["method"])
    return f"damr@{row['budget']:g}" if row["policy"] == "damr" else str(row["policy"])


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scorer: exposed GAUC and AUC over the whole stream, and the 95% t-interval half-width of
    the exposed GAUC over its blocks (rows as `hap eval`'s run_counter/run_learned return them).

    >>> rows = [{"method": "ctr", "policy": "counter", "budget": 0.0, "gauc": g, "exposed_auc": g, "block": b}
    ...         for b, g in enumerate([0.6, 0.62, 0.64])]
    >>> rows.append({"method": "ctr", "policy": "counter", "budget": 0.0, "gauc": 0.62, "exposed_auc": 0.61})
    >>> s = summarize(rows)["ctr"]
    >>> s["gauc"], s["blocks"], round(s["gauc_ci95"], 4)
    (0.62, 3, 0.0497)
    """
    blocks: dict[str, list[float]] = defaultdict(list)
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = scorer_name(row)
        if "block" in row:
            if row["gauc"] is not None:
                blocks[name].append(row["gauc"])
        else:
            out[name] = {"gauc": row["gauc"], "exposed_auc": row["exposed_auc"]}
    for name, figures in out.items():
        half = ci95(blocks[name])[1]
        figures |= {"gauc_ci95": None if math.isnan(half) else half, "blocks": len(blocks[name])}
    return out


def offline_figures(groups: list[Any], bodies: list[dict[str, Any]], method: str, seed: int,
                    blocks: int) -> dict[str, dict[str, Any]]:
    """`hap eval`'s ``ctr`` counter and learned ``method`` (every tier and DAMR budget) over ``groups``,
    progressively, in ``blocks`` time blocks; ``bodies`` are router requests for its serving cost."""
    from deploy.evaluation.evaluate import run_counter, run_learned

    rows = run_counter(groups, COUNTER, seed, blocks) + run_learned(groups, bodies, method, seed, blocks)[0]
    return summarize(rows)


def compare(live: float | None, live_ci95: float | None, offline: float | None,
            offline_ci95: float | None) -> dict[str, Any]:
    """The difference of two GAUCs and whether it lies within their combined 95% half-widths.

    >>> compare(0.60, 0.01, 0.605, 0.01)["within"]
    True
    >>> compare(0.60, 0.01, 0.65, 0.01)["within"]
    False
    """
    if live is None or offline is None or live_ci95 is None or offline_ci95 is None:
        return {"difference": None, "combined_ci95": None, "within": None}
    combined = math.hypot(live_ci95, offline_ci95)
    difference = live - offline
    return {"difference": round(difference, 4), "combined_ci95": round(combined, 4),
            "within": abs(difference) <= combined}


def agreement(live: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]],
              intervals: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scorer the manifest published: its live exposed GAUC against ``reference``'s, the live
    interval taken from ``intervals`` (the offline run over the live groups, see the module's doc)."""
    out = {}
    for name, quality in live.items():
        if name not in reference:
            continue
        live_ci = intervals.get(name, {}).get("gauc_ci95")
        out[name] = {"live": quality.get("gauc"), "offline": reference[name]["gauc"],
                     **compare(quality.get("gauc"), live_ci, reference[name]["gauc"], reference[name]["gauc_ci95"])}
    return out


#: two feature values read by the two paths agree within this (float32 on the wire, sums of counts)
FEATURE_TOLERANCE = 1e-4
#: differing values listed in the report, to read what differs
MAX_EXAMPLES = 10


def feature_agreement(live: list[Any], offline: list[Any]) -> dict[str, Any]:
    """Per feature (``feature_store.featurize.FEATURES``), the share of exposed items of the requests
    both runs assembled whose value in the live group equals (within :data:`FEATURE_TOLERANCE`,
    relative) the value `hap eval` read as of the request (``feature_store.asof``); first groups
    only (a correction carries its group's features). ``since_last_m`` absent on both sides agrees.
    ``examples`` lists the first differing values.

    >>> from streams.contract.schemas import SampleGroup, SampleItem
    >>> def group(exp):
    ...     return SampleGroup("g", "r1", "u", 0, 0, [SampleItem("n1", "exp_neg", 0, None, None, "t",
    ...                                                         {"exp_1d": exp})], {})
    >>> feature_agreement([group(3.0)], [group(3.0)])["by_feature"]["exp_1d"]
    1.0
    >>> feature_agreement([group(3.0)], [group(0.0)])["examples"][0]["offline"]
    0.0
    """
    from feature_store.featurize import FEATURES

    def exposed(groups: list[Any]) -> dict[tuple[str, str], dict[str, float]]:
        return {(g.request_id, it.item_id): it.features for g in groups if not g.correction
                for it in g.items if it.source in ("exp_pos", "exp_neg")}

    mine, theirs = exposed(live), exposed(offline)
    both = [k for k in mine if k in theirs]
    by_feature, differ = {}, []
    for name in FEATURES:
        same = 0
        for k in both:
            if _same(mine[k].get(name), theirs[k].get(name)):
                same += 1
            elif len(differ) < MAX_EXAMPLES:
                differ.append({"request_id": k[0], "item_id": k[1], "feature": name, "live": mine[k].get(name),
                               "offline": theirs[k].get(name)})
        by_feature[name] = round(same / len(both), 4) if both else None
    return {"items": len(both), "by_feature": by_feature, "examples": differ}


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= FEATURE_TOLERANCE * max(1.0, abs(a), abs(b))
