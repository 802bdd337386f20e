"""`hap router`: the DAMR pre-ranking service.

A router process uses one core on purpose: the math libraries' thread pools (OpenBLAS under numpy)
are limited to one thread once the app is built (:func:`pin_math_threads`): a second OpenBLAS
thread spins between the request's small products and takes the core the request thread needs.
``--workers N`` uses N cores: N processes serve one port (``SO_REUSEPORT``, the kernel spreads
connections), each loading and hot-swapping versions on its own; the parent supervises them
(a worker that exits is restarted; SIGTERM/SIGINT stop them all) and ``/metrics`` on any worker
answers for all of them (prometheus_client's multiprocess mode over a private directory).

On SIGTERM a router drains before it stops (``--drain``, or its setting): readiness 503,
requests still served, then the port closes and requests in flight finish (:mod:`router.drain`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

#: how long a thread holding the GIL keeps it from a waiting one (Python's default: 5 ms)
SWITCH_INTERVAL_S = 0.0005


def add_parser(sub: argparse._SubParsersAction) -> None:
    from deploy.settings import Settings, env_name
    from feature_store.registry import POLICIES

    s = Settings.load()
    p = sub.add_parser("router")
    p.add_argument("--host", help=f"address to bind (default: {env_name('router_host')}, else "
                   f"{env_name('metrics_host')}, else 127.0.0.1)")
    p.add_argument("--port", type=int,
                   help=f"port of the API and /metrics (default: {env_name('router_port')} or 8080)")
    p.add_argument("--policy", choices=POLICIES, default=s.router_policy,
                   help="serving policy of a request that names none")
    p.add_argument("--budget", type=float, default=s.damr_budget,
                   help="expressive budget: fraction of candidates (< 1) or count")
    p.add_argument("--max-candidates", type=int, default=5000, help="a request with more candidates is refused (413)")
    p.add_argument("--poll", type=float, default=2.0, help="manifest polling interval (fallback to pub/sub)")
    p.add_argument("--workers", type=int, default=s.router_workers,
                   help="processes serving the port (SO_REUSEPORT), one core each")
    p.add_argument("--drain", type=float, default=s.router_drain_s,
                   help="seconds between SIGTERM and closing the port, readiness answering 503 "
                        f"(default: {env_name('router_drain_s')}, %(default)s)")
    p.add_argument("--server-timing", action="store_true",
                   help="name each answer's stage and CPU milliseconds in a Server-Timing header")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for the workers


def run(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return supervise(args)
    import asyncio

    from deploy.settings import Settings
    from router.app import make_app
    from router.drain import Drain, serve

    s = Settings.load()
    client = s.redis.client(timeout_s=0.5)
    drain = Drain()
    app = make_app(client, prefix=s.redis_prefix, policy=args.policy, budget=args.budget,
                   max_candidates=args.max_candidates, poll_s=args.poll, drain=drain,
                   server_timing=args.server_timing)
    pin_math_threads()
    gc.collect()
    gc.freeze()  # what start-up built is never traversed again; a request's objects die by reference count
    gc.set_threshold(50_000, 20, 100)  # fewer young collections under thousands of candidates per request
    # the background threads (feature refresh, swap) hand the GIL back to a waiting request after 0.5 ms, not 5
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    asyncio.run(serve(app, drain, host=args.host or s.router_host, port=args.port or s.router_port,
                      drain_s=args.drain, reuse_port=args.reuse_port))
    return 0


def pin_math_threads() -> None:
    """Limit every loaded math library's thread pool (OpenBLAS, OpenMP, MKL) to one thread.

    Done at run time with threadpoolctl, since setting ``OPENBLAS_NUM_THREADS`` works only before
    numpy is first imported, and ``hap`` imports numpy before it knows the subcommand: the router
    then ran a second OpenBLAS thread that spun after each product, as busy as the request thread
    (docs/performance.md, issue 34). It holds for the whole process.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` router processes on one port; restart one that exits (at most once a
    second), stop them all on SIGTERM or SIGINT."""
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from deploy.settings import Settings
    from router.drain import GRACE_S

    s = Settings.load()
    command = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())", "router",
               "--host", args.host or s.router_host, "--port", str(args.port or s.router_port),
               "--policy", args.policy, "--budget", str(args.budget),
               "--max-candidates", str(args.max_candidates), "--poll", str(args.poll), "--workers", "1",
               "--drain", str(args.drain), "--reuse-port", *(["--server-timing"] if args.server_timing else [])]
    metrics_dir = tempfile.mkdtemp(prefix="hap-router-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers = [subprocess.Popen(command, env=env) for _ in range(args.workers)]
    log = logging.getLogger("hap.router")
    try:
        while not stopping:
            time.sleep(0.2)
            for n, worker in enumerate(workers):
                if worker.poll() is not None and not stopping:
                    log.warning("router worker %d exited with %s; restarting", worker.pid, worker.returncode)
                    _mark_dead(worker.pid, metrics_dir)
                    time.sleep(1.0)
                    workers[n] = subprocess.Popen(command, env=env)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(args.drain + GRACE_S + 5)  # each worker drains, then its requests finish
            except subprocess.TimeoutExpired:
                worker.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)
