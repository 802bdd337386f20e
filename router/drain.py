"""Shutting a router down without failing a request: drain, then stop.

On SIGTERM (a rollout, an HPA scale-down, ``docker stop``) the router first *drains*: ``/readyz``
answers 503 (``"draining"``) so that load balancers and Kubernetes take the replica out of
rotation, while the port stays open and every request, new or in flight, is still served. After
``drain_s`` it stops listening, lets the requests in flight finish (up to ``grace_s``) and exits.
SIGINT (Ctrl-C) skips the drain: the port closes at once, requests in flight still finish.

"In flight" counts from a request's headers to its answer, so a request whose body is still
uploading when the port closes is answered too (aiohttp's own shutdown stops reading bodies at
once, which is why the wait happens before it). While draining, answers carry ``Connection:
close``: a client's next request opens a new connection, which the balancer sends elsewhere.

In Kubernetes the pod's ``preStop`` hook delays SIGTERM a few seconds more (endpoints are removed
in parallel with the hook), so ``terminationGracePeriodSeconds`` must cover the hook, ``drain_s``
and ``grace_s`` (``deploy/k8s/router.yaml``; a test checks the sum).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

#: how long requests in flight may take to finish once the port is closed
GRACE_S = 10.0
log = logging.getLogger("hap.router")


class Drain:
    """Whether the router is draining (shared by the handlers and the shutdown sequence)."""

    def __init__(self) -> None:
        self.since: float | None = None
        #: requests between their headers and their answer (the app's middleware counts them)
        self.in_flight = 0

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        """Start draining (idempotent): from now on ``/readyz`` answers 503."""
        if self.since is None:
            self.since = time.monotonic()


async def serve(app: web.Application, drain: Drain, *, host: str, port: int, drain_s: float,
                grace_s: float = GRACE_S, reuse_port: bool = False) -> None:
    """Serve ``app`` until SIGTERM (drain ``drain_s``, then stop) or SIGINT (stop), requests in flight finishing."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: dict[str, int] = {}

    def on_signal(signum: int) -> None:
        signals.setdefault("first", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        if signals["first"] == signal.SIGTERM and drain_s > 0:
            drain.begin()
            log.warning("SIGTERM: draining for %.1f s (readiness 503, still serving), then stopping", drain_s)
            stop.clear()
            try:  # a second signal ends the drain early
                await asyncio.wait_for(stop.wait(), drain_s)
            except TimeoutError:
                pass
    finally:
        log.warning("stopping: the port closes, %d requests in flight finish (up to %.1f s)", drain.in_flight,
                    grace_s)
        await site.stop()
        deadline = loop.time() + grace_s
        while drain.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await runner.cleanup()
