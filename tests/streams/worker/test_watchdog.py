"""The watchdog notices a stall; the supervisor restarts a worker that exits for any reason, with
backoff, counts the exits by reason, and stops only when told to."""

import subprocess
import sys
import textwrap
import time

from streams.worker.watchdog import Watchdog

# the n-th worker (``--restarts n``) stalls, crashes, is killed, exits 0, then asks the supervisor to stop
WORKER = textwrap.dedent("""
    import os, signal, sys, time
    assert sys.argv[2::2] == ["--restarts", "--exits"], sys.argv
    n, exits = int(sys.argv[3]), sys.argv[5]
    with open(sys.argv[1], "a") as log:
        log.write(f"{n} {exits or '-'} {time.monotonic()}\\n")
    if n == 0:
        sys.exit(3)
    if n == 1:
        sys.exit(1)
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if n == 3:
        sys.exit(0)
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(30)
""")
SUPERVISOR = textwrap.dedent("""
    import sys
    from streams.worker.watchdog import RestartPolicy, supervise
    code = supervise([[sys.executable, "-c", sys.argv[1], sys.argv[2]]], RestartPolicy(initial_s=0.2, max_s=0.4))
    print("returned", code)
""")


def test_watchdog_stalls_without_beats():
    dog = Watchdog(stall_s=0.05)
    assert not dog.stalled()
    time.sleep(0.1)
    assert dog.stalled()
    dog.beat()
    assert not dog.stalled()


def test_supervisor_restarts_after_any_exit_with_backoff_and_counts_them(tmp_path):
    log = tmp_path / "starts.log"
    out = subprocess.run([sys.executable, "-c", SUPERVISOR, WORKER, str(log)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "returned -15"  # SIGTERM reached the worker and ended the supervision
    starts = [line.split() for line in log.read_text().splitlines()]
    assert [(int(n), exits) for n, exits, _ in starts] == [
        (0, "-"), (1, "stalled=1"), (2, "stalled=1,crashed=1"), (3, "stalled=1,crashed=1,killed=1"),
        (4, "stalled=1,crashed=1,killed=1,exited=1"),
    ]
    gaps = [float(b[2]) - float(a[2]) for a, b in zip(starts, starts[1:], strict=False)]
    assert [round(g, 1) >= d for g, d in zip(gaps, (0.2, 0.4, 0.4, 0.4), strict=True)] == [True] * 4  # backoff
    assert "restart 4 (stalled=1,crashed=1,killed=1,exited=1)" in out.stderr  # the counted log line


# each worker writes its argv and waits; the supervisor of two is then stopped with SIGTERM
WAITER = textwrap.dedent("""
    import sys, time
    with open(sys.argv[1], "a") as log:
        log.write(" ".join(sys.argv[2:]) + "\\n")
    time.sleep(30)
""")
MANY = textwrap.dedent("""
    import sys
    from streams.worker.watchdog import supervise
    print("returned", supervise([[sys.executable, "-c", sys.argv[1], sys.argv[2], "--worker-id", f"w-{n}"]
                                 for n in range(2)]))
""")


def test_a_supervisor_of_two_runs_both_and_stops_both(tmp_path):
    log = tmp_path / "starts.log"
    proc = subprocess.Popen([sys.executable, "-c", MANY, WAITER, str(log)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert sorted(log.read_text().splitlines()) == [
        "--worker-id w-0 --restarts 0 --exits ", "--worker-id w-1 --restarts 0 --exits "]
    assert out.strip() == "returned -15"  # both stopped by the signal; none restarted


def test_a_worker_exports_the_supervisors_counts_as_counters(tmp_path):
    """A replacement worker (``--restarts 3 --exits ...``) exports them as counters: Prometheus sees them grow from
    the previous worker's values (the supervisor's counts), so increase() counts restarts across processes."""
    from prometheus_client import REGISTRY

    from feature_store.connection import RedisEndpoint
    from streams.worker.app import StreamsConfig, StreamsWorker

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("hap_streams_worker_restarts_total"), value("hap_streams_worker_exits_total", reason="crashed")
    cfg = StreamsConfig(bootstrap="127.0.0.1:1", redis=RedisEndpoint("redis://127.0.0.1:1"), redis_prefix="t:",
                        topic_prefix="t.", partitions=1, data_dir=tmp_path)
    StreamsWorker(cfg, restarts=3, exits={"crashed": 2, "stalled": 1})
    after = value("hap_streams_worker_restarts_total"), value("hap_streams_worker_exits_total", reason="crashed")
    assert (after[0] - before[0], after[1] - before[1]) == (3, 2)
