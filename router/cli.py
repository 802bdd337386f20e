"""`hap router`: the DAMR pre-ranking service.

A router process uses one core on purpose: the math libraries' thread pools are pinned to one
thread before numpy loads (a second OpenBLAS thread only competes with the request thread).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os

#: set before numpy is first imported (``hap`` imports this module before any component)
PINNED_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
for _name in PINNED_THREADS:
    os.environ.setdefault(_name, "1")


def add_parser(sub: argparse._SubParsersAction) -> None:
    env = os.environ.get
    p = sub.add_parser("router", help="serve pre-ranking with DAMR over hot-swapped versions")
    p.add_argument("--host", default=env("HAP_ROUTER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, help="default: HAP_ROUTER_PORT or 8080")
    p.add_argument("--policy", choices=["light", "damr", "expressive_all"], default=env("HAP_ROUTER_POLICY", "damr"))
    p.add_argument("--budget", type=float, default=float(env("HAP_ROUTER_BUDGET", 0.2)),
                   help="expressive budget: fraction of candidates (< 1) or count")
    p.add_argument("--max-candidates", type=int, default=5000)
    p.add_argument("--poll", type=float, default=2.0, help="manifest polling interval (fallback to pub/sub)")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from deploy.settings import Settings
    from router.app import make_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = Settings.load()
    client = s.redis.client(timeout_s=0.5)
    app = make_app(client, policy=args.policy, budget=args.budget, max_candidates=args.max_candidates,
                   poll_s=args.poll)
    gc.collect()
    gc.freeze()  # what start-up built is never traversed again; a request's objects die by reference count
    gc.set_threshold(50_000, 20, 100)  # fewer young collections under thousands of candidates per request
    web.run_app(app, host=args.host, port=args.port or s.router_port, access_log=None, print=None)
    return 0
