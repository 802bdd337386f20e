"""The results page of `hap eval`: real-label tables first, paired per-block differences, diagnostics, plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deploy.evaluation.paired import LOOP_BLOCK, REFERENCES, ci95, paired_blocks, paired_loop  # noqa: E402

Arm = tuple[str, str, float]
#: paired differences are reported against these arms
LOOP_REFERENCES = (("heuristic", "none"), ("ctr", "counter"), ("mixed", "light"))


def _level(values: list[float], sign: str = "") -> str:
    """``mean ± half-width`` of the 95% interval (``sign="+"`` for differences)."""
    mean, half = ci95(values)
    if mean != mean:
        return "–"
    return f"{mean:{sign}.4f} ± {half:.4f}" if half == half else f"{mean:{sign}.4f}"


def _fmt(values: list[float]) -> str:
    return _level(values, "+")


def _overall(rows: list[dict[str, Any]], source: str) -> dict[Arm, list[dict[str, Any]]]:
    """Whole-stream rows of ``source`` by arm (one per seed)."""
    out: dict[Arm, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["source"] == source and not r.get("closed_loop") and "block" not in r:
            out[(r["method"], r["policy"], r["budget"])].append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][1] != "counter", kv[0][0], kv[0][2])))


def _arm(arm: Arm) -> str:
    method, policy, budget = arm
    return f"| {method} | {policy} | {budget:g} |"


def _boot(rs: list[dict[str, Any]], ref: Arm) -> str:
    """The paired bootstrap over users against ``ref`` (seeds averaged): ``diff [2.5%, 97.5%]``."""
    draws = [r[f"boot_vs_{ref[0]}"] for r in rs if r.get(f"boot_vs_{ref[0]}")]
    if not draws:
        return "–"
    diff, lo, hi = np.mean(draws, axis=0)
    return f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _real_label_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    refs = " | ".join(f"Δ vs {ref[0]} (per block) | Δ vs {ref[0]} (bootstrap over users)" for ref in REFERENCES)
    lines = [f"| method | policy | budget | exposed GAUC | exposed AUC | {refs} | expressive evals / request | "
             "serving CPU ms / request |", "|---" * (7 + 2 * len(REFERENCES)) + "|"]
    for arm, rs in _overall(rows, source).items():
        deltas = " | ".join(f"{_fmt(paired_blocks(rows, source, arm, ref))} | {_boot(rs, ref)}" if arm != ref
                            else "0 | 0" for ref in REFERENCES)
        evals = np.mean([r["expressive_evals_per_request"] for r in rs])
        cpu = [r["serve_cpu_ms_per_request"] for r in rs if r.get("serve_cpu_ms_per_request") is not None]
        lines.append(f"{_arm(arm)} {_level([r['gauc'] for r in rs])} | {_level([r['exposed_auc'] for r in rs])} | "
                     f"{deltas} | {evals:.1f} | {f'{np.mean(cpu):.2f}' if cpu else '–'} |")
    return lines


#: the share of each offline stream (from its start) that a tuning session may have looked at: the
#: EB-NeRD dev split (docs/method.md); the blocks after it are reported apart
DEV_SHARE = 0.4


def _held_out_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    """Δ exposed GAUC per block over the blocks after the dev split only (the first ``DEV_SHARE``)."""
    n_blocks = len({r["block"] for r in rows if r["source"] == source and "block" in r})
    first = int(np.ceil(DEV_SHARE * n_blocks))
    later = [r for r in rows if r["source"] != source or "block" not in r or r["block"] >= first]
    if first >= n_blocks:
        return []
    lines = [f"Blocks {first + 1}–{n_blocks} of {n_blocks} only (after the first {DEV_SHARE:.0%} of the stream, "
             "the dev split tuning looked at): Δ exposed GAUC per block, 95% t-interval over these blocks.", "",
             "| method | policy | budget | " + " | ".join(f"Δ vs {ref[0]}" for ref in REFERENCES) + " |",
             "|---" * (3 + len(REFERENCES)) + "|"]
    for arm in _overall(rows, source):
        if arm[1] == "damr" and arm[2] not in (0.2, 0.3):
            continue
        lines.append(f"{_arm(arm)} " + " | ".join(_fmt(paired_blocks(later, source, arm, ref)) if arm != ref
                                                  else "0" for ref in REFERENCES) + " |")
    return lines


def _constructed_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    lines = ["| method | policy | budget | AUC (all sources) | AUC vs rn | AUC vs prn | AUC vs gn | Recall@10 | "
             "Consistency@10 |", "|---" * 9 + "|"]
    for arm, rs in _overall(rows, source).items():
        vs = [_level([r["auc_vs"][s] for r in rs if r["auc_vs"][s] is not None]) for s in ("rn", "prn", "gn")]
        lines.append(f"{_arm(arm)} {_level([r['auc'] for r in rs])} | " + " | ".join(vs)
                     + f" | {_level([r['recall_at_k'] for r in rs])} | {_level([r['consistency_at_k'] for r in rs])} |")
    return lines


def _damr_share(rows: list[dict[str, Any]], source: str, method: str = "ghcl") -> list[str]:
    """Share of the expressive tier's exposed-GAUC gain over light that DAMR keeps, per budget."""
    arms = _overall(rows, source)
    light = arms.get((method, "light", 0.0))
    full = arms.get((method, "expressive_all", 1.0))
    if not light or not full:
        return []
    gain = np.mean([r["gauc"] for r in full]) - np.mean([r["gauc"] for r in light])
    lines = [f"DAMR ({method}): exposed-GAUC gain over light kept, as a share of expressive_all's gain "
             f"({gain:+.4f}):", "", "| budget | Δ GAUC vs light | share of expressive_all's gain |", "|---|---|---|"]
    for (m, policy, budget), rs in arms.items():
        if m == method and policy == "damr":
            d = np.mean([r["gauc"] for r in rs]) - np.mean([r["gauc"] for r in light])
            share = f"{d / gain:.0%}" if abs(gain) > 1e-4 else "– (no gain to keep)"
            lines.append(f"| {budget:g} | {d:+.4f} | {share} |")
    return lines


def _loop_table(rows: list[dict[str, Any]]) -> list[str]:
    loop = [r for r in rows if r.get("closed_loop")]
    arms = sorted({(r["method"], r["policy"]) for r in loop})
    lines = ["| arm | engagement per request (2nd half) | " + " | ".join(f"Δ vs {'/'.join(a)} (paired)"
                                                                     for a in LOOP_REFERENCES) + " |",
             "|---" * (2 + len(LOOP_REFERENCES)) + "|"]
    for arm in arms:
        level = _level([r["reward_per_request"] for r in loop if (r["method"], r["policy"]) == arm])
        deltas = [_fmt(paired_loop(rows, arm, ref)) if arm != ref else "0" for ref in LOOP_REFERENCES]
        lines.append(f"| {'/'.join(arm)} | {level} | " + " | ".join(deltas) + " |")
    return lines


def _plots(out: Path, rows: list[dict[str, Any]], conflict: dict[str, list[float]], sources: list[str]) -> list[str]:
    names = []
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        for key in sorted({k.rsplit("/", 1)[0] for k in conflict if k.startswith(f"{source}/")}):
            series = [v for k, v in conflict.items() if k.rsplit("/", 1)[0] == key]
            n = min(len(s) for s in series)
            mean = np.nanmean([s[:n] for s in series], axis=0)
            if n >= 5 and np.isfinite(mean).any():
                ax.plot(np.convolve(mean, np.ones(5) / 5, mode="valid"), label=key.split("/", 1)[1], lw=0.8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{source}: cos(easy-path grad, hard-path grad)")
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "conflict.png", dpi=110)
    plt.close(fig)
    names.append("conflict")

    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        arms = _overall(rows, source)
        for method in sorted({m for m, p, _ in arms if p != "counter"}):
            points = sorted((b, np.mean([r["gauc"] for r in rs])) for (m, p, b), rs in arms.items() if m == method)
            ax.plot([b for b, _ in points], [g for _, g in points], "o-", label=method, ms=3)
        for (m, p, _), rs in arms.items():
            if p == "counter":
                ax.axhline(np.mean([r["gauc"] for r in rs]), ls="--", lw=0.8, color="k" if m == "ctr" else "grey",
                           label=f"{m} (counter)")
        ax.set_xlabel("expressive budget (0 = light, 1 = expressive_all)")
        ax.set_ylabel("exposed GAUC")
        ax.set_title(f"{source}: DAMR budget")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "damr_budget.png", dpi=110)
    plt.close(fig)
    names.append("damr_budget")

    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        arms = [a for a in _overall(rows, source) if a[1] in ("light", "counter") or a == ("ghcl", "damr", 0.3)]
        labels, means, halves = [], [], []
        for arm in arms:
            if arm == REFERENCES[0]:
                continue
            mean, half = ci95(paired_blocks(rows, source, arm, REFERENCES[0]))
            labels.append(f"{arm[0]}/{arm[1]}" + (f"@{arm[2]:g}" if arm[1] == "damr" else ""))
            means.append(mean)
            halves.append(0.0 if half != half else half)
        ax.barh(labels, means, xerr=halves, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("Δ exposed GAUC vs ctr, paired per block (95% CI)")
        ax.set_title(f"{source}: paired against the counter")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "paired_blocks.png", dpi=110)
    plt.close(fig)
    names.append("paired_blocks")

    loop = [r for r in rows if r.get("closed_loop")]
    if loop:
        arms = sorted({(r["method"], r["policy"]) for r in loop} - {LOOP_REFERENCES[0]})
        stats = [ci95(paired_loop(rows, a, LOOP_REFERENCES[0])) for a in arms]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(["/".join(a) for a in arms], [s[0] for s in stats],
               yerr=[0.0 if s[1] != s[1] else s[1] for s in stats], capsize=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("Δ true engagement per request vs heuristic")
        ax.set_title("closed loop, common random numbers (2nd half, paired)")
        ax.tick_params(axis="x", rotation=20)
        fig.tight_layout()
        fig.savefig(out / "closed_loop.png", dpi=110)
        plt.close(fig)
        names.append("closed_loop")
    return names


def write_report(out: Path, rows: list[dict[str, Any]], conflict: dict[str, list[float]], markdown: Path | None,
                 command: str) -> None:
    """``results.md`` (and ``markdown``, if given) and the plots, from the rows of `hap eval`."""
    sources = sorted({r["source"] for r in rows if not r.get("closed_loop")}, key=lambda s: s != "replay")
    n_seeds = len({r["seed"] for r in rows})
    n_blocks = len({r["block"] for r in rows if "block" in r})
    lines = ["# Results", "", f"Generated by `{command}`; {n_seeds} seed(s), {n_blocks} disjoint time blocks per "
             "offline stream. Progressive validation: every batch is scored before it is trained on.", "",
             "Levels: mean ± half-width of the 95% t-interval over seeds. **Δ columns: paired differences per "
             "block** (both arms scored on the same requests of the block, averaged over seeds, then a 95% "
             "t-interval over the blocks: independent data, not only training noise); beside each, **a paired "
             "bootstrap over users** (1,000 resamples of the users with replacement, both arms' GAUC on the same "
             "resample; the difference on the whole stream and its 2.5%/97.5% points). An interval that excludes "
             "0 is a difference the data supports.", "",
             "Real labels first: exposed GAUC (per-request AUC of clicked against unclicked exposed items, weighted "
             "by exposed items) and exposed AUC (the same pairs pooled) are the only metrics with true labels on "
             "a replayed log. Metrics over constructed negatives (`rn`, `prn`, `gn`) are diagnostics of the "
             "pre-ranker's other job, keeping implausible candidates out. Recall@10: positives in the top 10 of "
             "the request's hybrid set; Consistency@10: the ranking stage's top 10 found there. `ctr` and "
             "`popularity` are counters as of the request (`policy` = counter).", ""]
    for source in sources:
        lines += [f"## Offline, {source}", "", "### Real labels", "", *_real_label_table(rows, source), "",
                  *_damr_share(rows, source), "", "### Held out from tuning", "", *_held_out_table(rows, source), "",
                  "### Constructed negatives (diagnostics)", "",
                  *_constructed_table(rows, source), ""]
    if any(r.get("closed_loop") for r in rows):
        lines += ["## Closed loop (synthetic world, common random numbers)", "",
                  f"Every arm of a seed sees the same users, requests and click draw per (request, item). Δ: the "
                  f"per-request difference in true engagement against the reference arm, averaged over blocks of "
                  f"{LOOP_BLOCK} requests of the second half, 95% t-interval over the blocks of all seeds.", "",
                  *_loop_table(rows), ""]
    names = _plots(out, rows, conflict, sources)
    rel = markdown.parent if markdown else out
    lines += ["## Plots", ""] + [f"![{n}]({(out / f'{n}.png').relative_to(rel) if markdown else f'{n}.png'})"
                                 for n in names]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    if markdown:
        markdown.write_text(text)
