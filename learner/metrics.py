"""Prometheus metrics of the learner."""

from prometheus_client import Counter, Gauge, Histogram

from streams.kafka.lag import LagGauge

FRESH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
STEPS = Counter("hap_learner_steps", "Training steps (micro-batches)")
SAMPLES = Counter("hap_learner_samples", "Samples trained on")
INVALID = Counter("hap_learner_invalid_groups", "Sample groups rejected by validation")
DUPLICATES = Counter("hap_learner_duplicate_groups", "Sample groups skipped as already trained on")
LOSS = Gauge("hap_learner_loss", "Loss of the last step per path", ["path"])
GRAD_COSINE = Gauge("hap_learner_grad_cosine", "Cosine between the easy and hard paths' gradients")
GRAD_NORM = Gauge("hap_learner_grad_norm", "Gradient norm per path", ["path"])
HARD_SHARE = Gauge("hap_learner_hard_share", "Share of hard negatives kept by conflict-sensitive sampling")
VERSION = Gauge("hap_learner_model_version", "Last published model version")
PUBLISH_SECONDS = Histogram("hap_learner_publish_seconds", "Time to publish one version",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))
PUBLISH_ERRORS = Counter("hap_learner_publish_errors", "Publishes that failed (Redis unreachable); retried")
LEASE_RENEW_ERRORS = Counter("hap_learner_lease_renew_errors",
                             "Writer-lease renewals that failed (Redis unreachable); retried every third of the TTL")
PINNED = Gauge("hap_learner_publish_pinned", "The version pinned (hap models pin) while it holds publishing back "
               "(training and checkpoints go on); 0 when none")
PUBLISH_BYTES = Gauge("hap_learner_publish_bytes", "Bytes written by the last publish")
TRAINED_UNTIL_LAG = Gauge("hap_learner_trained_until_lag_seconds", "Now minus the newest trained event time")
SAMPLE_TO_TRAINED = Histogram("hap_learner_sample_to_trained_seconds", "Group assembled -> trained on",
                              buckets=FRESH_BUCKETS)
TRAINED_TO_PUBLISHED = Histogram("hap_learner_trained_to_published_seconds",
                                 "Newest trained group assembled -> its version published", buckets=FRESH_BUCKETS)
BATCH_GROUPS = Histogram("hap_learner_batch_groups", "Groups per training step (adaptive: every group already "
                         "fetched, up to the cap)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
CHECKPOINT_SECONDS = Histogram("hap_learner_checkpoint_seconds", "Time to write one checkpoint durably (on a "
                               "background thread, off the training loop)",
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
CONSUMER_LAG = LagGauge(Gauge(
    "hap_learner_consumer_lag_records", "Sample records the learner's group has not committed yet (it commits with "
    "each checkpoint): the broker's log-end offset minus the committed offset", ["group", "topic", "partition"]))
