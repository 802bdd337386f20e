"""A small impression log in the MIND layout, written for a test (the real logs stay in ../shared/data).

Items have their own click rate, so a counter or a model can learn something; ``news.tsv`` leaves
every category empty (as the EB-NeRD log does), one row has no user and one no history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from streams.simulator.replay import TIME_FORMAT


def write_mind_log(directory: Path, requests: int, items: int = 80, users: int = 30, seed: int = 0) -> Path:
    """Write ``behaviors.tsv`` and ``news.tsv`` under ``directory`` (created); returns it."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"N{i}" for i in range(items)]
    ctr = rng.beta(1.0, 6.0, items)
    start = datetime(2023, 5, 18, 7, 0, 0)
    rows = []
    for r in range(requests):
        when = (start + timedelta(seconds=30 * r)).strftime(TIME_FORMAT)
        shown = rng.choice(items, int(rng.integers(4, 10)), replace=False)
        impressions = " ".join(f"{ids[i]}-{int(rng.random() < ctr[i])}" for i in shown)
        user = "" if r == 3 else f"U{rng.integers(users)}"
        history = "" if r == 5 else " ".join(ids[i] for i in rng.choice(items, 5, replace=False))
        rows.append(f"{r + 1}\t{user}\t{when}\t{history}\t{impressions}")
    (directory / "behaviors.tsv").write_text("\n".join(rows) + "\n")
    (directory / "news.tsv").write_text("".join(f"{i}\t\t\t\t\t\t\t\n" for i in ids))
    return directory
