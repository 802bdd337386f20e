"""PNG plots of a demo run: freshness histogram, learning curves per source, DAMR cost and quality."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deploy.scrape import Metrics  # noqa: E402

SOURCES = ("exp_neg", "rn", "prn", "gn")


def _buckets(m: Metrics, name: str) -> tuple[list[str], list[float]]:
    cumulative = sorted(((float(dict(lab)["le"]), v) for (n, lab), v in m.samples.items()
                         if n == f"{name}_bucket"), key=lambda kv: kv[0])
    labels, counts, below = [], [], 0.0
    for le, v in cumulative:
        labels.append("+Inf" if math.isinf(le) else f"≤{le:g}")
        counts.append(v - below)
        below = v
    return labels, counts


def plot_demo(out: Path, report: dict[str, Any], curves: list[dict[str, Any]], router: Metrics | None) -> list[Path]:
    """Write the demo's plots next to its report; returns their paths."""
    paths = []
    if router is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for ax, (name, title) in zip(axes, (("hap_router_freshness_seconds", "freshness (finalized → served)"),
                                            ("hap_router_model_age_at_load_seconds", "model age (event → served)")),
                                     strict=True):
            labels, counts = _buckets(router, name)
            ax.bar(range(len(counts)), counts)
            ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
            ax.set_title(title)
            ax.set_xlabel("seconds")
            ax.set_ylabel("sample groups")
        fig.tight_layout()
        paths.append(out / "freshness.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if curves:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
        for ax, tier in zip(axes, ("light", "damr", "expressive_all"), strict=True):
            for source in SOURCES:
                pts = [(c["t"], c[tier]["auc_vs"][source]) for c in curves
                       if tier in c and c[tier]["auc_vs"].get(source) is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=f"AUC pos vs {source}")
            pts = [(c["t"], c[tier]["recall_at_k"]) for c in curves if tier in c and c[tier]["recall_at_k"] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "k--", label="recall@k")
            ax.set_title(f"{tier}: progressive validation")
            ax.set_xlabel("seconds into the demo")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "learning_curves.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    rows = report.get("router_policies", [])
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        names = [r["policy"] for r in rows]
        axes[0].bar([n + " p50" for n in names], [r["p50_ms"] for r in rows])
        axes[0].bar([n + " p99" for n in names], [r["p99_ms"] for r in rows])
        axes[0].set_ylabel("ms per request (client side)")
        axes[0].tick_params(axis="x", rotation=30)
        axes[0].set_title(f"DAMR latency, {rows[0]['candidates']} candidates")
        tiers = [t for t in ("light", "damr", "expressive_all") if t in report["quality"]]
        for offset, metric in enumerate(("auc", "gauc", "recall_at_k")):
            axes[1].bar([i + offset * 0.25 for i in range(len(tiers))],
                        [report["quality"][t][metric] or 0 for t in tiers], width=0.25, label=metric)
        axes[1].set_xticks([i + 0.25 for i in range(len(tiers))], tiers)
        axes[1].set_ylim(0.4, 1.0)
        axes[1].legend()
        axes[1].set_title("quality (progressive validation)")
        fig.tight_layout()
        paths.append(out / "damr.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
