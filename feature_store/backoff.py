"""Fail fast while a dependency is down: after a failure, skip it for ``backoff_s``.

An outage then costs one failed call per interval instead of a timeout on every call, and
callers fall back to defaults (counted) in the meantime.

Examples
--------
>>> b = Backoff(backoff_s=60)
>>> b.ready
True
>>> b.failed()
>>> b.ready
False
"""

from __future__ import annotations

import time


class Backoff:
    def __init__(self, backoff_s: float = 1.0) -> None:
        self.backoff_s = backoff_s
        self.until = 0.0

    @property
    def ready(self) -> bool:
        """Whether the dependency may be tried now."""
        return time.monotonic() >= self.until

    def failed(self) -> None:
        self.until = time.monotonic() + self.backoff_s
