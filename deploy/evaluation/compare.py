"""Paired Δ between any two arms of one or more ``hap eval`` runs over the same blocks.

``hap eval``'s page pairs every arm with ``ctr`` and ``counters`` only; this compares any two,
also across runs of the same log (an arm run on its own, e.g. ``gbdt``, against the headline
run's ``ghcl`` rows): per-block differences of exposed GAUC, a 95% t-interval over all blocks
and over the blocks after the dev split (``deploy.evaluation.report.DEV_SHARE``).

    python -m deploy.evaluation.compare docs/results/results.json docs/results/results.json \\
        --arm ghcl/light/0 --reference ghcl-linear-wide/light/0
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from deploy.evaluation.paired import ci95, paired_blocks
from deploy.evaluation.report import DEV_SHARE


def parse_arm(text: str) -> tuple[str, str, float]:
    """``method/policy/budget`` as the rows key it.

    >>> parse_arm("ghcl/damr/0.3")
    ('ghcl', 'damr', 0.3)
    """
    method, policy, budget = text.split("/")
    return method, policy, float(budget)


def compare(files: list[Path], arm: tuple[str, str, float], reference: tuple[str, str, float],
            source: str = "replay") -> dict[str, tuple[float, float]]:
    """``arm`` minus ``reference`` per block over the rows of ``files``: (mean, half-width) over all
    blocks and over the held-out ones. An arm present in several files (the anchors each run
    repeats) is averaged per block."""
    rows = [r for f in files for r in json.loads(f.read_text())["rows"]]
    deltas = paired_blocks(rows, source, arm, reference)
    if not deltas:
        raise SystemExit(f"no blocks of {source} hold both {arm} and {reference}")
    first = math.ceil(DEV_SHARE * len(deltas))
    return {"all blocks": ci95(deltas), f"blocks {first + 1}-{len(deltas)}": ci95(deltas[first:])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="results.json files of hap eval runs of the same log")
    p.add_argument("--arm", type=parse_arm, required=True, help="method/policy/budget, e.g. gbdt/counter/0")
    p.add_argument("--reference", type=parse_arm, required=True, help="method/policy/budget, e.g. ghcl/light/0")
    p.add_argument("--source", default="replay", help="replay or synthetic")
    args = p.parse_args(argv)
    names = " - ".join("/".join(map(str, a)) for a in (args.arm, args.reference))
    for span, (mean, half) in compare(args.results, args.arm, args.reference, args.source).items():
        print(f"{names}, {span}: {mean:+.4f} ± {half:.4f}")


if __name__ == "__main__":
    main()
