"""Three `hap router` processes on one Redis, as stateless replicas behind a load balancer: they reach
each version the model store publishes within their poll interval plus the time a swap takes, and a
router SIGKILLed leaves the other two answering.

Version 1 is published before the routers start (a deployment that already has a model); each loads it
on its own (the first load also derives each tier's reference shapes in a child process that imports
torch: two per router, the bulk of the start-up) and only then turns ready. Version 2 is published
with its notification, as the learner publishes; version 3 without one (the store's notification
sent to a channel nobody listens to), so the routers find it by polling alone. The bound, from the manifest's
``published_ts_ms`` to the moment a router's ``/readyz`` reports the version, is the poll interval
(``POLL_S``) plus the swap allowance: the slowest swap the routers measured themselves for that
version (``hap_router_swap_seconds``: load, verify, build, warm; each at most ``SWAP_CAP_S``) plus
``SLACK_S`` (notification delivery, the observer's own polling, scheduling on a loaded machine).
Printed: each router's latency, the spread (max - min of the moments the routers reported the
version) and the swap times. Then router 0 is SIGKILLed while a load thread keeps sending
``POST /v1/prerank`` to the other two: every answer is a 200 with the newest version, the killed one
refuses connections, and the two survivors still take version 4 within the same bound.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from deploy.pipeline import Component
from deploy.scrape import scrape
from deploy.settings import REDIS_PREFIX
from deploy.stack.process import free_port
from feature_store.model_store import ModelStore
from tests.router.conftest import body, publish

ROUTERS = 3
POLL_S = 1.0  # the routers' --poll: the manifest is re-read this often whatever the notifications do
SWAP_CAP_S = 3.0  # the most one swap (load + verify + build + warm of a version) may take on a busy machine
SLACK_S = 1.0  # notification delivery, the observer's own polling and HTTP, scheduling on a loaded machine
START_TIMEOUT_S = 120.0  # process start and the first load of version 1 (two torch children per router)
WATCH_EVERY_S = 0.01  # how often the observer asks each router's /readyz


class Router:
    """One `hap router` process on its own port; its requests go over connections the caller keeps alive."""

    def __init__(self, n: int, redis_url: str, tmp_path: Path) -> None:
        self.n, self.port = n, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {"HAP_REDIS_URL": redis_url, "HAP_DATA_DIR": str(tmp_path / f"data-{n}"),
               "HAP_ROUTER_PORT": str(self.port)}
        self.component = Component(f"router-{n}", ["router", "--port", str(self.port), "--poll", str(POLL_S)],
                                   tmp_path, env)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def readyz(self, conn: http.client.HTTPConnection) -> tuple[int, dict]:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    def prerank(self, conn: http.client.HTTPConnection, payload: bytes) -> tuple[int, dict]:
        conn.request("POST", "/v1/prerank", payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    def metrics(self):  # noqa: ANN201 - deploy.scrape.Metrics
        return scrape(f"{self.url}/metrics")

    def refuses_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    def log(self) -> str:
        return f"router {self.n} ({self.url}), last lines of {self.component.log_file}:\n{self.component.log_tail(15)}"


@pytest.fixture
def routers(redis_url: str, tmp_path: Path) -> Iterator[list[Router]]:
    """Three router processes (not started); every one stopped afterwards, also when the test fails."""
    group = [Router(n, redis_url, tmp_path) for n in range(ROUTERS)]
    try:
        yield group
    finally:
        for router in group:
            router.component.stop(timeout_s=10)  # SIGTERM, SIGKILL after 10 s; nothing when already dead


def watch_version(routers: list[Router], version: int, timeout_s: float) -> dict[int, float]:
    """Wall-clock time at which each router's ``/readyz`` first reported ``version`` (one observer thread
    per router, asking every ``WATCH_EVERY_S``); fails naming the routers that did not within ``timeout_s``."""
    seen: dict[int, float] = {}
    last: dict[int, object] = {}
    deadline = time.monotonic() + timeout_s

    def watch(router: Router) -> None:
        conn = router.connection()
        try:
            while time.monotonic() < deadline:
                try:
                    status, answer = router.readyz(conn)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    last[router.n] = repr(exc)
                    conn.close()
                    conn = router.connection()
                else:
                    last[router.n] = (status, answer)
                    if status == 200 and answer.get("version") == version:
                        seen[router.n] = time.time()
                        return
                time.sleep(WATCH_EVERY_S)
        finally:
            conn.close()

    threads = [threading.Thread(target=watch, args=(r,), daemon=True) for r in routers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    missing = [r for r in routers if r.n not in seen]
    if missing:
        pytest.fail(f"version {version} not reported by router(s) {[r.n for r in missing]} within {timeout_s:.1f}s; "
                    "last /readyz answers: " + "; ".join(f"{r.n}: {last.get(r.n)}" for r in missing) + "\n"
                    + "\n".join(r.log() for r in missing))
    return seen


def propagation(routers: list[Router], store: ModelStore, version: int, seen: dict[int, float],
                before: dict[int, object], how: str) -> float:
    """Check each router's latency from the manifest's publish time against the bound: the poll interval
    plus the swap time the routers measured (the slowest of them) plus ``SLACK_S``; print the figures
    and return the spread (max - min of the moments the routers reported the version)."""
    published_s = store.manifest()["published_ts_ms"] / 1000
    latency = {n: t - published_s for n, t in seen.items()}
    spread = max(seen.values()) - min(seen.values())
    swaps = {}
    for r in routers:
        m = r.metrics().since(before[r.n])
        assert m.total("hap_router_swap_seconds_count") == 1, f"router {r.n} did not swap exactly once to {version}"
        swaps[r.n] = m.total("hap_router_swap_seconds_sum")
    bound = POLL_S + max(swaps.values()) + SLACK_S
    print(f"version {version} ({how}): latency from publish "
          + ", ".join(f"router {n} {s:.3f}s" for n, s in sorted(latency.items()))
          + f"; spread {spread:.3f}s; swap " + ", ".join(f"{s:.3f}s" for _, s in sorted(swaps.items()))
          + f"; bound {bound:.2f}s (poll {POLL_S:.1f}s + slowest swap + {SLACK_S:.1f}s)")
    slow = {n: s for n, s in swaps.items() if s > SWAP_CAP_S}
    assert not slow, f"version {version}: swaps above {SWAP_CAP_S:.1f}s: {slow}"
    late = {n: s for n, s in latency.items() if s > bound}
    assert not late, f"version {version} ({how}) reached router(s) after the bound {bound:.2f}s: {late}"
    return spread


def test_three_routers_reach_each_version_together_and_two_answer_when_one_is_killed(routers, redis_client):
    started = time.monotonic()
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=100)
    quiet = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=100)
    quiet.channel = f"{quiet.channel}:nobody-listens"  # the same keys, the notification unheard: polls only
    payload = orjson.dumps(body(50))

    v1 = publish(redis_client, 1, store)
    launched = time.monotonic()
    for r in routers:
        r.component.start()
    for r in routers:
        try:
            r.component.wait_http(f"{r.url}/healthz", timeout_s=START_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{r.log()}")
    up_s = time.monotonic() - launched
    watch_version(routers, v1, START_TIMEOUT_S)
    print(f"three routers answering /healthz after {up_s:.1f}s, serving version {v1} after "
          f"{time.monotonic() - launched:.1f}s (the first load derives the reference shapes in torch children)")

    spreads = []
    for seed, publisher, how in ((2, store, "notified"), (3, quiet, "no notification: poll only")):
        before = {r.n: r.metrics() for r in routers}
        version = publish(redis_client, seed, publisher)
        seen = watch_version(routers, version, POLL_S + SWAP_CAP_S + SLACK_S + 10)
        spreads.append(propagation(routers, store, version, seen, before, how))
    newest = version
    for r in routers:  # the scoring path serves it too, not only /readyz
        conn = r.connection()
        status, answer = r.prerank(conn, payload)
        conn.close()
        assert (status, answer.get("version")) == (200, newest), f"router {r.n}: {status} {answer}\n{r.log()}"

    # SIGKILL router 0 while a load thread keeps asking the other two
    victim, survivors = routers[0], routers[1:]
    answers: list[tuple[int, float, int, object]] = []  # (router, wall time, status, version or error)
    stop = threading.Event()

    def load() -> None:
        conns = {r.n: r.connection() for r in survivors}
        while not stop.is_set():
            for r in survivors:
                try:
                    status, answer = r.prerank(conns[r.n], payload)
                    answers.append((r.n, time.time(), status, answer.get("version")))
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    answers.append((r.n, time.time(), -1, repr(exc)))
                    conns[r.n].close()
                    conns[r.n] = r.connection()
            stop.wait(0.01)
        for c in conns.values():
            c.close()

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(0.5)
        victim.component.kill()
        killed = time.time()
        assert victim.refuses_connections(), f"router {victim.n} still accepts connections after SIGKILL"
        time.sleep(1.0)
        before = {r.n: r.metrics() for r in survivors}
        v4 = publish(redis_client, 4, store)
        seen = watch_version(survivors, v4, POLL_S + SWAP_CAP_S + SLACK_S + 10)
        spreads.append(propagation(survivors, store, v4, seen, before, "notified, one router killed"))
        time.sleep(0.5)
    finally:
        stop.set()
        loader.join(10)
    assert victim.refuses_connections(), f"router {victim.n} accepts connections again"
    assert victim.component.returncode is not None

    after_kill = [a for a in answers if a[1] > killed]
    failed = [a for a in answers if a[2] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests to the survivors failed, first: {failed[:3]}"
    for r in survivors:
        theirs = [v for n, t, _, v in after_kill if n == r.n]
        assert len(theirs) >= 10, f"router {r.n} answered only {len(theirs)} requests after the kill"
        assert theirs == sorted(theirs) and set(theirs) <= {newest, v4} and theirs[-1] == v4, \
            f"router {r.n} answered versions {sorted(set(theirs))} after the kill, not {newest} then {v4}"
        errors = {k: v for k, v in r.metrics().by_label("hap_router_errors_total", "kind").items()
                  if v and k != "not_ready"}  # not_ready: the 503s of /readyz before version 1 loaded
        assert not errors, f"router {r.n} counted errors {errors}\n{r.log()}"
    elapsed = time.monotonic() - started
    print(f"after the SIGKILL: {len(after_kill)} requests to the two survivors, all 200; "
          f"version-propagation spread {min(spreads):.3f}-{max(spreads):.3f}s; test {elapsed:.1f}s")
