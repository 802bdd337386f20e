"""Keep a broker outage from flooding the logs: aiokafka logs every failed metadata refresh
(thousands of lines a second while the broker is down). One record per message template gets
through every ``interval_s``; the next one that does says how many were held back.

Examples
--------
>>> f = RepeatFilter(interval_s=60)
>>> rec = logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Unable to update metadata from %s", ([1],), None)
>>> f.filter(rec), f.filter(rec), f.suppressed
(True, False, 1)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

NOISY_LOGGERS = ("aiokafka", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                 "aiokafka.producer.sender")


class RepeatFilter(logging.Filter):
    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.last: dict[tuple[str, str], float] = {}
        self.held: dict[tuple[str, str], int] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self.last.get(key, float("-inf")) < self.interval_s:
            self.held[key] = self.held.get(key, 0) + 1
            self.suppressed += 1
            return False
        self.last[key] = now
        held = self.held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} [{held} like it in the last {self.interval_s:.0f}s not logged]"
        return True


def quiet_repeats(loggers: Iterable[str] = NOISY_LOGGERS, interval_s: float = 10.0) -> RepeatFilter:
    """Install one :class:`RepeatFilter` on each of ``loggers``."""
    f = RepeatFilter(interval_s)
    for name in loggers:
        logging.getLogger(name).addFilter(f)
    return f
