"""Events from a Java producer (the `kafka-clients` jar the setup downloads), compressed with each
codec Kafka has, become the right sample groups; a worker that cannot decode a codec dead-letters
those batches and goes on, and a fresh worker does not trip over them again."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from deploy.pipeline import Component
from deploy.settings import Settings
from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent, SampleGroup, decode_sample_group, encode

from ...conftest import read_topic

CODECS = ("gzip", "snappy", "lz4", "zstd")
WORKER = ["streams", "--window", "1", "--lateness", "0.5"]
JAVA_SOURCE = Path(__file__).parent / "java" / "HapProducer.java"
CLIENT_JARS = ("kafka-clients-", "lz4-java-", "snappy-java-", "zstd-jni-", "slf4j-api-")
N_CANDIDATES = 260

Producer = Callable[[str, list[tuple[str, str, str, bytes]]], None]


@pytest.fixture(scope="session")
def java_producer(tmp_path_factory: pytest.TempPathFactory) -> Producer:
    """``send(bootstrap, [(codec, topic, key, value)])`` through a Java producer compiled here."""
    javac, java = shutil.which("javac"), shutil.which("java")
    if not javac or not java:
        pytest.skip("javac/java not found: a JDK 17+ is needed to compile the Java producer")
    libs = Settings.load().kafka_libs
    jars = [next(iter(sorted(libs.glob(f"{prefix}*.jar"))), None) for prefix in CLIENT_JARS]
    if not all(jars):
        pytest.skip(f"kafka-clients and its codec jars not found in {libs}: run `make setup` (or set HAP_KAFKA_HOME)")
    classpath = ":".join(str(j) for j in jars)
    out = tmp_path_factory.mktemp("java")
    subprocess.run([javac, "-cp", classpath, "-d", str(out), str(JAVA_SOURCE)], check=True, timeout=180)

    def send(bootstrap: str, records: list[tuple[str, str, str, bytes]]) -> None:
        lines = "".join(f"{codec}\t{topic}\t{key}\t{value.decode()}\n" for codec, topic, key, value in records)
        done = subprocess.run([java, "-cp", f"{out}:{classpath}", "HapProducer", bootstrap], input=lines,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    return send


def request(rid: str, ts_ms: int) -> tuple[RankingEvent, list[ExposureEvent], dict[str, int]]:
    """A request of ``N_CANDIDATES``, three of them exposed: one clicked, one dwelled on long enough, one not."""
    candidates = [Candidate(f"{rid}-c{i}", "hot", i, 1.0 - i / 1000, i if i < 230 else None,  # 201..229: rn or prn
                            1.0 - i / 1000 if i < 230 else None, "video") for i in range(N_CANDIDATES)]
    shown = [c.item_id for c in candidates[:3]]
    events = [ExposureEvent(rid, "u1", item, ts_ms + 10, "exposure", position=pos) for pos, item in enumerate(shown)]
    events += [ExposureEvent(rid, "u1", shown[0], ts_ms + 500, "feedback", click=True),
               ExposureEvent(rid, "u1", shown[1], ts_ms + 600, "feedback", dwell_ms=45_000)]
    return RankingEvent(rid, "u1", ts_ms, candidates), events, {shown[0]: 1, shown[1]: 1, shown[2]: 0}


def records(prefix: str, n: int) -> tuple[list[tuple[str, str, str, bytes]], dict[str, dict[str, int]]]:
    """``n`` requests' events in each codec for the Java producer, and each request's expected labels."""
    out, expected, now = [], {}, int(time.time() * 1000)
    for codec in CODECS:
        for k in range(n):
            ranking, events, labels = request(f"{codec}-{k}", now)
            out.append((codec, f"{prefix}ranking", ranking.request_id, encode(ranking)))
            out += [(codec, f"{prefix}exposure", e.request_id, encode(e)) for e in events]
            expected[ranking.request_id] = labels
    return out, expected


def check(group: SampleGroup, labels: dict[str, int]) -> None:
    assert {i.item_id: i.label for i in group.items if i.source in ("exp_pos", "exp_neg")} == labels
    assert {s: sum(i.source == s for i in group.items) for s in ("rn", "prn", "gn")} == {"rn": 10, "prn": 10, "gn": 6}
    assert len({i.item_id for i in group.items}) == len(group.items)  # one source per item
    own = {f"{group.request_id}-c{i}" for i in range(N_CANDIDATES)}
    assert all(i.item_id not in own for i in group.items if i.source == "gn")


def groups_of(bootstrap: str, prefix: str, n: int, timeout_s: float = 90) -> dict[str, SampleGroup]:
    return {g.request_id: g for g in map(decode_sample_group, read_topic(bootstrap, prefix + "samples", n, timeout_s))}


def test_every_codec_from_a_java_producer_becomes_correct_groups(java_producer, stack_env, kafka_bootstrap, tmp_path):
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    batch, expected = records(prefix, 3)
    java_producer(kafka_bootstrap, batch)
    worker = Component("streams", WORKER, tmp_path, stack_env).start()
    try:
        groups = groups_of(kafka_bootstrap, prefix, len(expected))
        dlq = read_topic(kafka_bootstrap, prefix + "dlq", 1, timeout_s=2)
    finally:
        worker.stop()
    # kafka-python (the learner's and the tools' client) decodes every codec too
    assert len(read_topic(kafka_bootstrap, prefix + "ranking", len(expected), timeout_s=30)) == len(expected)
    assert sorted(groups) == sorted(expected), worker.log_tail()
    for rid, labels in expected.items():
        check(groups[rid], labels)
    assert dlq == []


def test_a_worker_without_a_codec_dead_letters_those_batches_and_goes_on(java_producer, stack_env, kafka_bootstrap,
                                                                         tmp_path):
    """aiokafka decodes snappy, lz4 and zstd with `cramjam`; hidden from the worker, those batches are
    undecodable, as in a virtualenv without the codec libraries."""
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    shadow = tmp_path / "no-codecs"
    shadow.mkdir()
    (shadow / "cramjam.py").write_text("raise ImportError('hidden by the test: no codec library')\n")
    env = {**stack_env, "PYTHONPATH": str(shadow)}
    batch, expected = records(prefix, 2)
    java_producer(kafka_bootstrap, batch)
    worker = Component("streams", WORKER, tmp_path, env).start()
    try:
        groups = groups_of(kafka_bootstrap, prefix, 2)
        dlq = [orjson.loads(v) for v in read_topic(kafka_bootstrap, prefix + "dlq", 100, timeout_s=15)]
        assert worker.alive, worker.log_tail()
        time.sleep(3)  # offsets are committed every second
    finally:
        worker.stop()
    assert sorted(groups) == ["gzip-0", "gzip-1"]
    for rid in groups:
        check(groups[rid], expected[rid])
    assert {d["reason_kind"] for d in dlq} == {"undecodable"}
    assert {d["details"]["codec"] for d in dlq} == {"snappy", "lz4", "zstd"}
    assert all("codec" in d["reason"].lower() for d in dlq), dlq
    covered = sum(d["details"]["last_offset"] - d["details"]["first_offset"] + 1 for d in dlq)
    assert covered == 6 * 2 * 3  # every record of those codecs is covered by a dead letter
    assert all(d["original"] for d in dlq)  # the compressed batch, for a consumer that has the codec

    # a fresh worker (same consumer group, no codec either) starts after the dead batches: nothing new to the DLQ
    java_producer(kafka_bootstrap, [r for r in records(prefix, 3)[0] if r[2] == "gzip-2"])  # a third gzip request
    worker = Component("streams", WORKER, tmp_path, env).start()
    try:
        groups = groups_of(kafka_bootstrap, prefix, 3)
        again = read_topic(kafka_bootstrap, prefix + "dlq", 100, timeout_s=5)
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    assert "gzip-2" in groups
    assert len(again) == len(dlq)
