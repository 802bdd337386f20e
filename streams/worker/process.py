"""The worker process's Faust worker: no start-up spinner, and SIGTERM or SIGINT end the process at once."""

from __future__ import annotations

import os
from typing import Any


def _exit_now() -> None:
    # Faust's graceful stop can hang with several agents. Offsets are committed every second,
    # only after processing, and every step downstream is idempotent (deterministic group ids),
    # so exiting at once keeps the at-least-once guarantee: SIGTERM behaves like SIGKILL.
    os._exit(0)


def make_worker_class() -> type:
    import faust

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: Any, level: int) -> None:
            # Faust's start-up spinner sets the root logger to DEBUG (it spins on every record),
            # so every debug line of Faust and aiokafka, several per record sent, was built and then
            # dropped by the handler: no spinner (the output is a log); the root logger stays at `level`
            self.spinner = None

        def _on_sigterm(self) -> None:
            _exit_now()

        def _on_sigint(self) -> None:
            _exit_now()

    return Worker
