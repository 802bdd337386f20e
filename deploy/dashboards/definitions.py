"""The four dashboards: pipeline overview, freshness, learner, router; every one carries the
annotations of :data:`ANNOTATIONS` (rollbacks, pins, version swaps)."""

from __future__ import annotations

from typing import Any

from deploy.dashboards.alerts import VERSION_BEHIND
from deploy.dashboards.panels import Annotation, Panel, dashboard, quantile

#: a per-target series' legend: ``pod instance`` on Kubernetes, ``instance`` elsewhere
TARGET = "{{pod}} {{instance}}"
BY_TARGET = "namespace, pod, instance"

ANNOTATIONS = (
    Annotation("Rollbacks", f"max by ({BY_TARGET}) (hap_router_model_version) < max by ({BY_TARGET}) "
               "(hap_router_model_version offset 1m)", "served version went back",
               f"{TARGET}: a lower version than a minute before (hap models pin / rollback)", "red"),
    Annotation("Pinned version served", f"max by ({BY_TARGET}) (hap_router_model_pinned) > 0", "pinned version",
               f"{TARGET} serves the pinned version (hap models pin; hap models unpin ends it)", "orange"),
    Annotation("Learner held back by a pin", f"max by ({BY_TARGET}) (hap_learner_publish_pinned) > 0",
               "learner publishes nothing", f"{TARGET}: a pin holds publishing back; training goes on", "yellow"),
    # off by default: a learner publishing every second makes it one long region; on, it shows when swaps stop
    Annotation("Version swaps", f"sum by ({BY_TARGET}) (increase(hap_router_swaps_total[1m])) > 0",
               "model swaps", f"{TARGET} swapped in new versions", "blue", enable=False),
)


def pipeline() -> dict[str, Any]:
    return dashboard("hap-pipeline", "HAP pipeline overview", [
        Panel("Events in by topic", (("sum by (topic) (rate(hap_streams_events_total[rate]))", "{{topic}}"),), "ops",
              description="Input events the streams workers consume per second, by topic (ranking, exposure, "
                          "items). A topic falling to 0 while others go on: its producers stopped, or "
                          "its partitions are not read (Consumer lag)."),
        Panel("Sample groups out", (("sum by (kind) (rate(hap_streams_groups_total[rate]))", "{{kind}}"),), "ops",
              description="Sample groups the join emits to hap.samples per second, by kind (group: a first "
                          "emission; correction). Groups are what the learner trains on: none out, no fresh model."),
        Panel("Samples by source", (("sum by (source) (rate(hap_streams_samples_total[rate]))", "{{source}}"),),
              "ops", description="Samples emitted per second by source (exp_pos, exp_neg: exposed; the "
                                 "others: unexposed candidates). A shift between sources: the producers' mix "
                                 "changed."),
        Panel("Pending requests (join window open)", (("sum(hap_streams_pending_requests)", "pending"),),
              description="Requests whose join window is still open, over all workers. It follows the request "
                          "rate times the window; growing without bound: the workers do not finalize (a stuck "
                          "partition, or event time not advancing)."),
        Panel("Dead letters by reason", (("sum by (reason_kind) (rate(hap_streams_invalid_total[rate]))",
                                          "{{reason_kind}}"),), "ops",
              description="Records sent to hap.dlq per second, by reason kind. Above 1/s: alert HapDeadLetters; "
                          "the producers send invalid or orphan events. `hap dlq list` shows them."),
        Panel("Late events", (("sum by (outcome) (rate(hap_streams_late_total[rate]))", "{{outcome}}"),), "ops",
              description="Events for requests already finalized, by outcome (correction, duplicate, "
                          "dead_letter). Many: producers deliver later than the join window plus the allowed "
                          "lateness."),
        Panel("Consumer lag by group and topic (records not committed)", (
            ("sum by (group, topic) (max by (group, topic, partition) (hap_streams_consumer_lag_records))",
             "{{group}} {{topic}}"),
            ("sum by (group, topic) (max by (group, topic, partition) (hap_learner_consumer_lag_records))",
             "{{group}} {{topic}}"),
            ('sum by (consumergroup, topic) (kafka_consumergroup_lag{consumergroup=~"hap-streams-.*"})',
             "{{topic}} (Kafka Exporter)")), "short",
              description="Per group and topic: the broker's log-end offsets minus the group's committed offsets, "
                          "summed over partitions. The streams group on its inputs (every worker exports its "
                          "group's figures; max over workers), the learner on hap.samples (it commits with each "
                          "checkpoint), and on Kubernetes Strimzi's Kafka Exporter, which reports while no worker "
                          "runs. Growing: the consumers do not keep up or a partition is not read. Per partition: "
                          "hap_streams_consumer_lag_records, hap_learner_consumer_lag_records."),
        Panel("Learner lag behind the newest event", (("max(hap_learner_trained_until_lag_seconds)", "lag"),), "s",
              description="Now minus the event time of the newest sample the learner trained on. Growing: the "
                          "learner falls behind hap.samples (or no samples arrive: Sample groups out)."),
        Panel("Missing features (defaults used)", (
            ("sum by (kind) (rate(hap_feature_store_missing_total[rate]))", "streams {{kind}}"),
            ("sum by (kind) (rate(hap_router_missing_features_total[rate]))", "router {{kind}}")), "ops",
              description="Feature lookups that fell back to a default, per second: item_stats (an item with no "
                          "statistics yet: new items), redis_down (Redis unreachable). A jump in redis_down: "
                          "check Redis."),
        Panel("Dependency failures (Redis, Kafka) and what they cost", (
            ("sum by (kind) (rate(hap_streams_errors_total[rate]))", "streams {{kind}}"),
            ("sum(rate(hap_learner_publish_errors_total[rate]))", "learner publish failed")), "ops",
              description="Failed calls to Redis and Kafka per second: the streams workers' by kind (redis, "
                          "history_skipped, catalogue, lag) and the learner's failed publishes (alert "
                          "HapLearnerCannotPublish). Each component retries; the log says what it waits for."),
        Panel("Streams worker restarts by exit reason (15 min)",
              (("sum by (reason) (increase(hap_streams_worker_exits_total[15m]))", "{{reason}}"),), "short",
              description="Worker exits the supervisor restarted in the last 15 minutes, by reason (stalled, "
                          "crashed, killed, exited). 3 or more on one worker: alert HapStreamsRestartLoop; read "
                          "the worker log."),
        Panel("Components up (scraped)", (('up{job="hap"}', "{{component}} " + TARGET),), "short",
              description="1 for each component target Prometheus scrapes, 0 for one that does not answer "
                          "(alert HapComponentDown); a component missing altogether: HapStreamsAbsent and the "
                          "like."),
    ], annotations=ANNOTATIONS)


def freshness() -> dict[str, Any]:
    return dashboard("hap-freshness", "HAP freshness", [
        Panel("Freshness: group finalized -> served (p50, p99)", (
            (quantile(0.5, "hap_router_freshness_seconds"), "p50"),
            (quantile(0.99, "hap_router_freshness_seconds"), "p99")), "s",
              description="From a sample group's finalization to the moment a router serves a version trained on "
                          "it: the whole loop after the join. Compare with the stages below to see where time "
                          "goes."),
        Panel("Model age at load: request event -> served (p50, p99)", (
            (quantile(0.5, "hap_router_model_age_at_load_seconds"), "p50"),
            (quantile(0.99, "hap_router_model_age_at_load_seconds"), "p99")), "s",
              description="From a request's event time to the moment a version trained on its group is served: "
                          "freshness including the join window."),
        Panel("Stage: event -> sample (join window)", (
            (quantile(0.5, "hap_streams_event_to_sample_seconds"), "p50"),
            (quantile(0.99, "hap_streams_event_to_sample_seconds"), "p99")), "s",
              description="Wall time from a request's last event to its group's emission: the join window plus "
                          "lateness and finalization. p99 well beyond the window: the workers lag (Consumer lag)."),
        Panel("Stage: sample -> trained", ((quantile(0.5, "hap_learner_sample_to_trained_seconds"), "p50"),
                                           (quantile(0.99, "hap_learner_sample_to_trained_seconds"), "p99")), "s",
              description="From a group's emission to the learner's step on it. Growing: the learner falls "
                          "behind (its consumer lag on hap.samples)."),
        Panel("Stage: trained -> published", ((quantile(0.5, "hap_learner_trained_to_published_seconds"), "p50"),
                                              (quantile(0.99, "hap_learner_trained_to_published_seconds"), "p99")),
              "s", description="From the step on a group to the publish of a version that includes it. No data "
                               "while a pin holds publishing back (the annotations show it)."),
        Panel("Stage: published -> loaded by the router", (
            (quantile(0.5, "hap_router_published_to_loaded_seconds"), "p50"),
            (quantile(0.99, "hap_router_published_to_loaded_seconds"), "p99")), "s",
              description="From a version's publish to a router serving it (notification or poll, load, verify, "
                          "swap). Seconds: a router polling instead of being notified, or slow loads (Swap time)."),
        Panel("Served model age (now - trained until), per replica",
              ((f"max by ({BY_TARGET}) (hap_router_model_age_seconds)", TARGET),), "s",
              description="Now minus the event time the served version was trained until, per router replica. "
                          "Above 5 minutes: alert HapModelStale. It grows by design while a version is pinned "
                          "(the Pinned annotation; the alert is silent then)."),
        Panel("Model store contact age (since Redis last answered), per replica",
              ((f"max by ({BY_TARGET}) (hap_router_model_store_contact_age_seconds)", TARGET),), "s",
              description="Seconds since the model store (Redis) last answered each router's poll: a few seconds "
                          "normally, growing while Redis is unreachable (the router keeps serving its version). "
                          "Above a minute: alert HapModelStoreUnreachable. Not the model's age (that is Served "
                          "model age). Formerly hap_router_staleness_seconds."),
    ], annotations=ANNOTATIONS)


def learner() -> dict[str, Any]:
    return dashboard("hap-learner", "HAP learner", [
        Panel("Loss per path", (("hap_learner_loss", "{{path}}"),),
              description="Loss of the last step per path (the paths of the training objective, and "
                          "expressive). A jump or NaN: bad "
                          "input (invalid groups) or a diverging model; `hap models pin` a good version."),
        Panel("Gradient conflict: cos(easy, hard)", (("hap_learner_grad_cosine", "cosine"),),
              description="Cosine between the easy and hard paths' gradients: below 0 the two objectives pull "
                          "the shared weights apart (the conflict the method measures)."),
        Panel("Gradient norm per path", (("hap_learner_grad_norm", "{{path}}"),),
              description="Gradient norm of the last step per path. Spikes precede divergence."),
        Panel("Hard share (conflict-sensitive sampling)", (("hap_learner_hard_share", "share"),), "percentunit",
              description="Share of hard negatives kept by conflict-sensitive sampling in the last step."),
        Panel("Samples/s and steps/s", (("rate(hap_learner_samples_total[rate])", "samples/s"),
                                        ("rate(hap_learner_steps_total[rate])", "steps/s")), "ops",
              description="Training throughput. Samples/s below the samples streams emits: the learner falls "
                          "behind (Learner lag)."),
        Panel("Groups per step (adaptive batching: mean, p99; the cap when behind)", (
            ("sum(rate(hap_learner_batch_groups_sum[rate])) / sum(rate(hap_learner_batch_groups_count[rate]))",
             "mean"),
            (quantile(0.99, "hap_learner_batch_groups"), "p99")),
              description="Groups per training step: 1-2 when the learner is caught up, near the cap (hap learner "
                          "--batch-groups) while it is behind."),
        Panel("Published version", (("max(hap_learner_model_version)", "version"),), "none", "stat",
              description="The last version the learner published. Not moving: the learner is down, fenced (a "
                          "second learner), or a pin holds publishing back (the annotation)."),
        Panel("Publish latency (p50, p99)", ((quantile(0.5, "hap_learner_publish_seconds"), "p50"),
                                             (quantile(0.99, "hap_learner_publish_seconds"), "p99")), "s",
              description="Time to write one version to Redis (blobs and manifest). Growing: Redis is slow or "
                          "near maxmemory."),
        Panel("Publish bytes", (("hap_learner_publish_bytes", "bytes"),), "bytes",
              description="Bytes the last publish wrote: small for a delta, the whole model for a full version."),
    ], annotations=ANNOTATIONS)


def router() -> dict[str, Any]:
    return dashboard("hap-router", "HAP router", [
        Panel("Latency by policy (p50, p99)", (
            (quantile(0.5, "hap_router_request_seconds", "policy"), "p50 {{policy}}"),
            (quantile(0.99, "hap_router_request_seconds", "policy"), "p99 {{policy}}")), "s",
              description="Pre-ranking service time from the body read to the answer, by policy (queueing is "
                          "hap_router_event_loop_lag_seconds). p99 up with Candidates up: bigger requests; alone: "
                          "CPU saturation, add replicas."),
        Panel("Requests/s", (("sum by (policy) (rate(hap_router_request_seconds_count[rate]))", "{{policy}}"),),
              "reqps", description="Pre-ranking requests answered 200 per second, by policy. All answers by status "
                                   "code: Responses by status code."),
        Panel("Responses by status code", (
            ("sum by (code, path) (rate(hap_router_responses_total[rate]))", "{{code}} {{path}}"),), "reqps",
              description="Every answer per second by status code and route, errors included: 400 and 413 are "
                          "client mistakes (the body says why), 503 a router without a model or draining, 500 a "
                          "failure inside the router (its log; hap_router_errors_total by kind)."),
        Panel("Candidates per request (p50)", ((quantile(0.5, "hap_router_candidates"), "p50"),),
              description="Median candidates per pre-ranking request: latency follows it."),
        Panel("Expressive fraction (mean)", (("sum(rate(hap_router_expressive_fraction_sum[rate])) / "
                                              "sum(rate(hap_router_expressive_fraction_count[rate]))", "mean"),),
              "percentunit", description="Mean share of candidates the expressive tier scores (the DAMR budget)."),
        Panel("Served version per replica", ((f"max by ({BY_TARGET}) (hap_router_model_version)", TARGET),), "none",
              description="The version each router replica serves (its oldest worker's). Replicas normally move "
                          "together within seconds; one flat while the others climb does not take new versions "
                          "(alert HapRouterVersionsDiffer: its log, Redis). All going down at once: a rollback or "
                          "pin (the annotations)."),
        Panel("Versions behind the newest, per replica", ((VERSION_BEHIND, TARGET),), "none",
              description="Per replica: the newest version any replica of its namespace served 2 minutes earlier "
                          "minus the one it serves now. At most 0 for a replica that keeps up; above 0 for 10 "
                          "minutes: alert HapRouterVersionsDiffer."),
        Panel("Model age per replica", ((f"max by ({BY_TARGET}) (hap_router_model_age_seconds)", TARGET),), "s",
              description="Now minus the trained-until event time of each replica's version. Grows while a version "
                          "is pinned (by design; HapModelStale is silent then)."),
        Panel("Model swaps", ((f"sum by ({BY_TARGET}) (rate(hap_router_swaps_total[rate]))", TARGET),), "ops",
              description="Versions swapped in per second per replica: about the learner's publish rate. 0 while "
                          "the learner publishes: the replica does not load (Errors by kind: model_load, "
                          "model_rejected)."),
        Panel("Swap time (p99)", ((quantile(0.99, "hap_router_swap_seconds"), "p99"),), "s",
              description="Time to load, verify and swap in a version (p99). Long: large full versions or a slow "
                          "Redis."),
        Panel("Errors by kind", (("sum by (kind) (rate(hap_router_errors_total[rate]))", "{{kind}}"),), "ops",
              description="Router errors per second by kind (docs/operations.md, Metrics): model_load, "
                          "model_rejected, stale_version, pin_unavailable, redis, not_ready, internal, http_5xx. "
                          "Internal kinds above 0.5/s: alert HapRouterErrors."),
    ], annotations=ANNOTATIONS)


def all_dashboards() -> list[dict[str, Any]]:
    return [pipeline(), freshness(), learner(), router()]


def all_queries(rate_interval: str | None = None) -> list[tuple[str, str, str]]:
    """Every panel query as ``(dashboard, panel title, PromQL)``; with ``rate_interval`` (e.g. ``1m``)
    in place of Grafana's ``$__rate_interval``, as Grafana sends it to Prometheus."""
    out = [(d["title"], p["title"], t["expr"]) for d in all_dashboards() for p in d["panels"] for t in p["targets"]]
    if rate_interval is None:
        return out
    return [(d, p, e.replace("$__rate_interval", rate_interval)) for d, p, e in out]
