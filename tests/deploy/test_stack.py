"""`hap stack up|status|down` as a user runs it: real processes, nothing left behind."""

import json
import os

from .conftest import hap, pids


def test_up_status_down_leaves_nothing(cli_env):
    assert hap(cli_env, "stack", "up").returncode == 0
    status = json.loads(hap(cli_env, "stack", "status", "--json").stdout)
    assert status["kafka"]["healthy"] and status["redis"]["healthy"] and status["prometheus"]["healthy"]
    assert status["kafka"]["bootstrap"] == f"127.0.0.1:{cli_env['HAP_KAFKA_PORT']}"
    assert status["redis"]["url"] == f"redis://127.0.0.1:{cli_env['HAP_REDIS_PORT']}/0"
    assert status["prometheus"]["url"] == f"http://127.0.0.1:{cli_env['HAP_PROMETHEUS_PORT']}"
    assert all(status[name][f"{name}.{key}"] == status[name][key]  # the dotted keys, kept one release
               for name, key in (("kafka", "bootstrap"), ("redis", "url"), ("prometheus", "url")))
    assert len(pids(cli_env["HAP_DATA_DIR"])) == 3
    down = hap(cli_env, "stack", "down")
    assert "prometheus, redis, kafka" in down.stdout
    assert pids(cli_env["HAP_DATA_DIR"]) == []


def test_status_reports_a_dead_service(cli_env):
    assert hap(cli_env, "stack", "up", "--no-prometheus").returncode == 0
    redis_pid = int(open(os.path.join(cli_env["HAP_DATA_DIR"], "redis", "redis.pid")).read())
    os.kill(redis_pid, 9)
    status = hap(cli_env, "stack", "status", "--json", "--no-prometheus")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert report["redis"]["healthy"] is False and report["kafka"]["healthy"] is True
    hap(cli_env, "stack", "down", "--no-prometheus")
    assert pids(cli_env["HAP_DATA_DIR"]) == []


def test_taken_port_is_a_one_line_error(cli_env):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(cli_env["HAP_REDIS_PORT"])))
        sock.listen()
        cli_env["HAP_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"  # external: only Redis would start
        out = hap(cli_env, "stack", "up", "--no-prometheus")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"hap: port {cli_env['HAP_REDIS_PORT']} for redis is taken; set HAP_REDIS_PORT to a free port"
    )


def _listening(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (from /proc/net/tcp)."""
    out = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            out.add(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_servers_bind_the_metrics_host(cli_env, tmp_path):
    """HAP_METRICS_HOST moves the streams, learner and router servers off loopback (HAP_ROUTER_HOST the
    router alone); they bind before they reach Kafka or Redis, which are absent here."""
    import subprocess
    import sys
    import time

    from deploy.stack.process import free_port

    cli_env.update(HAP_KAFKA_BOOTSTRAP="127.0.0.1:1", HAP_REDIS_URL="redis://127.0.0.1:1/0")
    cases = []  # (port, expected address, process)
    for host, router_host in ((None, None), ("0.0.0.0", None), ("0.0.0.0", "127.0.0.1")):
        env = {**cli_env, "HAP_DATA_DIR": str(tmp_path / f"d{len(cases)}")}
        if host:
            env["HAP_METRICS_HOST"] = host
        if router_host:
            env["HAP_ROUTER_HOST"] = router_host
        commands = {"router": ("router", "--port"), "learner": ("learner", "--metrics-port"),
                    "streams": ("streams", "--metrics-port")} if router_host is None else {
                    "router": ("router", "--port")}
        for name, (command, flag) in commands.items():
            port = free_port()
            expected = router_host if (router_host and name == "router") else (host or "127.0.0.1")
            proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", command, flag, str(port)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            cases.append((port, expected, proc))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(_listening(port) for port, _, _ in cases):
            time.sleep(0.5)
        assert [_listening(port) for port, _, _ in cases] == [{expected} for _, expected, _ in cases]
    finally:
        for _, _, proc in cases:
            os.killpg(proc.pid, 9)
            proc.wait(10)
