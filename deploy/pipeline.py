"""Run the pipeline's long-lived components (`hap streams`, `hap learner`, `hap router`) as processes.

Used by the demo, the evaluation's closed loop and the end-to-end tests. Each component is a
real `hap` subprocess with its log under ``log_dir``; :meth:`Component.stop` sends SIGTERM
(a graceful shutdown: flush, checkpoint, commit) and :meth:`Component.kill` SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deploy.settings import command_env
from deploy.stack.process import children


class Component:
    """One `hap <command> ...` process; never restarted behind the caller's back."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_file = log_dir / f"{name}.log"
        self.env = command_env(args[0] if args else name, {**os.environ, **(env or {})})  # only its secrets
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Component:
        """Launch the process (appending to its log)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.cli", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, timeout_s: float = 60.0) -> None:
        """Block until ``url`` answers 200; raise ``RuntimeError`` naming the log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited ({self.returncode}); see {self.log_file}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout_s:.0f}s; see {self.log_file}")

    def wait_metric(self, url: str, name: str, at_least: float, timeout_s: float = 60.0) -> float:
        """Poll the ``/metrics`` at ``url`` until ``name`` (summed) reaches ``at_least``; returns it."""
        from deploy.scrape import scrape

        deadline = time.monotonic() + timeout_s
        value = 0.0
        while time.monotonic() < deadline:
            try:
                value = scrape(url).total(name)
            except OSError:  # not listening yet (or restarting)
                pass
            if value >= at_least:
                break
            time.sleep(0.1)
        return value

    def children(self) -> list[int]:
        """The live child processes (a supervisor's workers: `hap streams`, `hap router --workers`)."""
        return [] if self.proc is None else children(self.proc.pid)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); returns the exit code."""
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the process group: the crash the fault tests inject."""
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
