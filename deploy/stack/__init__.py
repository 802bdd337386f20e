"""The local stack: Kafka in KRaft mode (``settings.kafka_brokers`` nodes), Redis and Prometheus
under one data dir.

Lifecycle: :meth:`Stack.up` starts what is not running, waits until each service answers,
and records the endpoints (and the count of brokers) in ``<data_dir>/endpoints.json`` (which
every `hap` command reads). :meth:`Stack.down` stops exactly the processes whose pid files ``up`` wrote.
Services given by the Kafka bootstrap / Redis URL settings are used as they are and
never started or stopped.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

from deploy.settings import BROKERS_KEY, ENDPOINTS_FILE, Settings, read_endpoints
from deploy.stack.process import ManagedProcess, StackError
from deploy.stack.services import (
    Kafka,
    Prometheus,
    Redis,
    Service,
    kafka_answers,
    redis_answers,
)

__all__ = ["Stack", "StackError", "ServiceStatus"]


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    endpoint: str
    managed: bool
    running: bool
    healthy: bool


class Stack:
    """The services of one data dir; ``with_prometheus=False`` for test fixtures."""

    def __init__(self, settings: Settings, with_prometheus: bool = True) -> None:
        self.settings = settings
        self.services: list[Service] = []
        if not settings.external_kafka:
            self.services.extend(Kafka(settings, node) for node in range(settings.kafka_brokers))
        if not settings.external_redis:
            self.services.append(Redis(settings))
        if with_prometheus:
            self.services.append(Prometheus(settings))

    def up(self) -> dict[str, str]:
        """Start every managed service; return the endpoints once all are healthy."""
        running = read_endpoints(self.settings.data_dir)
        if self.brokers and running and int(running.get(BROKERS_KEY, 1)) != len(self.brokers):
            raise StackError(f"a stack of {running.get(BROKERS_KEY, 1)} broker(s) runs in {self.settings.data_dir}: "
                             "`hap stack down` it first")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        # together: a Kafka node answers once a quorum of its voters runs; the nodes are prepared (their
        # storage formatted, a JVM each) side by side, then the other services launched unless a node failed
        with ThreadPoolExecutor(max_workers=len(self.brokers) or 1) as pool:
            launches = [pool.submit(node.launch) for node in self.brokers]
        for launch in launches:
            launch.result()  # the first node's error, as when they were launched one by one
        for service in self.services:
            if not isinstance(service, Kafka):
                service.launch()
        for service in self.services:
            service.wait_healthy(timeout_s=60.0 * (2 if isinstance(service, Kafka) else 1))
        endpoints = self.endpoints()
        recorded = {**endpoints, BROKERS_KEY: str(self.settings.kafka_brokers)} if self.brokers else endpoints
        (self.settings.data_dir / ENDPOINTS_FILE).write_text(json.dumps(recorded, indent=2))
        return endpoints

    @property
    def brokers(self) -> list[Kafka]:
        """The Kafka nodes this stack manages (none with an external cluster)."""
        return [s for s in self.services if isinstance(s, Kafka)]

    def down(self) -> list[str]:
        """Stop the services this data dir started; return their names. Every Kafka node the data dir
        holds is stopped, whatever count the settings give (an `up` that failed recorded none)."""
        processes = [s.process for s in reversed(self.services)]
        if self.brokers:
            known = {b.name for b in self.brokers}
            processes[:0] = [ManagedProcess(d.name, d) for d in sorted(self.settings.data_dir.glob("kafka-*"))
                             if d.is_dir() and d.name not in known]
        # the Kafka nodes together: stopped one by one, the last nodes lose their controller quorum and wait
        # (20 s each, then SIGKILL) for a controlled shutdown no controller can grant
        nodes = [p for p in processes if p.name == "kafka" or p.name.startswith("kafka-")]
        with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
            stops = dict(zip([p.name for p in nodes], pool.map(ManagedProcess.stop, nodes), strict=True))
        stopped = [p.name for p in processes if (stops[p.name] if p.name in stops else p.stop())]
        (self.settings.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        return stopped

    def endpoints(self) -> dict[str, str]:
        s = self.settings
        endpoints = {"kafka.bootstrap": s.kafka_bootstrap, "redis.url": s.redis.redacted()}
        if self.brokers:
            endpoints["kafka.bootstrap"] = ",".join(b.endpoint() for b in self.brokers)
        for service in self.services:
            if service.name in ("redis", "prometheus"):
                endpoints[f"{service.name}.url"] = service.endpoint()
        return endpoints

    def status(self) -> list[ServiceStatus]:
        """Health of each service, managed or external."""
        out = [
            ServiceStatus(s.name, s.endpoint(), True, s.process.pid() is not None, s.healthy())
            for s in self.services
        ]
        if self.settings.external_kafka:
            b = self.settings.kafka_bootstrap
            out.append(ServiceStatus("kafka", b, False, True, kafka_answers(b, self.settings.kafka_security)))
        if self.settings.external_redis:
            r = self.settings.redis
            out.append(ServiceStatus("redis", r.redacted(), False, True, redis_answers(r)))
        return out
