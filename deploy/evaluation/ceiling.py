"""How much exposed GAUC beyond the smoothed-CTR counter a replayed log holds at all.

A learned pre-ranker can only beat the ``ctr`` arm of ``hap eval`` on real labels if the log
carries signal that the counter does not. This module measures a *lower bound* of that signal
(what simple models fitted on the log's first half already find; a richer model can only find
more) with models far easier to fit than the tiers, on the same as-of information:

- ``ctr``: the counter itself (cumulative smoothed CTR as of the request, as ``hap eval``);
- every single as-of item statistic (windowed CTRs, counts, age, time since last exposure);
- ``counters``: a conditional logit (a softmax within each request, the exact form of the
  exposed-ranking task) over all of them together;
- ``counters+co_ctr``: the same plus a collaborative statistic, the item's smoothed CTR among
  earlier requests whose users had clicked one of this user's history items
  (``(sum_h clk(h, i) + K ctr(i)) / (sum_h exp(h, i) + K)``, shrunk to the item's CTR).

The log is split by time: the models are fitted on the first half and scored on the second,
in ``--blocks`` disjoint time blocks, each paired against ``ctr`` on the same requests; the
95% t-interval is over the blocks. A result near ``ctr`` says these models find nothing more; it
does not prove the log holds nothing more (the name "ceiling" is historical: it is a floor on what
the log holds).

Run ``python -m deploy.evaluation.ceiling --dataset ../shared/data/mind_small_subset``.

Examples
--------
>>> rows = [("u1", 0.0, ["h1"], [("a", 1), ("b", 0)]), ("u2", 60.0, ["h1"], [("a", 0), ("b", 1)])]
>>> table = as_of_features(rows)
>>> table.group.tolist(), table.label.tolist()
([0, 0, 1, 1], [1, 0, 0, 1])
>>> round(float(table.x[2, FEATURES.index("co_ctr")]), 3)  # a was clicked after h1: above its own CTR
0.793
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import defaultdict, deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from feature_store.featurize import HISTORY_LEN, ctr_logit, smoothed_ctr

#: shrinkage of the collaborative CTR towards the item's own (pseudo-exposures)
CO_SHRINK = 100.0
WINDOWS_S = {"1h": 3600.0, "1d": 86_400.0}
FEATURES = ("ctr", "ctr_1h", "ctr_1d", "log_exp", "log_clk", "log_clk_1h", "age_d", "since_last_h", "co_ctr")
COUNTER_FEATURES = FEATURES[:-1]

#: one request: user, time (s), history (oldest first), [(item, clicked)]
Row = tuple[str, float, Sequence[str], Sequence[tuple[str, int]]]


@dataclasses.dataclass(frozen=True)
class FeatureTable:
    """One row per exposed item: its request index, click label and as-of features."""

    group: np.ndarray  # (N,) int64, requests numbered in time order
    label: np.ndarray  # (N,) int64
    x: np.ndarray  # (N, len(FEATURES)) float64


def read_rows(directory: Path) -> list[Row]:
    """The MIND-layout log's requests in time order."""
    from streams.simulator.replay import TIME_FORMAT, MindReplay

    replay = MindReplay(directory)
    return [(user, datetime.strptime(when, TIME_FORMAT).timestamp(), history.split(),
             [(i, int(label)) for i, label in (x.rsplit("-", 1) for x in impressions.split())])
            for _, user, when, history, impressions in replay.rows]


def as_of_features(rows: Sequence[Row]) -> FeatureTable:
    """Every exposed item's features as of its request: only earlier requests count."""
    exp, clk, first, last = defaultdict(float), defaultdict(float), {}, {}
    window_exp = {w: defaultdict(float) for w in WINDOWS_S}
    window_clk = {w: defaultdict(float) for w in WINDOWS_S}
    recent: dict[str, deque[tuple[float, str, int]]] = {w: deque() for w in WINDOWS_S}
    co_exp: dict[tuple[str, str], float] = defaultdict(float)
    co_clk: dict[tuple[str, str], float] = defaultdict(float)
    group, label, x = [], [], []
    for g, (_, t, history, exposed) in enumerate(rows):
        for w, span in WINDOWS_S.items():
            while recent[w] and recent[w][0][0] < t - span:
                _, item, c = recent[w].popleft()
                window_exp[w][item] -= 1
                window_clk[w][item] -= c
        history = list(history)[-HISTORY_LEN:]
        for item, c in exposed:
            own = smoothed_ctr(clk[item], exp[item])
            pe = sum(co_exp.get((h, item), 0.0) for h in history)
            pc = sum(co_clk.get((h, item), 0.0) for h in history)
            x.append([
                ctr_logit(own),
                ctr_logit(smoothed_ctr(window_clk["1h"][item], window_exp["1h"][item])),
                ctr_logit(smoothed_ctr(window_clk["1d"][item], window_exp["1d"][item])),
                math.log1p(exp[item]), math.log1p(clk[item]), math.log1p(window_clk["1h"][item]),
                (t - first.get(item, t)) / 86_400.0, (t - last.get(item, t)) / 3600.0,
                ctr_logit((pc + CO_SHRINK * own) / (pe + CO_SHRINK)),
            ])
            group.append(g)
            label.append(c)
        for item, c in exposed:
            exp[item] += 1
            clk[item] += c
            first.setdefault(item, t)
            last[item] = t
            for w in WINDOWS_S:
                window_exp[w][item] += 1
                window_clk[w][item] += c
                recent[w].append((t, item, c))
            for h in history:
                co_exp[(h, item)] += 1
                co_clk[(h, item)] += c
    return FeatureTable(np.array(group, np.int64), np.array(label, np.int64),
                        np.array(x, np.float64).reshape(-1, len(FEATURES)))


def fit_conditional_logit(table: FeatureTable, columns: Sequence[int], l2: float = 1e-3) -> np.ndarray:
    """Weights of a softmax-within-request model over standardized ``columns`` (last entry: none,
    the standardization is folded into the weights, so ``x[:, columns] @ w`` scores)."""
    import torch

    from learner.ghcl import group_logsumexp

    x = torch.as_tensor(table.x[:, columns])
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-9)
    z = (x - mu) / sd
    y = torch.as_tensor(table.label, dtype=torch.float64)
    g = torch.as_tensor(np.unique(table.group, return_inverse=True)[1])
    n_groups = int(g.max()) + 1
    w = torch.zeros(len(columns), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = z @ w
        loss = -(y * (s - group_logsumexp(s, g, n_groups)[g])).sum() / y.sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w / sd).detach().numpy()


def exposed_gauc(table: FeatureTable, scores: np.ndarray) -> float | None:
    """Exposed GAUC as ``hap eval`` reports it (per request, weighted by exposed items)."""
    from learner.progressive import ProgressiveMetrics

    metrics = ProgressiveMetrics()
    metrics.update(scores, table.group, np.where(table.label == 1, "exp_pos", "exp_neg"))
    return metrics.report()["gauc"]  # type: ignore[return-value]


def ceiling(rows: Sequence[Row], blocks: int = 5) -> list[dict[str, object]]:
    """Rows ``{scorer, gauc, delta_vs_ctr, delta_ci95, blocks}``, scored on the second half."""
    from deploy.evaluation.paired import block_bounds, ci95

    table = as_of_features(rows)
    half = len(rows) // 2
    fit_rows, test_rows = table.group < half, table.group >= half

    def part(mask: np.ndarray) -> FeatureTable:
        return FeatureTable(table.group[mask], table.label[mask], table.x[mask])

    fit, test = part(fit_rows), part(test_rows)
    scorers = {name: test.x[:, FEATURES.index(name)] * (-1 if name in ("age_d", "since_last_h") else 1)
               for name in FEATURES}
    for name, features in (("counters", COUNTER_FEATURES), ("counters+co_ctr", FEATURES)):
        columns = [FEATURES.index(f) for f in features]
        scorers[name] = test.x[:, columns] @ fit_conditional_logit(fit, columns)
    bounds = [(half + a, half + b) for a, b in block_bounds(len(rows) - half, blocks)]
    out = []
    for name, scores in scorers.items():
        per_block = []
        for a, b in bounds:
            m = (test.group >= a) & (test.group < b)
            sub = FeatureTable(test.group[m], test.label[m], test.x[m])
            per_block.append((exposed_gauc(sub, scores[m]) or 0.0) - (exposed_gauc(sub, scorers["ctr"][m]) or 0.0))
        mean, half_width = ci95(per_block)
        out.append({"scorer": name, "gauc": exposed_gauc(test, scores), "delta_vs_ctr": mean,
                    "delta_ci95": half_width, "blocks": len(bounds)})
    return out


def markdown(result: list[dict[str, object]]) -> str:
    """The ceiling as a table (``age_d`` and ``since_last_h`` score fresher items higher)."""
    lines = ["| scorer | exposed GAUC (second half) | Δ vs ctr (per block) |", "|---|---|---|"]
    for r in result:
        lines.append(f"| {r['scorer']} | {r['gauc']:.4f} | {r['delta_vs_ctr']:+.4f} ± {r['delta_ci95']:.4f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.evaluation.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="a MIND-layout directory")
    p.add_argument("--blocks", type=int, default=5, help="time blocks of the scored (second) half")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a markdown table")
    args = p.parse_args(argv)
    print(f"ceiling: reading {args.dataset}", file=sys.stderr, flush=True)
    rows = read_rows(args.dataset)
    print(f"ceiling: {len(rows)} requests; features as of each, fit on the first half", file=sys.stderr, flush=True)
    result = ceiling(rows, args.blocks)
    print("\n".join(json.dumps(r) for r in result) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
