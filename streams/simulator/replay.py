"""Replay of real impression logs in the MIND layout (``behaviors.tsv[.gz]``, ``news.tsv[.gz]``).

Each behaviors row is one request; its impression list is what the real ranking stage
exposed, with real clicks. Unexposed candidates are not logged, so they are built around the
request from what was *live* then: items exposed to anyone within ``live_window_s`` before the
request (never ids that only appear in histories). A fixed reference scorer, the item's
smoothed CTR as of the request (logit) plus noise, orders them for the simulated cascade: the
pre-ranking stage keeps the exposed items and the reference's best others (so ``rn``, ranked
low by the ranking stage after passing pre-ranking, are harder than ``prn``, dropped at
pre-ranking, which are harder than ``gn``, uniform over the catalogue). The mapping is written
down in ``docs/data.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from feature_store.featurize import ctr_logit, smoothed_ctr
from streams.simulator.cascade import PRERANK_KEEP, Request, feedback_events, run_cascade

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
#: the contract's type of an item whose category is unknown (missing or empty in ``news.tsv``)
UNKNOWN_TYPE = "unknown"
#: the user of a row whose user column is empty (every request must name one)
UNKNOWN_USER = "unknown"
HISTORY_SENT = 100
LIVE_WINDOW_S = 86_400.0
#: noise of the reference scorer at each stage (standard deviations on the CTR-logit scale)
PRERANK_NOISE, RANK_NOISE = 1.0, 0.5


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
    (2, {'N55689': 1, 'N35729': 0})
    """

    def __init__(self, directory: Path, seed: int = 0, n_candidates: int = 1000,
                 feedback_delay_ms: float = 2000.0, live_window_s: float = LIVE_WINDOW_S) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_candidates = n_candidates
        self.feedback_delay_ms = feedback_delay_ms
        self.live_window_s = live_window_s
        with _open(directory, "behaviors.tsv") as f:
            rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 5]
        rows.sort(key=lambda r: (datetime.strptime(r[2], TIME_FORMAT), r[0]))
        self.rows = rows
        self.categories: dict[str, str] = {}
        try:
            with _open(directory, "news.tsv") as f:
                for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    if len(r) >= 2 and r[1].strip():
                        self.categories[r[0]] = r[1].strip()
        except FileNotFoundError:
            pass
        #: the catalogue: every item exposed in the log (ids only seen in histories are not items we serve)
        self.pool = np.array(sorted({i.rsplit("-", 1)[0] for r in rows for i in r[4].split()}))

    def __len__(self) -> int:
        return len(self.rows)

    def time_ms(self, index: int) -> int:
        """The log's own time (ms since the epoch, local time as written) of request ``index`` in time order."""
        return int(datetime.strptime(self.rows[index][2], TIME_FORMAT).timestamp() * 1000)

    def content_type(self, item_id: str) -> str:
        """The item's category, or :data:`UNKNOWN_TYPE` where ``news.tsv`` leaves it out or empty."""
        return self.categories.get(item_id, UNKNOWN_TYPE)

    def requests(self) -> Iterator[Request]:
        """The requests in time order; each one's candidates come from the items live before it."""
        live: dict[str, float] = {}  # item -> time of its last exposure
        recent: deque[tuple[float, str]] = deque()
        exposures, clicks = defaultdict(float), defaultdict(float)
        for impression_id, user_id, when, history, impressions in self.rows:
            t = datetime.strptime(when, TIME_FORMAT).timestamp()
            while recent and recent[0][0] < t - self.live_window_s:
                seen, item = recent.popleft()
                if live.get(item) == seen:
                    del live[item]
            exposed = [i.rsplit("-", 1) for i in impressions.split()]
            yield self._request(impression_id, user_id.strip() or UNKNOWN_USER, history.split(), exposed, sorted(live),
                                lambda i: ctr_logit(smoothed_ctr(clicks[i], exposures[i])), int(t * 1000))
            for item, label in exposed:
                live[item] = t
                recent.append((t, item))
                exposures[item] += 1
                clicks[item] += label == "1"

    def _request(self, impression_id: str, user_id: str, history: list[str], exposed: list[list[str]],
                 live: list[str], reference: Callable[[str], float], ts_ms: int) -> Request:
        exposed_ids = [i for i, _ in exposed]
        taken = set(exposed_ids)
        others = [i for i in live if i not in taken]
        n_fill = min(len(others), max(0, self.n_candidates - len(exposed_ids)))
        fill = [others[j] for j in self.rng.choice(len(others), n_fill, replace=False)] if n_fill else []
        ids = exposed_ids + fill
        n, e = len(ids), len(exposed_ids)
        ref = np.array([reference(i) for i in fill])
        # exposed items must have passed both stages: they take the top scores of each, in
        # impression order for ranking; the others are ordered by the noisy reference scorer
        keep = max(PRERANK_KEEP, e)
        pre = np.r_[np.full(e, 1e6), ref + self.rng.normal(0, PRERANK_NOISE, n - e)]
        rank = np.r_[1e6 - np.arange(e), ref + self.rng.normal(0, RANK_NOISE, n - e)]
        features = {"history": history[-HISTORY_SENT:]}
        request_id = f"mind-{impression_id}"
        ranking, shown = run_cascade(request_id, user_id, features, ids, ["replay"] * n,
                                     [self.content_type(i) for i in ids], pre, rank, e, keep)
        labels = {item: int(label == "1") for item, label in exposed}
        events = []
        for pos, item in enumerate(shown):
            events += feedback_events(request_id, user_id, item, pos, labels[item] == 1, self.rng,
                                      self.feedback_delay_ms)
        # the log's own time (a sink re-times it; an offline replay reads features as of it)
        return Request(dataclasses.replace(ranking, ts_ms=ts_ms), events, labels)
