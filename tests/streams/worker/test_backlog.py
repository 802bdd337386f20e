"""A worker started on a backlog works it off without taking the wait for a stall.

aiokafka hands out a partition's fetched records only once every partition fetched before it is
drained (up to 8 MiB each), so on a backlog the ranking partitions wait seconds behind the
exposures'. Before the worker counted records waiting in its consumer as not idle, this backlog
made it exit after 4 s (``input partitions behind and not fetched for 4s: ...ranking[0],
...ranking[1], ...``: two runs of two), to be restarted on the same backlog."""

import time

from deploy.pipeline import Component
from deploy.scrape import scrape
from streams.contract.schemas import decode_sample_group

from ...conftest import read_topic, simulate, truth


def test_a_worker_started_on_a_backlog_works_it_off_without_exiting_stalled(stack_env, kafka_bootstrap, tmp_path):
    simulate(stack_env, tmp_path, "--requests", "2000", "--rate", "0", "--candidates", "500", "--items", "5000",
             "--feedback-delay", "0.2", "--truth", str(tmp_path / "truth.jsonl"))
    expected = set(truth(tmp_path / "truth.jsonl"))
    url = f"http://127.0.0.1:{stack_env['HAP_STREAMS_METRICS_PORT']}/metrics"
    worker = Component("streams", ["streams", "--window", "1", "--lateness", "0.5", "--stall-timeout", "4"],
                       tmp_path, stack_env).start()
    try:
        worker.wait_http(url)
        deadline = time.monotonic() + 150
        while True:
            groups = {decode_sample_group(v).request_id for v in read_topic(
                kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"] + "samples", 10**6, timeout_s=3)}
            if groups >= expected or time.monotonic() > deadline:
                break
        restarts = scrape(url).total("hap_streams_worker_restarts_total")
    finally:
        worker.stop()
    log = worker.log_file.read_text(errors="replace")
    assert "exiting to be replaced" not in log and restarts == 0, worker.log_tail(40)
    assert groups >= expected, f"{len(expected - groups)} requests without a group\n{worker.log_tail(40)}"
