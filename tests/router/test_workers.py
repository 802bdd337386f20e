"""`hap router --workers 2`: two processes on one port, each serving on its own; /metrics counts both;
SIGTERM stops them all."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import orjson

from deploy.stack.process import children, free_port

from .conftest import body, publish


def test_two_workers_share_the_port_and_their_metrics(redis_client, redis_url, tmp_path):
    publish(redis_client, 1)
    port = free_port()
    env = {**os.environ, "HAP_REDIS_URL": redis_url, "HAP_DATA_DIR": str(tmp_path)}
    code = "import sys; from deploy.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "router", "--workers", "2", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while time.monotonic() < deadline and ready < 20:  # 20 answers in a row: both workers are up
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                    ready = ready + 1 if resp.status == 200 else 0
            except OSError:
                ready = 0
                time.sleep(0.2)
        workers = children(proc.pid)
        assert len(workers) == 2
        statuses = []
        for n in range(40):  # one connection each: the kernel spreads them over the workers
            request = urllib.request.Request(f"{url}/v1/prerank", data=orjson.dumps(body(30, request_id=f"r{n}")),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                statuses.append(resp.status)
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        count = sum(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("hap_router_candidates_count"))
        assert statuses == [200] * 40
        assert count == 40  # both workers' requests, whichever answered the scrape
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    time.sleep(0.5)
    assert not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                   for pid in workers)
