"""A background server process tracked by a pid file, so that `down` stops exactly what `up` started."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from deploy.settings import child_env


class StackError(RuntimeError):
    """A one-line, user-facing reason why a service could not be started or reached."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


#: where :func:`free_port` looks: below the kernel's ephemeral range (32768 up on Linux), so that no outgoing
#: connection takes the port between the check and the server's bind (a port the kernel picks for ``bind(0)``
#: is ephemeral, and Kafka formats its storage for seconds before it binds); apart from the Redis Cluster's ports
SERVER_PORTS = range(5000, 12000)
_handed_out: set[int] = set()


def poll_until(check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    """True once ``check()`` is, polling every ``every_s``; False after ``timeout_s``.

    >>> poll_until(lambda: True, 0.0)
    True
    """
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


def free_port() -> int:
    """A port that is free now and that this process has not handed out before (for tests and side-by-side
    stacks), from :data:`SERVER_PORTS`, starting at a random place.

    >>> free_port() in SERVER_PORTS
    True
    """
    start = random.randrange(len(SERVER_PORTS))
    for i in range(len(SERVER_PORTS)):
        port = SERVER_PORTS[(start + i) % len(SERVER_PORTS)]
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    raise StackError(f"no free port left in {SERVER_PORTS.start}-{SERVER_PORTS.stop - 1}")


class ManagedProcess:
    """One server started in its own session, logging to ``<dir>/<name>.log``.

    The pid file ``<dir>/<name>.pid`` is the only record of ownership: :meth:`stop` signals
    that pid only while its working directory is still ``workdir`` (unique to this stack),
    so a recycled pid of someone else's process is never touched.
    """

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.marker = str(workdir.absolute())
        self.pid_file = workdir / f"{name}.pid"
        self.log_file = workdir / f"{name}.log"
        #: where this start's lines begin in the log (which earlier starts appended to); 0 before a start
        self.log_start = 0

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Launch ``argv`` in the background unless this process already runs."""
        if self.pid() is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.log_start = log.tell()
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**child_env(), **(env or {})},  # no secret: a server's credentials are in its config file
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))

    def pid(self) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1]
        except OSError:
            cwd, state = "", "Z"
        if state == "Z" or cwd != self.marker:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def wait_ready(self, check: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``check`` until it is true; raise :class:`StackError` naming the log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(f"{self.name} exited during start-up ({self.last_error()}); see {self.log_file}")
            if check():
                return
            time.sleep(0.25)
        raise StackError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_file}")

    def last_error(self, limit: int = 300) -> str:
        """The last line this start logged that reports an error (else its last line), cut to ``limit``
        characters: the reason a server exited, kept in the message where a log is gone once a CI run
        ends. Lines of earlier starts are not read: a stopped server's shutdown lines are no reason."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self.log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return "no log"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if any(w in line for w in ("ERROR", "FATAL", "Exception", "rror:"))]
        return ((errors or lines or ["empty log"])[-1])[:limit]

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``; True when something was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True


    def kill(self) -> bool:
        """SIGKILL at once (the crash the fault tests inject: no shutdown, no flush); True when something was killed."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid):  # its children too (Redis' rewrite child holds the listening socket)
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` has not exited (zombies count as exited)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(") ", 1)[-1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` that have not exited (zombies count as exited), from /proc:
    those of every thread (a supervisor may start its workers from threads of its own)."""
    listed = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            listed += (task / "children").read_text().split()
        except OSError:  # the thread, or pid, is gone
            continue
    return [child for child in map(int, listed) if _alive(child)]


def _alive(pid: int) -> bool:
    """True until ``pid`` has exited (a zombie counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1] != "Z"
    except OSError:
        return False
