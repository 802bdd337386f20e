"""`hap stack up|status|down` as a user runs it: real processes, nothing left behind."""

import json
import os
import subprocess
import sys

import pytest

from deploy.stack.process import free_port


def hap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture
def stack_env(tmp_path) -> dict[str, str]:
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


def test_up_status_down_leaves_nothing(stack_env):
    assert hap(stack_env, "stack", "up").returncode == 0
    status = json.loads(hap(stack_env, "stack", "status", "--json").stdout)
    assert status["kafka"]["healthy"] and status["redis"]["healthy"] and status["prometheus"]["healthy"]
    assert status["kafka"]["kafka.bootstrap"] == f"127.0.0.1:{stack_env['HAP_KAFKA_PORT']}"
    assert len(pids(stack_env["HAP_DATA_DIR"])) == 3
    down = hap(stack_env, "stack", "down")
    assert "prometheus, redis, kafka" in down.stdout
    assert pids(stack_env["HAP_DATA_DIR"]) == []


def test_status_reports_a_dead_service(stack_env):
    assert hap(stack_env, "stack", "up", "--no-prometheus").returncode == 0
    redis_pid = int(open(os.path.join(stack_env["HAP_DATA_DIR"], "redis", "redis.pid")).read())
    os.kill(redis_pid, 9)
    status = hap(stack_env, "stack", "status", "--json", "--no-prometheus")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert report["redis"]["healthy"] is False and report["kafka"]["healthy"] is True
    hap(stack_env, "stack", "down", "--no-prometheus")
    assert pids(stack_env["HAP_DATA_DIR"]) == []


def test_taken_port_is_a_one_line_error(stack_env):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(stack_env["HAP_REDIS_PORT"])))
        sock.listen()
        stack_env["HAP_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"  # external: only Redis would start
        out = hap(stack_env, "stack", "up", "--no-prometheus")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"hap: port {stack_env['HAP_REDIS_PORT']} for redis is taken; set HAP_REDIS_PORT to a free port"
    )
