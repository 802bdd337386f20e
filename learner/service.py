"""`hap learner`: consume ``hap.samples`` in micro-batches, train both tiers, checkpoint, publish.

Lifecycle and guarantees:

- one writer: the learner first takes the model store's writer lease
  (:class:`feature_store.lease.WriterLease`), waiting while another learner holds it (logged,
  ``hap_learner_lease_waiting`` is 1), and only then reads its checkpoint; the lease is renewed
  in the background and released on a graceful stop. Every publish is fenced by the lease's
  term; when another learner has taken the lease over, the learner stops at once, publishing
  and checkpointing nothing more, and :meth:`LearnerService.run` raises :class:`FencedError`
  (``hap learner`` exits 1);
- the consumer is assigned every partition of the samples topic and seeks to the offsets
  stored in the checkpoint (the checkpoint, not Kafka, is the source of truth);
- data-parallel ranks (``trainer.reducer``, ``hap learner --nproc N`` or torchrun): rank ``r`` of
  ``N`` is assigned the partitions ``p`` with ``p mod N = r`` (:mod:`learner.partitions`); the
  ranks run the loop in lockstep (each iteration they add up what they polled; a step when any
  has a group, every rank on its own groups, possibly none; publishing and checkpoints when rank
  0's clocks say so) and take the same step (:mod:`learner.distributed`). Rank 0 alone holds the
  writer lease, reads the checkpoint (every rank starts from its weights and state), publishes and
  writes the checkpoint, whose offsets and seen ids are those of every rank's partitions, gathered
  at the checkpoint (a barrier): one file, renamed into place last, so a checkpoint counts only once
  complete. One rank dying stops every rank (the others' next collective fails); restarted, the
  job resumes from the last checkpoint, with any number of ranks. A step that comes out non-finite
  is undone as below, its groups (every rank's) counted, not retried one by one;
- while :meth:`LearnerService.run` runs, the objects of start-up are frozen out of the cycle
  collector (``gc.freeze``; the process is the learner's);
- records are polled, decoded and validated ahead of the loop by a thread of its own
  (:class:`learner.fetcher.Fetcher`, at most two batches ahead) while the loop trains;
- adaptive batching: each step takes every group already fetched, up to ``batch_groups`` (big
  batches while the learner is behind, one group at a time when it is caught up, so freshness
  stays low under light load; ``hap_learner_batch_groups``); each micro-batch is de-duplicated by
  ``group_id`` (ids seen are kept in the checkpoint), scored (progressive validation), then
  trained on, in the iteration that took it;
- every ``checkpoint_s`` the weights, optimizers, offsets and seen ids are captured together on
  the training loop (a copy) and written durably by a background thread while training goes on;
  only once written are those offsets committed to Kafka (for lag monitoring): after SIGKILL the
  learner resumes from its checkpoint, so nothing is lost and nothing is trained twice;
- every ``publish_s`` (or ``publish_steps``) both tiers are exported on the loop and published as
  one version by another background thread (encoding, the finite check, the Redis writes); one
  publish and one checkpoint are in flight at most, and a due one waits until its predecessor
  finished (nothing queues). A version published after the last checkpoint may be superseded
  after a crash by versions retrained from that checkpoint; every version is still
  self-consistent;
- while a version is pinned (``hap models pin``) nothing is published: each due publish is refused
  before any blob is written (logged once, ``hap_learner_publish_pinned`` names the version), training
  and checkpoints go on, and the first publish after ``hap models unpin`` is a full version;
- ``from_version`` (``hap learner --from-version V``): the weights of the published version V replace
  the checkpoint's (:mod:`learner.resume`) once; the checkpoint records it, so a restart with the same
  flag resumes from the checkpoint;
- while Redis is down, training goes on and publishing is retried every ``publish_s`` (the
  first version after an outage is full, never a delta against what Redis may have lost);
  while Kafka is down, polling waits and offset commits are skipped (the checkpoint holds them);
- a graceful stop (SIGTERM) ends the iteration (the groups taken are trained), waits for the
  writes in flight, publishes and checkpoints, so the offsets and ids it records are only those
  of trained groups (records fetched ahead and not taken are read again after a restart);
- offsets below a partition's log start (retention deleted records the learner never read)
  resume from the earliest retained record; the records lost are counted
  (``hap_learner_retention_lost_total``) and logged, never skipped silently (at start-up from
  the log start, while running from the gap in offsets: the samples topic is neither compacted
  nor written in transactions, so any gap is deleted records);
- a group with a non-finite or absurd feature value (beyond ``MAX_FEATURE``) is rejected as
  invalid; a step whose losses, gradient norms or resulting weights are not finite is undone
  (the state of the last checkpoint is restored and the good steps since are replayed) and
  counted (``hap_learner_nonfinite_steps_total``); the model store refuses non-finite weights.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

from feature_store.connection import RedisEndpoint
from feature_store.lease import LEASE_TTL_S, WriterLease
from feature_store.model_store import (
    SNAPSHOT_EVERY_S,
    SNAPSHOT_KEEP_S,
    FencedError,
    ModelStore,
    ModelStoreError,
    TierForm,
)
from learner import checkpoint
from learner import metrics as m
from learner.fetcher import Fetcher
from learner.partitions import owned
from learner.resume import load_weights
from learner.trainer import OnlineTrainer, StepReport
from streams.contract.schemas import InvalidEvent, SampleGroup, decode_sample_group
from streams.kafka.lag import LagReporter
from streams.kafka.security import KafkaSecurity

log = logging.getLogger("hap.learner")
SEEN_IDS = 200_000
FRESH_SAMPLE = 32
#: freshness samples held for the next version (while publishing is paused: thinned, every other one)
FRESH_KEPT = 100_000
#: the largest magnitude a feature value may have (counts, rates); beyond it a group is invalid
MAX_FEATURE = 1e12

RETENTION_LOST = Counter("hap_learner_retention_lost", "Sample records deleted by retention before the learner read "
                         "them (its offsets fell below the log start)", ["partition"])
NONFINITE_STEPS = Counter("hap_learner_nonfinite_steps", "Steps undone because a loss, gradient or weight was not "
                          "finite")
NONFINITE_GROUPS = Counter("hap_learner_nonfinite_groups", "Sample groups of the steps undone (not trained on)")
PUBLISH_REFUSED = Counter("hap_learner_publish_refused", "Versions the model store refused (non-finite weights)")
LEASE_WAITING = Gauge("hap_learner_lease_waiting", "1 while the learner waits for the writer lease another one holds")
LEASE_TERM = Gauge("hap_learner_lease_term", "The writer term (fencing token) of the lease held; 0 when none")
FENCED = Counter("hap_learner_fenced", "Publishes the fence refused, by kind (lease_lost and stale_term stop the "
                 "learner)", ["kind"])


@dataclasses.dataclass(frozen=True, slots=True)
class LearnerConfig:
    bootstrap: str
    redis: RedisEndpoint
    #: the prefix of every Redis key (the model store's, the writer lease's)
    redis_prefix: str = dataclasses.field(kw_only=True)
    samples_topic: str = "hap.samples"
    checkpoint_path: Path = Path(".hap/learner/checkpoint.safetensors")
    #: the most groups one step trains on: each step takes every group already fetched, up to this
    #: (adaptive batching: big batches while behind, small ones when caught up)
    batch_groups: int = 256
    publish_s: float = 1.0
    publish_steps: int = 50
    checkpoint_s: float = 10.0
    keep_versions: int = 5
    kafka_security: KafkaSecurity = KafkaSecurity()
    #: the writer lease's TTL: how long a killed learner blocks its successor
    lease_ttl_s: float = LEASE_TTL_S
    #: how long to wait for a lease another learner holds (None: as long as it takes)
    lease_wait_s: float | None = None
    #: the kept history beyond ``keep_versions``: a snapshot (a full version) every this many seconds ...
    snapshot_every_s: float = SNAPSHOT_EVERY_S
    #: ... kept this long (see :class:`feature_store.model_store.ModelStore`)
    snapshot_keep_s: float = SNAPSHOT_KEEP_S
    #: start from this published version's weights instead of the checkpoint's (once; see the module)
    from_version: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    """A publish in flight: its outcome, the trainer's steps it holds, its groups' freshness samples."""

    future: Future[int]
    steps: int
    fresh: list[tuple[int, int]]


class LearnerService:
    """The online learning loop; :meth:`run` until :meth:`stop` (never restarted after stop)."""

    def __init__(self, cfg: LearnerConfig, trainer: OnlineTrainer) -> None:
        self.cfg = cfg
        self.trainer = trainer
        #: the data-parallel ranks (``trainer.reducer``); rank 0, the leader, alone holds the writer
        #: lease, reads and writes the checkpoint and publishes
        self.reducer = trainer.reducer
        self.leader = self.reducer.rank == 0
        client = cfg.redis.client()
        self.lease = WriterLease(client, prefix=cfg.redis_prefix, ttl_s=cfg.lease_ttl_s)
        if self.leader:
            self._acquire_lease()
        try:
            self._open(client)
        except BaseException:
            self._release_lease()
            raise

    def _acquire_lease(self) -> None:
        """Hold the writer lease (renewed from now on), waiting while another learner holds it or
        Redis is unreachable; after ``lease_wait_s`` raises :class:`FencedError` (``lease_held``) or
        Redis' error."""
        deadline = None if self.cfg.lease_wait_s is None else time.monotonic() + self.cfg.lease_wait_s
        told = None
        while True:
            try:
                if self.lease.acquire():
                    break
                holder, left = self.lease.current()
                problem: Exception = FencedError(f"the model-store writer lease is held by {holder} (expires in "
                                                 f"{left:.1f}s unless renewed)", "lease_held", holder)
            except (redis.RedisError, OSError) as exc:
                holder, problem = "redis", exc
            LEASE_WAITING.set(1)
            if deadline is not None and time.monotonic() >= deadline:
                LEASE_WAITING.set(0)
                raise problem
            if holder != told:
                log.warning("waiting to start: %s; this learner starts once it is released or expires",
                            problem if holder != "redis" else f"Redis is unreachable ({problem})")
                told = holder
            time.sleep(min(1.0, self.cfg.lease_ttl_s / 4))
        LEASE_WAITING.set(0)
        LEASE_TERM.set(self.lease.term)
        log.info("holding the model-store writer lease as %s, term %d", self.lease.holder, self.lease.term)
        self.lease.keep(on_error=lambda _: m.LEASE_RENEW_ERRORS.inc())

    def _release_lease(self) -> None:
        if not self.leader:
            return
        LEASE_TERM.set(0)
        try:
            self.lease.release()
        except (redis.RedisError, OSError) as exc:
            log.warning("writer lease not released (it expires in %.0fs): %s", self.cfg.lease_ttl_s, exc)

    def _check_lease(self) -> None:
        """Raise (see :meth:`_fenced`) when the renewal thread found the lease lost."""
        if self.leader and self.lease.lost is not None:
            raise self._fenced(self.lease.lost)

    def _fenced(self, exc: FencedError) -> FencedError:
        FENCED.labels(exc.kind).inc()
        log.error("stopping: %s. Another learner is the model store's writer now; this one publishes and "
                  "checkpoints nothing more", exc)
        self.running = False
        return exc

    def _open(self, client: redis.Redis) -> None:
        """Read the checkpoint (under the lease; the leader, which hands it to every rank), open the
        store and the consumer of this rank's partitions."""
        cfg, trainer = self.cfg, self.trainer
        state = (checkpoint.load(cfg.checkpoint_path, trainer) or {}) if self.leader else {}
        self.store = ModelStore(client, prefix=cfg.redis_prefix, keep_versions=cfg.keep_versions, lease=self.lease,
                                version_floor=int(state.get("version", 0)), snapshot_every_s=cfg.snapshot_every_s,
                                snapshot_keep_s=cfg.snapshot_keep_s)
        self.from_version: int | None = state.get("from_version")
        self.pinned: int | None = None  # the version a pin holds publishing back for, as last refused
        if cfg.from_version is not None and self.leader:
            self._resume_from(cfg.from_version)
            state["from_version"] = self.from_version
        state = checkpoint.share(trainer, state) or {}
        self.from_version = state.get("from_version")
        self.trained_until_event = state.get("trained_until_event", 0)
        self.trained_until_finalized = state.get("trained_until_finalized", 0)
        self.fresh: list[tuple[int, int]] = []  # (finalized, event) ms of groups trained since the last publish
        self.duplicates = 0
        self.running = True
        # "earliest": an offset that retention deleted resumes at the oldest retained record (the
        # default, "latest", would skip every retained record not yet trained on); the gap is counted
        self.consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False,
                                      group_id="hap-learner", max_partition_fetch_bytes=8 << 20,
                                      auto_offset_reset="earliest", **cfg.kafka_security.client_options())
        partitions = self.consumer.partitions_for_topic(cfg.samples_topic) or set()
        deadline = time.monotonic() + 30
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.5)
            partitions = self.consumer.partitions_for_topic(cfg.samples_topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {cfg.samples_topic} does not exist at {cfg.bootstrap}")
        if len(partitions) < self.reducer.world:
            raise RuntimeError(f"{self.reducer.world} ranks but {len(partitions)} partitions of {cfg.samples_topic}: "
                               f"a rank needs at least one")
        mine = owned(partitions, self.reducer.rank, self.reducer.world)
        self.offsets: dict[int, int] = {int(p): o for p, o in state.get("offsets", {}).items() if int(p) in mine}
        # group id -> its partition, of this rank's partitions (a checkpoint from before partitions were
        # recorded: every id for every rank, as partition -1)
        ids = state.get("seen", [])
        self.seen: collections.OrderedDict[str, int] = collections.OrderedDict(
            (i, p) for i, p in zip(ids, state.get("seen_partitions", [-1] * len(ids)), strict=True)
            if p in mine or p == -1)
        self.tps = [TopicPartition(cfg.samples_topic, p) for p in mine]
        self.consumer.assign(self.tps)
        self._seek_to_checkpoint()
        self.fetcher = Fetcher(self.consumer, self._decode, buffer_records=2 * cfg.batch_groups)
        self.lag = LagReporter(cfg.bootstrap, self.consumer.config["group_id"], [cfg.samples_topic], m.CONSUMER_LAG,
                               cfg.kafka_security) if self.leader else None
        self.versions = 0
        self.nonfinite_steps = 0
        self._base = checkpoint.capture(trainer)  # the state to rewind to after a non-finite step
        self._since_base: list[list[SampleGroup]] = []  # the batches trained since ``_base``
        # publishing and checkpointing run off the training loop, one of each at a time: while one
        # is in flight the next waits in the trainer (touched rows, weights), not in a queue
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="hap-publish")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="hap-checkpoint")
        self._publishing: _Job | None = None
        self._checkpointing: Future[dict[str, Any]] | None = None
        self._published_steps = trainer.steps

    def _resume_from(self, version: int) -> None:
        """Take ``version``'s weights from the model store (:mod:`learner.resume`), unless the checkpoint
        already continues from it; raises :class:`ModelStoreError` (not kept) or
        :class:`learner.resume.ResumeError`."""
        if self.from_version == version:
            log.info("the checkpoint already continues from version %d: resuming from the checkpoint", version)
            return
        loaded = self.store.load(version)
        load_weights(self.trainer, loaded.tiers, version=version)
        self.from_version = version
        log.warning("resuming from the weights of version %d (published %s ms, %d samples); offsets and group ids "
                    "from the checkpoint", version, loaded.manifest["published_ts_ms"], loaded.manifest["samples_seen"])

    def _seek_to_checkpoint(self) -> None:
        """Seek each partition to the checkpoint's offset, or to its log start where retention
        already deleted that offset (counting and logging what was lost)."""
        starts = self.consumer.beginning_offsets(self.tps)
        for tp in self.tps:
            stored, start = self.offsets.get(tp.partition), starts[tp]
            if stored is None:
                self.consumer.seek(tp, start)
                continue
            if stored < start:
                self._lost_to_retention(tp.partition, stored, start)
                stored = self.offsets[tp.partition] = start
            self.consumer.seek(tp, stored)

    def _lost_to_retention(self, partition: int, expected: int, found: int) -> None:
        RETENTION_LOST.labels(str(partition)).inc(found - expected)
        log.error("partition %d: %d sample records (offsets %d..%d) were deleted by retention before they were "
                  "trained on; resuming at offset %d", partition, found - expected, expected, found - 1, found)

    def stop(self) -> None:
        self.running = False

    def run(self, max_idle_s: float | None = None) -> None:
        """Train until stopped (or until no sample arrived for ``max_idle_s``); raises
        :class:`FencedError` when another learner took the writer lease over."""
        # what exists now (torch, the modules, the models: ~200k objects) leaves the cycle collector's
        # view: each full collection walked it all, 0.2-0.4 s with the training loop stopped, every
        # 1-2 s while the learner was behind (decoded groups live long enough to trigger them)
        gc.freeze()
        try:
            self.fetcher.start()
            if self.lag is not None:
                self.lag.start()
            self._run(max_idle_s)
        finally:  # a write in flight completes before the lease goes (its outcome is no longer wanted)
            self._publisher.shutdown()
            self._writer.shutdown()
            self.fetcher.close()
            if self.lag is not None:
                self.lag.close()
            self._release_lease()
            gc.unfreeze()  # collectable again: at exit, and for whatever the process runs next

    def _run(self, max_idle_s: float | None) -> None:
        """The loop; with several ranks every rank runs it in lockstep: each iteration they add up
        what they polled and whether one is stopping (a step when any has a group, every rank on its
        own groups, possibly none), then do what the leader's clocks say is due."""
        last_publish = last_checkpoint = last_data = time.monotonic()
        steps_at_publish = self.trainer.steps
        while True:
            self._check_lease()
            self._collect()
            groups, polled = self._poll()
            total, polled, stopping = self._sum(len(groups), polled, not self.running)
            now = time.monotonic()
            if polled:
                last_data = now
            if total:
                self._train(groups)
            if stopping:
                break
            due = now - last_publish >= self.cfg.publish_s or \
                self.trainer.steps - steps_at_publish >= self.cfg.publish_steps
            publish, save, idle = self._leaders(
                due and self.trainer.steps > self._published_steps and self._publishing is None,
                now - last_checkpoint >= self.cfg.checkpoint_s and self._checkpointing is None,
                max_idle_s is not None and now - last_data > max_idle_s)
            if publish:
                self._start_publish()
                steps_at_publish, last_publish = self.trainer.steps, now
            if save:
                self._start_checkpoint()
                last_checkpoint = now
            if idle:
                break
        # a graceful stop: every group taken is trained already (each take is trained at once)
        self._collect(wait=True)
        if self._leaders(self.trainer.steps > self._published_steps)[0]:
            self._start_publish()
        self._start_checkpoint()
        self._collect(wait=True)

    def _sum(self, *values: int) -> list[int]:
        """``values`` added up over the ranks."""
        return [int(v) for v in self.reducer.sum(torch.tensor(values, dtype=torch.long)).tolist()]

    def _leaders(self, *flags: bool) -> list[bool]:
        """The leader's ``flags`` on every rank."""
        return [bool(f) for f in self._sum(*(f and self.leader for f in flags))]

    def _poll(self) -> tuple[list[SampleGroup], bool]:
        """Every group already fetched, up to ``batch_groups``: adaptive batching (big batches
        while behind, one group at a time when caught up). Waits (100 ms at most) only when none
        is; the second value is True when any record was taken."""
        groups: list[SampleGroup] = []
        records = self.fetcher.take(self.cfg.batch_groups, timeout_s=0.1)
        for partition, offset, group in records:
            expected = self.offsets.get(partition)
            if expected is not None and offset > expected:  # reset past deleted records
                self._lost_to_retention(partition, expected, offset)
            self.offsets[partition] = offset + 1
            if group is not None and self._first_seen(group, partition):
                groups.append(group)
        return groups, bool(records)

    @staticmethod
    def _decode(raw: bytes) -> SampleGroup | None:
        """The group of a record, or None (counted, logged) when it is invalid; runs on the fetcher's thread."""
        try:
            group = decode_sample_group(raw)
        except InvalidEvent as exc:
            m.INVALID.inc()
            log.warning("rejected sample group: %s", exc.reason)
            return None
        problem = feature_problem(group)
        if problem is not None:
            m.INVALID.inc()
            log.warning("rejected sample group %s: %s", group.group_id, problem)
            return None
        return group

    def _first_seen(self, group: SampleGroup, partition: int) -> bool:
        """False for a group already trained on (a duplicate, counted)."""
        if group.group_id in self.seen:
            self.duplicates += 1
            m.DUPLICATES.inc()
            return False
        self.seen[group.group_id] = partition
        while len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        return True

    def _train(self, groups: list[SampleGroup]) -> None:
        """One step on ``groups``; when it is not finite, each group alone, so that only the
        groups that cannot be trained on (counted) are left out."""
        m.BATCH_GROUPS.observe(len(groups))
        trained = groups if self._step_or_undo(groups) else []
        if not trained and len(groups) > 1 and self.reducer.world == 1:  # ranks step together: the step is lost
            trained = [g for g in groups if self._step_or_undo([g])]
        if len(trained) < len(groups):
            NONFINITE_GROUPS.inc(len(groups) - len(trained))
            log.error("%d of %d groups not trained on (non-finite step): %s", len(groups) - len(trained),
                      len(groups), ", ".join(g.group_id for g in groups if g not in trained)[:500])
        if not trained:
            return
        now_ms = time.time() * 1000
        self.trained_until_event = max(self.trained_until_event, max(g.event_ts_ms for g in trained))
        self.trained_until_finalized = max(self.trained_until_finalized, max(g.assembled_ts_ms for g in trained))
        self.fresh += [(g.assembled_ts_ms, g.event_ts_ms) for g in trained]
        for g in trained:
            m.SAMPLE_TO_TRAINED.observe(max(0.0, (now_ms - g.assembled_ts_ms) / 1000))

    def _step_or_undo(self, groups: list[SampleGroup]) -> bool:
        """Train one step; if a loss, gradient norm or weight comes out non-finite, undo it: the
        state of the last checkpoint is restored and the good steps since are replayed, so the
        step leaves no trace in weights, optimizers or metrics. True when the step was kept."""
        report = self.trainer.step(groups)
        if _report_finite(report) and checkpoint.weights_finite(self.trainer):
            self._since_base.append(groups)
            _observe(report)
            return True
        checkpoint.restore(self.trainer, self._base)
        for batch in self._since_base:
            self.trainer.step(batch)
        self.nonfinite_steps += 1
        NONFINITE_STEPS.inc()
        log.warning("step on %d groups undone (losses %s); replayed the %d steps since the checkpoint",
                    len(groups), report.losses, len(self._since_base))
        return False

    def _start_publish(self) -> None:
        """Export both tiers and what the manifest records on the loop (the next step changes the
        weights), then hand the version to the publisher thread: encoding, the finite check, the
        blobs, the fenced manifest switch and the notification run while training goes on."""
        touched = self.trainer.take_touched()
        quality = self.trainer.quality()  # every rank's counts
        until_event, until_finalized = self.reducer.maximum(
            torch.tensor([self.trained_until_event, self.trained_until_finalized], dtype=torch.float64)).tolist()
        if not self.leader:
            return
        tiers = {name: TierForm(*tier.export(), touched[name]) for name, tier in self.trainer.tiers().items()}
        fresh, self.fresh = sorted(self.fresh), []  # the leader's groups' freshness samples
        picks = np.linspace(0, len(fresh) - 1, min(FRESH_SAMPLE, len(fresh))).astype(int) if fresh else []
        fields = {
            "trained_until_event_ts_ms": int(until_event),
            "trained_until_finalized_ts_ms": int(until_finalized),
            "samples_seen": self.trainer.samples_seen,
            "metrics": {"quality": quality, "steps": self.trainer.steps, "method": self.trainer.method,
                        "finalized_sample_ms": [fresh[i][0] for i in picks],
                        "event_sample_ms": [fresh[i][1] for i in picks], "duplicates": self.duplicates},
        }
        self._publishing = _Job(self._publisher.submit(self._publish, tiers, fields), self.trainer.steps, fresh)

    def _publish(self, tiers: dict[str, TierForm], fields: dict[str, Any]) -> int:
        """Write one version (on the publisher thread); its errors are the loop's, in :meth:`_collect`."""
        started = time.perf_counter()
        version = self.store.publish(tiers, **fields)
        m.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        m.PUBLISH_BYTES.set(self.store.last_publish_bytes)
        m.VERSION.set(version)
        m.TRAINED_UNTIL_LAG.set(max(0.0, time.time() - fields["trained_until_event_ts_ms"] / 1000))
        m.TRAINED_TO_PUBLISHED.observe(max(0.0, time.time() - fields["trained_until_finalized_ts_ms"] / 1000))
        return version

    def _start_checkpoint(self) -> None:
        """Capture (clone) the trainer's state with the offsets and ids of exactly the groups it
        was trained on, on the loop; the writer thread writes it durably, and only then are the
        offsets committed to Kafka (:meth:`_collect`). The capture is also the state a non-finite
        step rewinds to."""
        self.trainer.fold_metrics()  # every rank's progressive counts in the leader's checkpoint
        snapshot = checkpoint.capture(self.trainer)
        state: dict[str, Any] = {
            "offsets": {str(p): o for p, o in self.offsets.items()}, "seen": list(self.seen),
            "seen_partitions": list(self.seen.values()),
            "trained_until_event": self.trained_until_event,
            "trained_until_finalized": self.trained_until_finalized, "from_version": self.from_version,
        }
        self._base, self._since_base = snapshot, []
        if self.reducer.world > 1:  # every rank's partitions: the barrier at which the checkpoint is taken
            state = _merged([json.loads(part) for part in self.reducer.gather_bytes(json.dumps(state).encode())])
        if self.leader:
            self._checkpointing = self._writer.submit(self._write_checkpoint, snapshot, state)

    def _write_checkpoint(self, snapshot: checkpoint.Snapshot, state: dict[str, Any]) -> dict[str, Any]:
        """Write the checkpoint (on the writer thread); never after the lease was lost (the
        checkpoint may be the new writer's too): the lease is renewed first, and a loss raises
        :class:`FencedError` for the loop. It records the last version published, the floor of
        the versions after a restart."""
        with contextlib.suppress(redis.RedisError, OSError, FencedError):  # unreachable: not known to be lost
            self.lease.renew()
        if self.lease.lost is not None:
            raise self.lease.lost
        started = time.perf_counter()
        checkpoint.write(self.cfg.checkpoint_path, snapshot, {**state, "version": self.store.newest})
        m.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        return state

    def _collect(self, wait: bool = False) -> None:
        """Take the outcome of the publish and the checkpoint the background threads finished (with
        ``wait``, once they finish): count and log a failed publish (the fence: retried when it may
        be, raised when another learner took the lease over; the groups' freshness samples go to the
        next version); commit the offsets of a checkpoint written."""
        job = self._publishing
        if job is not None and (wait or job.future.done()):
            self._publishing = None
            if self._published(job.future):
                self.versions += 1
                self._published_steps = job.steps
            else:
                self.fresh = job.fresh + self.fresh
                if len(self.fresh) > FRESH_KEPT:
                    self.fresh = self.fresh[::2]
        written = self._checkpointing
        if written is not None and (wait or written.done()):
            self._checkpointing = None
            try:
                state = written.result()
            except FencedError as exc:
                raise self._fenced(exc) from None
            self._commit(state["offsets"])

    def _published(self, future: Future[int]) -> bool:
        """True when the version was published; else the failure counted and logged, or raised
        when another learner took the lease over (see :meth:`_collect`)."""
        try:
            future.result()
            self._pin_seen(None)
            return True
        except FencedError as exc:
            if exc.kind == "pinned":
                self._pin_seen(int(exc.detail or 0))
                return False
            if not exc.retriable:
                raise self._fenced(exc) from None
            FENCED.labels(exc.kind).inc()
            log.warning("version not published, retrying in %.1fs: %s", self.cfg.publish_s, exc)
        except ModelStoreError as exc:
            PUBLISH_REFUSED.inc()
            log.error("version not published: %s", exc)
        except (redis.RedisError, OSError) as exc:
            m.PUBLISH_ERRORS.inc()
            log.warning("publish failed, retrying in %.1fs: %s", self.cfg.publish_s, exc)
        return False

    def _pin_seen(self, version: int | None) -> None:
        """Log a pin that holds publishing back, and its end, once each (``hap_learner_publish_pinned``)."""
        if version != self.pinned:
            if version is not None:
                log.warning("version %d is pinned: publishing nothing until `hap models unpin`; training and "
                            "checkpoints go on", version)
            else:
                log.warning("version %s unpinned: publishing again", self.pinned)
        self.pinned = version
        m.PINNED.set(version or 0)

    def _commit(self, offsets: dict[str, int]) -> None:
        """Commit offsets a checkpoint holds to Kafka (for lag monitoring: the checkpoint is the
        truth), on the fetcher's thread, which owns the consumer."""
        from kafka.structs import OffsetAndMetadata

        self.fetcher.commit({TopicPartition(self.cfg.samples_topic, int(p)): OffsetAndMetadata(o, "", -1)
                             for p, o in offsets.items()})


def _merged(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint state of several ranks' (each of its own partitions): offsets and seen ids of
    all, the latest trained-until times."""
    return {
        **states[0], "offsets": {p: o for s in states for p, o in s["offsets"].items()},
        "seen": [i for s in states for i in s["seen"]],
        "seen_partitions": [p for s in states for p in s["seen_partitions"]],
        "trained_until_event": max(s["trained_until_event"] for s in states),
        "trained_until_finalized": max(s["trained_until_finalized"] for s in states),
    }


def feature_problem(group: SampleGroup) -> str | None:
    """Why ``group``'s item features cannot be trained on (a non-finite or absurd value), or None."""
    for n, item in enumerate(group.items):
        for name, value in (item.features or {}).items():
            if not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > MAX_FEATURE:
                return f"items[{n}].features.{name}: {value!r} is not a finite number within +-{MAX_FEATURE:g}"
    return None


def _report_finite(report: StepReport) -> bool:
    values = [*report.losses.values(), *report.grad_norms.values()]
    if report.grad_cosine is not None:
        values.append(report.grad_cosine)
    return all(math.isfinite(v) for v in values)


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
