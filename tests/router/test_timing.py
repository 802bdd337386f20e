"""Where a request's time goes: each stage in the stage metric, and with ``server_timing`` in a
``Server-Timing`` header, with the request thread's CPU, the other threads' and the collector's."""

import asyncio
import gc
import threading
import time

from router import metrics
from router.timing import GC, STAGES, RequestTiming, parse_server_timing

from .conftest import body, publish, serve


def stage_counts() -> dict[str, float]:
    return {s.labels["stage"]: s.value for family in metrics.STAGE_SECONDS.collect() for s in family.samples
            if s.name.endswith("_count")}


def test_each_answer_names_its_stages_and_cpu_and_every_stage_is_observed(redis_client):
    publish(redis_client, 1)

    async def go(server_timing: bool):
        async with serve(redis_client, server_timing=server_timing) as http:
            resp = await http.post("/v1/prerank", json=body(200))
            return resp.status, resp.headers.get("Server-Timing")

    before = stage_counts()
    status, header = asyncio.run(go(True))
    assert status == 200
    timing = parse_server_timing(header)
    assert list(timing) == [*STAGES, *(f"{stage}-cpu" for stage in STAGES), "cpu", "others", "gc", "total"]
    assert all(value >= 0 for value in timing.values())
    assert sum(timing[stage] for stage in STAGES) <= timing["total"] + 0.01 and timing["cpu"] > 0
    assert sum(timing[f"{stage}-cpu"] for stage in STAGES) <= timing["cpu"] + 0.01
    assert {stage: n - before.get(stage, 0) for stage, n in stage_counts().items()} == dict.fromkeys(STAGES, 1)
    status, header = asyncio.run(go(False))  # off by default: the answer carries no timings
    assert status == 200 and header is None


def test_the_span_tells_a_background_threads_cpu_and_a_collection_from_its_own():
    GC.install()
    try:
        collected = RequestTiming()
        gc.collect()
        collected = parse_server_timing(collected.header())
        timing = RequestTiming()
        done = threading.Event()

        def spin():  # another thread's CPU while the request thread waits (as a refresh's parse would be)
            until = time.thread_time() + 0.03
            while time.thread_time() < until:
                pass
            done.set()

        threading.Thread(target=spin).start()
        done.wait(5)
        spun = parse_server_timing(timing.header())
    finally:
        GC.uninstall()
    assert collected["gc"] > 0
    assert spun["others"] >= 25 and spun["cpu"] < 10
    assert GC not in gc.callbacks


def test_the_collector_clock_stays_while_any_app_runs():
    GC.install()
    GC.install()  # two apps in one process
    GC.uninstall()
    assert GC in gc.callbacks
    GC.uninstall()
    assert GC not in gc.callbacks
