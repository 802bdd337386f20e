"""The ceiling Faust's stream sets on the streams worker: a bare agent that takes the worker's
input topics in the worker's batches (``stream.take_events``, the same size, wait and fetch
size) and does nothing with them.

    python bench/faust_ceiling.py --prefix bench123456. --records 36000   # run by bench/streams.py

Reads ``<prefix>ranking`` and ``<prefix>exposure`` from the beginning (a fresh consumer group)
until ``--records`` records, then prints one JSON line: {"faust_events_per_s",
"faust_cpu_us_per_event"} (records/s from its first batch to the last; the process's CPU time
over the same span, all threads). ``--stepped-drain``: with the worker's hand-over from Faust's
consumer to its streams (:mod:`streams.worker.drain`) instead of Faust's own. ``--transport confluent``:
Faust's librdkafka transport instead of aiokafka (it needs the ``confluent-kafka`` package, which the project
does not install; on 2026-12-07 it consumed nothing: ``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.settings import Settings  # noqa: E402
from streams.worker import drain  # noqa: E402
from streams.worker.app import BATCH_RECORDS, BATCH_WITHIN_S, FETCH_BYTES  # noqa: E402
from streams.worker.process import make_worker_class  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True, help="topic prefix of the records to read")
    parser.add_argument("--records", type=int, required=True, help="stop after this many")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--transport", choices=("kafka", "confluent"), default="kafka",
                        help="Faust's transport: aiokafka (the worker's) or librdkafka (`confluent://`, needs the "
                             "confluent-kafka package)")
    parser.add_argument("--stepped-drain", action="store_true",
                        help="the worker's hand-over from the consumer to the streams (streams/worker/drain.py)")
    args = parser.parse_args()
    if args.stepped_drain:
        drain.install()
    s = Settings.load()
    datadir = tempfile.mkdtemp(prefix="hap-faust-ceiling-")  # Faust's own state: removed at the end
    app = faust.App(f"hap-faust-ceiling-{uuid.uuid4().hex[:8]}", broker=f"{args.transport}://{s.kafka_bootstrap}",
                    store="memory://", web_enabled=False, consumer_auto_offset_reset="earliest", datadir=datadir,
                    consumer_max_fetch_size=FETCH_BYTES)
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": args.partitions}
    inputs = app.topic(f"{args.prefix}ranking", f"{args.prefix}exposure", **raw)

    @app.agent(inputs)
    async def take(stream: faust.StreamT) -> None:
        taken, started = 0, None
        async for events in stream.take_events(BATCH_RECORDS, within=BATCH_WITHIN_S):
            if started is None:  # from the first batch on, as the worker's rate
                started, cpu, first = time.monotonic(), time.process_time(), len(events)
            taken += len(events)
            if taken >= args.records:
                n = taken - first
                out = {"faust_events_per_s": round(n / (time.monotonic() - started), 1),
                       "faust_cpu_us_per_event": round(1e6 * (time.process_time() - cpu) / n, 1)}
                os.write(1, (json.dumps(out) + "\n").encode())  # the worker redirects sys.stdout to its log
                shutil.rmtree(datadir, ignore_errors=True)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker"]
    make_worker_class()(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
