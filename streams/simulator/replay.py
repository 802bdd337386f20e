"""Replay of real impression logs in the MIND layout (``behaviors.tsv[.gz]``, ``news.tsv[.gz]``).

Each behaviors row is one request; its impression list is what the real ranking stage
exposed, with real clicks. Unexposed candidates are not logged, so they are simulated around
the request: pool items (ids from all impressions and histories) fill the retrieval set, the
exposed items take pre-ranking and ranking positions at the top (as they would have to, to be
shown) and the others are spread below. The mapping is written down in ``docs/data.md``.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from streams.simulator.cascade import PRERANK_KEEP, Request, feedback_events, run_cascade

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
HISTORY_SENT = 100


def _open(directory: Path, name: str) -> io.TextIOBase:
    for path in (directory / name, directory / f"{name}.gz"):
        if path.exists():
            raw = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
            return raw  # type: ignore[return-value]
    raise FileNotFoundError(f"{name}[.gz] not found in {directory}")


class MindReplay:
    """Requests from a MIND-layout dataset, in time order; deterministic for a seed.

    Examples
    --------
    >>> replay = MindReplay(Path("../shared/data/mind_small_subset"), n_candidates=400)  # doctest: +SKIP
    >>> request = next(replay.requests())  # doctest: +SKIP
    >>> len(request.ranking.candidates), request.exposed  # doctest: +SKIP
    (400, {'N55689': 1, 'N35729': 0})
    """

    def __init__(self, directory: Path, seed: int = 0, n_candidates: int = 1000,
                 feedback_delay_ms: float = 2000.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_candidates = n_candidates
        self.feedback_delay_ms = feedback_delay_ms
        with _open(directory, "behaviors.tsv") as f:
            rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 5]
        rows.sort(key=lambda r: (datetime.strptime(r[2], TIME_FORMAT), r[0]))
        self.rows = rows
        self.categories: dict[str, str] = {}
        try:
            with _open(directory, "news.tsv") as f:
                for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    if len(r) >= 2:
                        self.categories[r[0]] = r[1]
        except FileNotFoundError:
            pass
        pool = {i.rsplit("-", 1)[0] for r in rows for i in r[4].split()} | {h for r in rows for h in r[3].split()}
        self.pool = np.array(sorted(pool))

    def __len__(self) -> int:
        return len(self.rows)

    def content_type(self, item_id: str) -> str:
        return self.categories.get(item_id, "unknown")

    def requests(self) -> Iterator[Request]:
        for impression_id, user_id, _time, history, impressions in self.rows:
            yield self._request(impression_id, user_id, history.split(), impressions.split())

    def _request(self, impression_id: str, user_id: str, history: list[str], impressions: list[str]) -> Request:
        exposed = [i.rsplit("-", 1) for i in impressions]
        exposed_ids = [i for i, _ in exposed]
        taken = set(exposed_ids)
        fill = [str(i) for i in self.rng.choice(self.pool, min(len(self.pool), self.n_candidates), replace=False)
                if i not in taken][: max(0, self.n_candidates - len(exposed_ids))]
        ids = exposed_ids + fill
        n, e = len(ids), len(exposed_ids)
        # exposed items must have passed both stages: give them the top scores of each
        keep = max(PRERANK_KEEP, e)
        pre = self.rng.random(n)
        passed = np.r_[np.arange(e), e + self.rng.choice(n - e, min(n - e, keep - e), replace=False)]
        pre[passed] += 1.0
        rank = self.rng.random(n)
        rank[:e] = 2.0 - np.arange(e) / max(e, 1)  # in impression order
        features = {"history": history[-HISTORY_SENT:]}
        request_id = f"mind-{impression_id}"
        ranking, shown = run_cascade(request_id, user_id, features, ids, ["replay"] * n,
                                     [self.content_type(i) for i in ids], pre, rank, e, keep)
        labels = {item: int(label == "1") for item, label in exposed}
        events = []
        for pos, item in enumerate(shown):
            events += feedback_events(request_id, user_id, item, pos, labels[item] == 1, self.rng,
                                      self.feedback_delay_ms)
        return Request(ranking, events, labels)
