"""Helpers of the deploy tests: the `hap` CLI as a user runs it, on a stack of its own."""

import os
import subprocess
import sys

import pytest

from deploy.stack.process import free_port


def hap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAP_") or k == "HAP_CACHE_DIR"}
    env["HAP_DATA_DIR"] = str(tmp_path / "stack")
    for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "REDIS_PORT", "PROMETHEUS_PORT"):
        env[f"HAP_{name}"] = str(free_port())
    return env


def pids(data_dir: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,stat="], capture_output=True, text=True).stdout.split("\n")
    alive = {int(p) for p, s in (line.split() for line in out if line.strip()) if not s.startswith("Z")}
    return [pid for pid in alive if os.path.exists(f"/proc/{pid}") and _cwd(pid).startswith(data_dir)]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
