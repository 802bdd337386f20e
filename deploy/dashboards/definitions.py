"""The four dashboards: pipeline overview, freshness, learner, router."""

from __future__ import annotations

from typing import Any

from deploy.dashboards.panels import Panel, dashboard, quantile


def pipeline() -> dict[str, Any]:
    return dashboard("hap-pipeline", "HAP pipeline overview", [
        Panel("Events in by topic", (("sum by (topic) (rate(hap_streams_events_total[rate]))", "{{topic}}"),), "ops"),
        Panel("Sample groups out", (("sum by (kind) (rate(hap_streams_groups_total[rate]))", "{{kind}}"),), "ops"),
        Panel("Samples by source", (("sum by (source) (rate(hap_streams_samples_total[rate]))", "{{source}}"),), "ops"),
        Panel("Pending requests (join window open)", (("sum(hap_streams_pending_requests)", "pending"),)),
        Panel("Dead letters by reason", (("sum by (reason_kind) (rate(hap_streams_invalid_total[rate]))",
                                          "{{reason_kind}}"),), "ops"),
        Panel("Late events", (("sum by (outcome) (rate(hap_streams_late_total[rate]))", "{{outcome}}"),), "ops"),
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
        Panel("Learner lag behind the newest event", (("max(hap_learner_trained_until_lag_seconds)", "lag"),), "s"),
        Panel("Missing features (defaults used)", (
            ("sum by (kind) (rate(hap_feature_store_missing_total[rate]))", "streams {{kind}}"),
            ("sum by (kind) (rate(hap_router_missing_features_total[rate]))", "router {{kind}}")), "ops"),
        Panel("Dependency failures (Redis, Kafka) and what they cost", (
            ("sum by (kind) (rate(hap_streams_errors_total[rate]))", "streams {{kind}}"),
            ("sum(rate(hap_learner_publish_errors_total[rate]))", "learner publish failed")), "ops"),
        Panel("Streams worker restarts by exit reason (15 min)",
              (("sum by (reason) (increase(hap_streams_worker_exits_total[15m]))", "{{reason}}"),), "short"),
        Panel("Components up (scraped)", (('up{job="hap"}', "{{component}}"),), "short"),
    ])


def freshness() -> dict[str, Any]:
    return dashboard("hap-freshness", "HAP freshness", [
        Panel("Freshness: group finalized -> served (p50, p99)", (
            (quantile(0.5, "hap_router_freshness_seconds"), "p50"),
            (quantile(0.99, "hap_router_freshness_seconds"), "p99")), "s"),
        Panel("Model age at load: request event -> served (p50, p99)", (
            (quantile(0.5, "hap_router_model_age_at_load_seconds"), "p50"),
            (quantile(0.99, "hap_router_model_age_at_load_seconds"), "p99")), "s"),
        Panel("Stage: event -> sample (join window)", (
            (quantile(0.5, "hap_streams_event_to_sample_seconds"), "p50"),
            (quantile(0.99, "hap_streams_event_to_sample_seconds"), "p99")), "s"),
        Panel("Stage: sample -> trained", ((quantile(0.5, "hap_learner_sample_to_trained_seconds"), "p50"),
                                           (quantile(0.99, "hap_learner_sample_to_trained_seconds"), "p99")), "s"),
        Panel("Stage: trained -> published", ((quantile(0.5, "hap_learner_trained_to_published_seconds"), "p50"),
                                              (quantile(0.99, "hap_learner_trained_to_published_seconds"), "p99")),
              "s"),
        Panel("Stage: published -> loaded by the router", (
            (quantile(0.5, "hap_router_published_to_loaded_seconds"), "p50"),
            (quantile(0.99, "hap_router_published_to_loaded_seconds"), "p99")), "s"),
        Panel("Served model age (now - trained until)", (("max(hap_router_model_age_seconds)", "age"),), "s", "stat"),
        Panel("Router staleness (since the model store answered)", (("max(hap_router_staleness_seconds)",
                                                                      "staleness"),), "s", "stat"),
    ])


def learner() -> dict[str, Any]:
    return dashboard("hap-learner", "HAP learner", [
        Panel("Loss per path", (("hap_learner_loss", "{{path}}"),)),
        Panel("Gradient conflict: cos(easy, hard)", (("hap_learner_grad_cosine", "cosine"),)),
        Panel("Gradient norm per path", (("hap_learner_grad_norm", "{{path}}"),)),
        Panel("Hard share (conflict-sensitive sampling)", (("hap_learner_hard_share", "share"),), "percentunit"),
        Panel("Samples/s and steps/s", (("rate(hap_learner_samples_total[rate])", "samples/s"),
                                        ("rate(hap_learner_steps_total[rate])", "steps/s")), "ops"),
        Panel("Groups per step (adaptive batching: mean, p99; the cap when behind)", (
            ("sum(rate(hap_learner_batch_groups_sum[rate])) / sum(rate(hap_learner_batch_groups_count[rate]))",
             "mean"),
            (quantile(0.99, "hap_learner_batch_groups"), "p99"))),
        Panel("Published version", (("max(hap_learner_model_version)", "version"),), "none", "stat"),
        Panel("Publish latency (p50, p99)", ((quantile(0.5, "hap_learner_publish_seconds"), "p50"),
                                             (quantile(0.99, "hap_learner_publish_seconds"), "p99")), "s"),
        Panel("Publish bytes", (("hap_learner_publish_bytes", "bytes"),), "bytes"),
    ])


def router() -> dict[str, Any]:
    return dashboard("hap-router", "HAP router", [
        Panel("Latency by policy (p50, p99)", (
            (quantile(0.5, "hap_router_request_seconds", "policy"), "p50 {{policy}}"),
            (quantile(0.99, "hap_router_request_seconds", "policy"), "p99 {{policy}}")), "s"),
        Panel("Requests/s", (("sum by (policy) (rate(hap_router_request_seconds_count[rate]))", "{{policy}}"),),
              "reqps"),
        Panel("Candidates per request (p50)", ((quantile(0.5, "hap_router_candidates"), "p50"),)),
        Panel("Expressive fraction (mean)", (("sum(rate(hap_router_expressive_fraction_sum[rate])) / "
                                              "sum(rate(hap_router_expressive_fraction_count[rate]))", "mean"),),
              "percentunit"),
        Panel("Served version", (("max(hap_router_model_version)", "version"),), "none", "stat"),
        Panel("Model age", (("max(hap_router_model_age_seconds)", "age"),), "s"),
        Panel("Model swaps", (("sum(rate(hap_router_swaps_total[rate]))", "swaps/s"),), "ops"),
        Panel("Swap time (p99)", ((quantile(0.99, "hap_router_swap_seconds"), "p99"),), "s"),
        Panel("Errors by kind", (("sum by (kind) (rate(hap_router_errors_total[rate]))", "{{kind}}"),), "ops"),
    ])


def all_dashboards() -> list[dict[str, Any]]:
    return [pipeline(), freshness(), learner(), router()]


def all_queries(rate_interval: str | None = None) -> list[tuple[str, str, str]]:
    """Every panel query as ``(dashboard, panel title, PromQL)``; with ``rate_interval`` (e.g. ``1m``)
    in place of Grafana's ``$__rate_interval``, as Grafana sends it to Prometheus."""
    out = [(d["title"], p["title"], t["expr"]) for d in all_dashboards() for p in d["panels"] for t in p["targets"]]
    if rate_interval is None:
        return out
    return [(d, p, e.replace("$__rate_interval", rate_interval)) for d, p, e in out]
