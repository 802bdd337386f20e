"""Progress of a long job: a bar on a terminal, plain periodic lines otherwise (logs, CI), JSON
objects when the commands log JSON (the setting ``log_format``, :mod:`deploy.logging_config`).

Examples
--------
>>> import io
>>> out = io.StringIO()
>>> with Progress(2, "eval", "run", stream=out, every_s=0) as p:
...     p.update("first")
...     p.update("second")
>>> out.getvalue().splitlines()[-1].startswith("eval: 2/2 run")
True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from deploy.logging_config import as_log_line


class Progress:
    """``update()`` after each unit of work; a tqdm bar when ``stream`` is a terminal, else one plain
    line at most every ``every_s`` seconds (and always for the last unit)."""

    def __init__(self, total: int, desc: str, unit: str, *, stream: TextIO | None = None,
                 every_s: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.done = self.printed = 0
        self.last_what = ""
        self.started = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream) if self.stream.isatty() else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """End the bar (a terminal) or say where the job ended (plain lines), once."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.done != self.total and self.done != self.printed:
            self._line(time.monotonic(), self.last_what)
        self.printed = self.done

    def update(self, what: str = "") -> None:
        """One unit done; ``what`` names it."""
        self.advance_to(self.done + 1, what)

    def advance_to(self, done: int, what: str = "") -> None:
        """``done`` units done so far (a job measured in seconds, say); ``what`` tells where it stands."""
        self.done, self.last_what = done, what
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(done - self.bar.n)  # tqdm redraws at most every 0.1 s
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.done == self.total and self.printed != self.done):
            self._line(now, what)

    def _line(self, now: float, what: str) -> None:
        self.last, self.printed = now, self.done
        detail = f" ({what})" if what else ""
        line = f"{self.desc}: {self.done}/{self.total} {self.unit}{detail}, {now - self.started:.0f} s"
        # on standard error, in the logs' format: one JSON object where the commands log JSON
        print(as_log_line(line, f"hap.{self.desc.split()[0]}") if self.stream is sys.stderr else line, file=self.stream,
              flush=True)
