"""A rollout drops no request: a real `hap router` process taken through SIGTERM while clients keep
sending. Readiness flips to 503 while requests are still served; a balancer that follows readiness
takes the replica out; a request whose upload is still in flight when the port closes is answered;
the process then exits on its own. Not one request is refused or failed."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import orjson

from deploy.stack.process import free_port

from .conftest import body, publish

DRAIN_S = 3.0


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the router exited during start-up"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the router never became ready")


def _slow_upload(port: int, payload: bytes) -> socket.socket:
    """A connection that has sent the headers and half of a pre-ranking body: a request in flight."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST /v1/prerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    sock.sendall(head + payload[: len(payload) // 2])
    return sock


def test_sigterm_drains_without_a_refused_or_failed_request(redis_client, redis_url, tmp_path):
    version = publish(redis_client, 1)
    port = free_port()
    env = {**os.environ, "HAP_REDIS_URL": redis_url, "HAP_DATA_DIR": str(tmp_path)}
    code = "import sys; from deploy.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "router", "--port", str(port), "--drain", str(DRAIN_S)],
                            env=env)
    try:
        _wait_ready(port, proc)
        in_rotation = threading.Event()
        in_rotation.set()
        results: list[tuple[str, object]] = []  # (client, status or the exception)
        readiness: list[int] = []
        payload = orjson.dumps(body(30))

        def balancer() -> None:  # what a load balancer / the endpoints controller does with /readyz
            while in_rotation.is_set():
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/readyz")
                    readiness.append(conn.getresponse().status)
                except OSError:
                    readiness.append(0)
                if readiness[-1] != 200:
                    in_rotation.clear()
                time.sleep(0.1)

        def client(keep_alive: bool) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while in_rotation.is_set():
                try:
                    if not keep_alive:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("POST", "/v1/prerank", payload, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    header = resp.getheader("X-Model-Version")
                    results.append(("keep-alive" if keep_alive else "new", (resp.status, header)))
                except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                    results.append(("keep-alive" if keep_alive else "new", exc))
                time.sleep(0.01)

        threads = [threading.Thread(target=balancer), threading.Thread(target=client, args=(True,)),
                   threading.Thread(target=client, args=(False,)), threading.Thread(target=client, args=(False,))]
        for t in threads:
            t.start()
        time.sleep(1.0)
        in_flight = _slow_upload(port, payload)
        sent = len(results)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for t in threads:
            t.join(DRAIN_S + 30)
        assert not in_rotation.is_set() and readiness[-1] == 503  # out of rotation by readiness, not by refusal
        assert time.monotonic() - signalled < DRAIN_S  # readiness flipped during the drain
        # the port closes after the drain; the request in flight is still answered
        deadline = time.monotonic() + DRAIN_S + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.1)
            except OSError:
                break
        else:
            raise AssertionError("the port stayed open past the drain")
        assert time.monotonic() - signalled >= DRAIN_S - 0.5
        in_flight.sendall(payload[len(payload) // 2:])
        answer = in_flight.makefile("rb").readline()
        in_flight.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    failed = [(who, r) for who, r in results if r != (200, str(version))]
    assert not failed, failed[:5]
    assert len(results) > sent > 10  # requests before and during the drain, all answered by the served version
