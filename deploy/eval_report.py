"""The results page of `hap eval`: tables with 95% intervals over seeds, and plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deploy.evaluate import ci95  # noqa: E402

METRICS = ("auc", "gauc", "recall_at_k", "consistency_at_k")


def _fmt(values: list[float]) -> str:
    mean, half = ci95(values)
    return f"{mean:.4f} ± {half:.4f}" if half == half else f"{mean:.4f}"


def _table(rows: list[dict[str, Any]], source: str) -> list[str]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["source"] == source and not r.get("closed_loop"):
            groups[(r["method"], r["policy"], r["budget"])].append(r)
    lines = ["| method | policy | budget | AUC | GAUC | Recall@10 | Consistency@10 | AUC vs exp_neg | AUC vs rn | "
             "AUC vs gn | expressive evals / request | serving CPU ms / request |", "|---" * 12 + "|"]
    for (method, policy, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        vs = {s: _fmt([r["auc_vs"][s] for r in rs if r["auc_vs"][s] is not None]) for s in ("exp_neg", "rn", "gn")}
        evals = np.mean([r["expressive_evals_per_request"] for r in rs])
        cpu = np.mean([r["serve_cpu_ms_per_request"] for r in rs])
        lines.append(f"| {method} | {policy} | {budget:g} | " + " | ".join(_fmt([r[m] for r in rs]) for m in METRICS)
                     + f" | {vs['exp_neg']} | {vs['rn']} | {vs['gn']} | {evals:.1f} | {cpu:.2f} |")
    return lines


def _paired(rows: list[dict[str, Any]], source: str) -> list[str]:
    """GHCL minus mixed, per seed on the same groups, for the light tier and DAMR at 0.2."""
    lines = ["| policy | " + " | ".join(f"Δ {m}" for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for policy, budget in (("light", 0.0), ("damr", 0.2)):
        by = {(r["method"], r["seed"]): r for r in rows if r["source"] == source and not r.get("closed_loop")
              and r["policy"] == policy and r["budget"] == budget}
        seeds = sorted({seed for _, seed in by if ("ghcl", seed) in by and ("mixed", seed) in by})
        deltas = [_fmt([by[("ghcl", s)][m] - by[("mixed", s)][m] for s in seeds]) for m in METRICS]
        lines.append(f"| {policy}{'@' + format(budget, 'g') if budget else ''} | " + " | ".join(deltas) + " |")
    return lines


def write_report(out: Path, rows: list[dict[str, Any]], conflict: dict[str, list[float]], markdown: Path | None,
                 command: str) -> None:
    sources = sorted({r["source"] for r in rows if not r.get("closed_loop")})
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        for method in ("mixed", "ghcl"):
            series = [v for k, v in conflict.items() if k.startswith(f"{source}/{method}/")]
            n = min(len(s) for s in series)
            mean = np.nanmean([s[:n] for s in series], axis=0)
            ax.plot(np.convolve(mean, np.ones(5) / 5, mode="valid"), label=method)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{source}: cos(easy-path grad, hard-path grad)")
        ax.set_xlabel("training step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "conflict.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        for method in ("mixed", "ghcl"):
            rs = [r for r in rows if r["source"] == source and r["method"] == method and not r.get("closed_loop")]
            budgets = sorted({r["budget"] for r in rs})
            means = [ci95([r["recall_at_k"] for r in rs if r["budget"] == b])[0] for b in budgets]
            ax.plot(budgets, means, "o-", label=method)
        ax.set_xlabel("expressive budget (0 = light, 1 = expressive_all)")
        ax.set_ylabel("Recall@10 over the hybrid set")
        ax.set_title(f"{source}: DAMR budget")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "damr_budget.png", dpi=110)
    plt.close(fig)

    loop = [r for r in rows if r.get("closed_loop")]
    arms = sorted({(r["method"], r["policy"]) for r in loop})
    stats = [ci95([r["reward_per_request"] for r in loop if (r["method"], r["policy"]) == a]) for a in arms]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([f"{m}/{p}" for m, p in arms], [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4)
    ax.set_ylabel("true engagement per request (2nd half)")
    ax.set_title("closed loop: pre-ranker = the arm's own online model")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out / "closed_loop.png", dpi=110)
    plt.close(fig)

    n_seeds = len({r["seed"] for r in rows})
    lines = ["# Results", "", f"Generated by `{command}`; {n_seeds} seeds; mean ± half-width of the 95% "
             "t-interval over seeds. Progressive validation: every batch scored before it is trained on.", "",
             "Recall@10: positives in the top 10 of the request's hybrid sample set. Consistency@10: the ranking "
             "stage's top 10 found in the top 10 of the same set. Expressive evals: per hybrid set. Serving CPU: "
             "the router's scoring path (numpy) over the request's whole candidate list, per policy.", ""]
    for source in sources:
        lines += [f"## Offline, {source}", "", *_table(rows, source), "",
                  f"Paired difference, GHCL minus mixed on the same {source} groups (per seed):", "",
                  *_paired(rows, source), ""]
    lines += ["## Closed loop (synthetic world)", "", "| arm | engagement per request |", "|---|---|"]
    lines += [f"| {m}/{p} | {_fmt([r['reward_per_request'] for r in loop if (r['method'], r['policy']) == (m, p)])} |"
              for m, p in arms]
    rel = markdown.parent if markdown else out
    lines += ["", "## Plots", ""] + [f"![{n}]({(out / f'{n}.png').relative_to(rel) if markdown else f'{n}.png'})"
                                     for n in ("conflict", "damr_budget", "closed_loop")]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    if markdown:
        markdown.write_text(text)
