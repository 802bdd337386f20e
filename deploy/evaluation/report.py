"""The results page of `hap eval`: real-label tables first, paired per-block differences, diagnostics, plots."""

from __future__ import annotations

import os
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


#: what each plot shows, under it on the page
CAPTIONS = {
    "forest": "Paired Δ exposed GAUC of every arm against the `ctr` counter (left) and against `mixed` light (right): "
              "point = mean of the per-block differences, bar = 95% t-interval over the time blocks. A bar clear of 0 "
              "is a difference the data supports.",
    "damr_budget": "The DAMR budget curve: exposed GAUC against the expressive tier's evaluations per request (the "
                   "leftmost point is the light tier alone, the rightmost the expressive tier on every candidate). "
                   "Band: 95% t-interval of the paired per-block gain over the same method's light tier. Dashed: "
                   "the counters.",
    "conflict": "Cosine between the easy-path and hard-path gradients per training step (5-step moving average): "
                "below 0 the paths conflict and harmonization projects the easy one.",
    "closed_loop": "Closed loop: Δ true engagement per request against the heuristic, paired under common random "
                   "numbers (second half, 95% t-interval over blocks of requests).",
}
#: the plots shown first on the page (the verdict's evidence); the rest come after the tables
SUMMARY_PLOTS = ("forest", "damr_budget")


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
            light = (method, "light", 0.0)
            points = []
            for (m, p, b), rs in sorted(arms.items(), key=lambda kv: kv[0][2]):
                if m == method:
                    _, half = ci95(paired_blocks(rows, source, (m, p, b), light)) if p != "light" else (0.0, 0.0)
                    points.append((np.mean([r["expressive_evals_per_request"] for r in rs]),
                                   np.mean([r["gauc"] for r in rs]), 0.0 if half != half else half))
            x, y, h = (np.array(v) for v in zip(*points, strict=True))
            line, = ax.plot(x, y, "o-", label=method, ms=3)
            ax.fill_between(x, y - h, y + h, color=line.get_color(), alpha=0.2, lw=0)
        for (m, p, _), rs in arms.items():
            if p == "counter":
                ax.axhline(np.mean([r["gauc"] for r in rs]), ls="--", lw=0.8, color="k" if m == "ctr" else "grey",
                           label=f"{m} (counter)")
        ax.set_xlabel("expressive evaluations per request (0 = light alone)")
        ax.set_ylabel("exposed GAUC")
        ax.set_title(f"{source}: DAMR budget curve")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "damr_budget.png", dpi=110)
    plt.close(fig)
    names.append("damr_budget")

    references = [REFERENCES[0], ("mixed", "light", 0.0)]
    fig, axes = plt.subplots(len(sources), len(references), figsize=(6 * len(references), 0.5 + 4 * len(sources)),
                             squeeze=False)
    for row, source in zip(axes, sources, strict=True):
        overall = _overall(rows, source)
        arms = [a for a in overall if a[1] in ("light", "counter", "expressive_all") or a[1:] == ("damr", 0.3)]
        for ax, ref in zip(row, references, strict=True):
            shown = [a for a in arms if a != ref] if ref in overall else []
            stats = [ci95(paired_blocks(rows, source, a, ref)) for a in shown]
            ys = np.arange(len(shown))[::-1]
            ax.errorbar([m for m, _ in stats], ys, xerr=[0.0 if h != h else h for _, h in stats], fmt="o",
                        capsize=3, ms=4)
            ax.set_yticks(ys, [f"{m}/{p}" + (f"@{b:g}" if p == "damr" else "") for m, p, b in shown], fontsize=7)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_xlabel(f"Δ exposed GAUC vs {ref[0]}/{ref[1]}, paired per block (95% CI)")
            ax.set_title(f"{source}: against {ref[0]}" if shown else f"{source}: no {ref[0]} arm in this run")
    fig.tight_layout()
    fig.savefig(out / "forest.png", dpi=110)
    plt.close(fig)
    names.append("forest")

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
    intro = len(lines)
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
    rel = markdown.parent if markdown else out  # image paths are relative to the page

    def figure(name: str) -> list[str]:
        path = os.path.relpath(out / f"{name}.png", rel) if markdown else f"{name}.png"
        return [f"![{name}]({path})", "",
                f"*{CAPTIONS[name]}*", ""]

    summary = ["## Summary plots", ""] + [line for n in SUMMARY_PLOTS if n in names for line in figure(n)]
    lines[intro:intro] = summary
    lines += ["## Other plots", ""] + [line for n in names if n not in SUMMARY_PLOTS for line in figure(n)]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    if markdown:
        markdown.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Write the page and plots again from a saved ``results.json`` (its rows, conflict series and command)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m deploy.evaluation.report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a results.json written by hap eval")
    parser.add_argument("--markdown", type=Path, help="also write the page here (e.g. docs/results.md)")
    args = parser.parse_args(argv)
    saved = json.loads(args.results.read_text())
    write_report(args.results.parent, saved["rows"], saved["conflict"], args.markdown, saved["command"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
