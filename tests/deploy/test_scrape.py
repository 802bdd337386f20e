"""Reading a component's /metrics: totals, per-label sums and histogram quantiles."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from deploy.scrape import parse_metrics


def test_totals_labels_and_quantiles_match_what_was_observed():
    registry = CollectorRegistry()
    samples = Counter("hap_t_samples", "s", ["source"], registry=registry)
    samples.labels("gn").inc(4)
    samples.labels("rn").inc(1)
    lag = Histogram("hap_t_lag_seconds", "l", buckets=(1, 2, 4, 8), registry=registry)
    for value in [0.5] * 50 + [3.0] * 49 + [7.0]:
        lag.observe(value)
    m = parse_metrics(generate_latest(registry).decode())
    assert m.total("hap_t_samples_total") == 5
    assert m.by_label("hap_t_samples_total", "source") == {"gn": 4, "rn": 1}
    assert m.quantile("hap_t_lag_seconds", 0.5) == 1.0
    assert 2.0 < m.quantile("hap_t_lag_seconds", 0.9) < 4.0
    assert 4.0 < m.quantile("hap_t_lag_seconds", 0.999) <= 8.0
    assert m.quantile("hap_t_missing_seconds", 0.5) is None
