"""The four dashboards: pipeline overview, freshness, learner, router."""

from __future__ import annotations

from typing import Any

from deploy.dashboards.panels import Panel, dashboard, quantile


def pipeline() -> dict[str, Any]:
    return dashboard("hap-pipeline", "HAP pipeline overview", [
        Panel("Events in by topic", (("sum by (topic) (rate(hap_streams_events_total[1m]))", "{{topic}}"),), "ops"),
        Panel("Sample groups out", (("sum by (kind) (rate(hap_streams_groups_total[1m]))", "{{kind}}"),), "ops"),
        Panel("Samples by source", (("sum by (source) (rate(hap_streams_samples_total[1m]))", "{{source}}"),), "ops"),
        Panel("Pending requests (join window open)", (("sum(hap_streams_pending_requests)", "pending"),)),
        Panel("Dead letters by reason", (("sum by (reason_kind) (rate(hap_streams_invalid_total[5m]))",
                                          "{{reason_kind}}"),), "ops"),
        Panel("Late events", (("sum by (outcome) (rate(hap_streams_late_total[5m]))", "{{outcome}}"),), "ops"),
        Panel("Learner lag behind the newest event", (("max(hap_learner_trained_until_lag_seconds)", "lag"),), "s"),
        Panel("Missing features (defaults used)", (
            ("sum by (kind) (rate(hap_feature_store_missing_total[5m]))", "streams {{kind}}"),
            ("sum by (kind) (rate(hap_router_missing_features_total[5m]))", "router {{kind}}")), "ops"),
        Panel("Dependency failures (Redis, Kafka) and what they cost", (
            ("sum by (kind) (rate(hap_streams_errors_total[5m]))", "streams {{kind}}"),
            ("sum(rate(hap_learner_publish_errors_total[5m]))", "learner publish failed")), "ops"),
        Panel("Streams workers replaced after a stall", (("sum(hap_streams_worker_restarts)", "restarts"),),
              "none", "stat"),
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
        Panel("Samples/s and steps/s", (("rate(hap_learner_samples_total[1m])", "samples/s"),
                                        ("rate(hap_learner_steps_total[1m])", "steps/s")), "ops"),
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
        Panel("Requests/s", (("sum by (policy) (rate(hap_router_request_seconds_count[1m]))", "{{policy}}"),), "reqps"),
        Panel("Candidates per request (p50)", ((quantile(0.5, "hap_router_candidates"), "p50"),)),
        Panel("Expressive fraction (mean)", (("sum(rate(hap_router_expressive_fraction_sum[1m])) / "
                                              "sum(rate(hap_router_expressive_fraction_count[1m]))", "mean"),),
              "percentunit"),
        Panel("Served version", (("max(hap_router_model_version)", "version"),), "none", "stat"),
        Panel("Model age", (("max(hap_router_model_age_seconds)", "age"),), "s"),
        Panel("Swaps and swap time", (("rate(hap_router_swaps_total[5m])", "swaps/s"),
                                      (quantile(0.99, "hap_router_swap_seconds"), "p99 swap s")), "short"),
        Panel("Errors by kind", (("sum by (kind) (rate(hap_router_errors_total[5m]))", "{{kind}}"),), "ops"),
    ])


def all_dashboards() -> list[dict[str, Any]]:
    return [pipeline(), freshness(), learner(), router()]


def all_queries() -> list[tuple[str, str, str]]:
    """Every panel query as ``(dashboard, panel title, PromQL)``."""
    return [(d["title"], p["title"], t["expr"]) for d in all_dashboards() for p in d["panels"] for t in p["targets"]]
