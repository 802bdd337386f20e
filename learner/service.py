"""`hap learner`: consume ``hap.samples`` in micro-batches, train both tiers, checkpoint, publish.

Lifecycle and guarantees:

- the consumer is assigned every partition of the samples topic and seeks to the offsets
  stored in the checkpoint (the checkpoint, not Kafka, is the source of truth);
- each micro-batch is de-duplicated by ``group_id`` (ids seen are kept in the checkpoint),
  scored (progressive validation), then trained on;
- every ``checkpoint_s`` the weights, optimizers, offsets and seen ids are written together,
  and only then are the offsets committed to Kafka (for lag monitoring): after SIGKILL the
  learner resumes from its checkpoint, so nothing is lost and nothing is trained twice;
- every ``publish_s`` (or ``publish_steps``) both tiers are published as one version. A
  version published after the last checkpoint may be superseded after a crash by versions
  retrained from that checkpoint; every version is still self-consistent;
- while Redis is down, training goes on and publishing is retried every ``publish_s`` (the
  first version after an outage is full, never a delta against what Redis may have lost);
  while Kafka is down, polling waits and offset commits are skipped (the checkpoint holds them).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from feature_store.connection import RedisEndpoint
from feature_store.model_store import ModelStore, TierForm
from learner import checkpoint
from learner import metrics as m
from learner.trainer import OnlineTrainer, StepReport
from streams.kafka_security import KafkaSecurity
from streams.schemas import InvalidEvent, SampleGroup, decode_sample_group

log = logging.getLogger("hap.learner")
SEEN_IDS = 200_000
FRESH_SAMPLE = 32


@dataclasses.dataclass(frozen=True, slots=True)
class LearnerConfig:
    bootstrap: str
    redis: RedisEndpoint
    samples_topic: str = "hap.samples"
    checkpoint_path: Path = Path(".hap/learner/checkpoint.safetensors")
    batch_groups: int = 32
    publish_s: float = 1.0
    publish_steps: int = 50
    checkpoint_s: float = 10.0
    keep_versions: int = 5
    model_prefix: str = "hap:"
    kafka_security: KafkaSecurity = KafkaSecurity()


class LearnerService:
    """The online learning loop; :meth:`run` until :meth:`stop` (never restarted after stop)."""

    def __init__(self, cfg: LearnerConfig, trainer: OnlineTrainer) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.store = ModelStore(cfg.redis.client(), prefix=cfg.model_prefix,
                                keep_versions=cfg.keep_versions)
        state = checkpoint.load(cfg.checkpoint_path, trainer) or {}
        self.offsets: dict[int, int] = {int(p): o for p, o in state.get("offsets", {}).items()}
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict.fromkeys(state.get("seen", []))
        self.trained_until_event = state.get("trained_until_event", 0)
        self.trained_until_finalized = state.get("trained_until_finalized", 0)
        self.fresh: list[tuple[int, int]] = []  # (finalized, event) ms of groups trained since the last publish
        self.duplicates = 0
        self.running = True
        self.consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False,
                                      group_id="hap-learner", max_partition_fetch_bytes=8 << 20,
                                      **cfg.kafka_security.client_options())
        partitions = self.consumer.partitions_for_topic(cfg.samples_topic) or set()
        deadline = time.monotonic() + 30
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.5)
            partitions = self.consumer.partitions_for_topic(cfg.samples_topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {cfg.samples_topic} does not exist at {cfg.bootstrap}")
        self.tps = [TopicPartition(cfg.samples_topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        for tp in self.tps:
            if tp.partition in self.offsets:
                self.consumer.seek(tp, self.offsets[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)
        self.versions = 0

    def stop(self) -> None:
        self.running = False

    def run(self, max_idle_s: float | None = None) -> None:
        """Train until stopped (or until no sample arrived for ``max_idle_s``)."""
        last_publish = last_checkpoint = last_data = time.monotonic()
        steps_at_publish = self.trainer.steps
        pending: list[SampleGroup] = []
        while self.running:
            polled = self.consumer.poll(timeout_ms=100, max_records=self.cfg.batch_groups)
            for tp, records in polled.items():
                for record in records:
                    self.offsets[tp.partition] = record.offset + 1
                    group = self._decode(record.value)
                    if group is not None:
                        pending.append(group)
            now = time.monotonic()
            if polled:
                last_data = now
            if pending and (len(pending) >= self.cfg.batch_groups or not polled):
                self._train(pending)
                pending = []
            due = now - last_publish >= self.cfg.publish_s or \
                self.trainer.steps - steps_at_publish >= self.cfg.publish_steps
            if due and self.trainer.steps > steps_at_publish and not pending:
                if self.try_publish():
                    steps_at_publish = self.trainer.steps
                last_publish = now
            if now - last_checkpoint >= self.cfg.checkpoint_s and not pending:
                self.checkpoint()
                last_checkpoint = now
            if max_idle_s is not None and now - last_data > max_idle_s and not pending:
                break
        if self.trainer.steps > steps_at_publish:
            self.try_publish()
        self.checkpoint()
        self.consumer.close()

    def _decode(self, raw: bytes) -> SampleGroup | None:
        try:
            group = decode_sample_group(raw)
        except InvalidEvent as exc:
            m.INVALID.inc()
            log.warning("rejected sample group: %s", exc.reason)
            return None
        if group.group_id in self.seen:
            self.duplicates += 1
            m.DUPLICATES.inc()
            return None
        self.seen[group.group_id] = None
        while len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        return group

    def _train(self, groups: list[SampleGroup]) -> None:
        report = self.trainer.step(groups)
        now_ms = time.time() * 1000
        self.trained_until_event = max(self.trained_until_event, max(g.event_ts_ms for g in groups))
        self.trained_until_finalized = max(self.trained_until_finalized, max(g.assembled_ts_ms for g in groups))
        self.fresh += [(g.assembled_ts_ms, g.event_ts_ms) for g in groups]
        for g in groups:
            m.SAMPLE_TO_TRAINED.observe(max(0.0, (now_ms - g.assembled_ts_ms) / 1000))
        _observe(report)

    def try_publish(self) -> bool:
        """:meth:`publish`, or log and count a failure while Redis is unreachable."""
        try:
            self.publish()
            return True
        except (redis.RedisError, OSError) as exc:
            m.PUBLISH_ERRORS.inc()
            log.warning("publish failed, retrying in %.1fs: %s", self.cfg.publish_s, exc)
            return False

    def publish(self) -> int:
        started = time.perf_counter()
        touched = self.trainer.take_touched()
        tiers = {}
        for name, tier in self.trainer.tiers().items():
            tensors, spec = tier.export()
            tiers[name] = TierForm(tensors, spec, touched[name])
        fresh = sorted(self.fresh)
        picks = np.linspace(0, len(fresh) - 1, min(FRESH_SAMPLE, len(fresh))).astype(int) if fresh else []
        quality = {n: q.report() for n, q in self.trainer.metrics.items()}
        version = self.store.publish(
            tiers, trained_until_event_ts_ms=int(self.trained_until_event),
            trained_until_finalized_ts_ms=int(self.trained_until_finalized), samples_seen=self.trainer.samples_seen,
            metrics={"quality": quality, "steps": self.trainer.steps, "method": self.trainer.method,
                     "finalized_sample_ms": [fresh[i][0] for i in picks],
                     "event_sample_ms": [fresh[i][1] for i in picks], "duplicates": self.duplicates},
        )
        self.fresh = []
        self.versions += 1
        elapsed = time.perf_counter() - started
        m.PUBLISH_SECONDS.observe(elapsed)
        m.PUBLISH_BYTES.set(self.store.last_publish_bytes)
        m.VERSION.set(version)
        m.TRAINED_UNTIL_LAG.set(max(0.0, time.time() - self.trained_until_event / 1000))
        m.TRAINED_TO_PUBLISHED.observe(max(0.0, time.time() - self.trained_until_finalized / 1000))
        return version

    def checkpoint(self) -> None:
        """Write the checkpoint, then commit the same offsets to Kafka."""
        state: dict[str, Any] = {
            "offsets": {str(p): o for p, o in self.offsets.items()}, "seen": list(self.seen),
            "trained_until_event": self.trained_until_event,
            "trained_until_finalized": self.trained_until_finalized,
        }
        checkpoint.save(self.cfg.checkpoint_path, self.trainer, state)
        from kafka.structs import OffsetAndMetadata

        commit = {TopicPartition(self.cfg.samples_topic, p): OffsetAndMetadata(o, "", -1)
                  for p, o in self.offsets.items()}
        if commit:
            try:
                self.consumer.commit(commit)
            except KafkaError as exc:  # the checkpoint has the offsets; Kafka's copy is for lag monitoring
                log.warning("offset commit skipped: %s", exc)


def _observe(report: StepReport) -> None:
    m.STEPS.inc()
    m.SAMPLES.inc(report.samples)
    for path, value in report.losses.items():
        m.LOSS.labels(path).set(value)
    for path, value in report.grad_norms.items():
        m.GRAD_NORM.labels(path).set(value)
    if report.grad_cosine is not None:
        m.GRAD_COSINE.set(report.grad_cosine)
    m.HARD_SHARE.set(report.hard_share)
