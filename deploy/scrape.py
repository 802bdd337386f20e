"""Read a component's ``/metrics`` endpoint into plain numbers (for the demo and tests).

Examples
--------
>>> text = 'hap_x_total{source="gn"} 3.0\\nhap_x_total{source="rn"} 2.0\\n'
>>> m = parse_metrics(text)
>>> m.total("hap_x_total"), m.by_label("hap_x_total", "source")["gn"]
(5.0, 3.0)
>>> parse_metrics('hap_x_total{source="gn"} 7.0\\nhap_x_total{source="rn"} 1.0\\n').since(m).total("hap_x_total")
5.0
"""

from __future__ import annotations

import dataclasses
import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

MAX_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Metrics:
    """Samples of one scrape: ``(name, labels) -> value``."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.samples.items() if n == name and want <= set(lab))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Values of ``name`` summed per value of ``label``."""
        out: dict[str, float] = {}
        for (n, lab), v in self.samples.items():
            key = dict(lab).get(label)
            if n == name and key is not None:
                out[key] = out.get(key, 0.0) + v
        return out

    def quantile(self, histogram: str, q: float, **labels: str) -> float | None:
        """``q``-quantile of a histogram, interpolated within its buckets (None when empty)."""
        want = set(labels.items())
        buckets: dict[float, float] = {}
        for (n, lab), v in self.samples.items():
            if n == f"{histogram}_bucket" and want <= set(lab):
                le = float(dict(lab)["le"])
                buckets[le] = buckets.get(le, 0.0) + v
        if not buckets or buckets.get(math.inf, 0.0) == 0:
            return None
        bounds = sorted(buckets)
        rank = q * buckets[math.inf]
        lower, below = 0.0, 0.0
        for upper in bounds:
            count = buckets[upper]
            if count >= rank:
                if math.isinf(upper):
                    return lower
                return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
            lower, below = upper, count
        return lower


    def since(self, earlier: Metrics) -> Metrics:
        """What counters and histogram buckets accumulated after ``earlier`` (e.g. a histogram's
        quantile over one interval); a counter that went down was reset by a restart, so all of
        its value is new. Not meaningful for gauges."""
        return Metrics({key: v - e if v >= (e := earlier.samples.get(key, 0.0)) else v
                        for key, v in self.samples.items()})


def parse_metrics(text: str) -> Metrics:
    """Parse Prometheus text exposition format."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return Metrics(samples)


def scrape(url: str, timeout_s: float = 2.0) -> Metrics:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it; raises ``OSError`` when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return parse_metrics(resp.read(MAX_BYTES).decode())
