"""Prometheus metrics of the router."""

from prometheus_client import Counter, Gauge, Histogram

FRESH_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
#: from the moment the request's body has been read to the answer (queueing and upload are not in it)
REQUEST_SECONDS = Histogram("hap_router_request_seconds", "Pre-ranking service time, from the body read to the answer",
                            ["policy"], buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                                                 0.1, 0.25, 0.5, 1, 2.5, 5))
READ_SECONDS = Histogram("hap_router_body_read_seconds", "From the handler's start to the body read (upload)",
                         buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
LOOP_LAG = Histogram("hap_router_event_loop_lag_seconds",
                     "How late the event loop runs a 50 ms timer: what a request arriving now would queue",
                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
#: each stage of a pre-ranking request (router.timing.STAGES): decode, features, tiers, rank, encode
STAGE_SECONDS = Histogram("hap_router_stage_seconds", "Seconds of each stage of a pre-ranking request", ["stage"],
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025,
                                   0.05, 0.1, 0.5))
FEATURE_EVICTIONS = Counter("hap_router_feature_evictions", "Item rows evicted from the feature table (full)")
CANDIDATES = Histogram("hap_router_candidates", "Candidates per request",
                       buckets=(10, 100, 250, 500, 1000, 2000, 3000, 5000))
EXPRESSIVE_FRACTION = Histogram("hap_router_expressive_fraction", "Share of candidates scored by the expressive tier",
                                buckets=(0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))
# with several workers (multiprocess mode) a gauge reports its worst live worker: the oldest version
VERSION = Gauge("hap_router_model_version", "Model version being served", multiprocess_mode="livemin")
MODEL_AGE = Gauge("hap_router_model_age_seconds", "Now minus the served version's trained-until event time",
                  multiprocess_mode="livemax")
PINNED = Gauge("hap_router_model_pinned", "1 while the served version is the one pinned (hap models pin)",
               multiprocess_mode="livemax")
#: the seconds since the model store (Redis) last answered the swap loop's read: not the model's age
STORE_CONTACT_AGE = Gauge("hap_router_model_store_contact_age_seconds",
                          "Seconds since the model store last answered the router (it polls every few seconds)",
                          multiprocess_mode="livemax")
#: deprecated: the old name of STORE_CONTACT_AGE (same value), exported for one more release
STALENESS = Gauge("hap_router_staleness_seconds", "Deprecated: hap_router_model_store_contact_age_seconds",
                  multiprocess_mode="livemax")
FRESHNESS = Histogram("hap_router_freshness_seconds", "Sample group finalized -> served by a version trained on it",
                      buckets=FRESH_BUCKETS)
MODEL_AGE_AT_LOAD = Histogram("hap_router_model_age_at_load_seconds",
                              "Request event time -> served by a version trained on its group", buckets=FRESH_BUCKETS)
PUBLISHED_TO_LOADED = Histogram("hap_router_published_to_loaded_seconds", "Version published -> serving",
                                buckets=FRESH_BUCKETS)
SWAPS = Counter("hap_router_swaps", "Model versions swapped in")
SWAP_SECONDS = Histogram("hap_router_swap_seconds", "Time to load and swap a version",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
ERRORS = Counter("hap_router_errors", "Errors by kind", ["kind"])
#: every answer, errors included; ``path``: the route (``other`` for a path the router does not serve)
RESPONSES = Counter("hap_router_responses", "HTTP responses by route and status code", ["path", "code"])
MISSING = Counter("hap_router_missing_features", "Features that fell back to defaults", ["kind"])
