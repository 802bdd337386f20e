"""The N-rank learner's Kubernetes form, offline: `kubectl kustomize deploy/k8s-learner-ranks` (the
base with the learner as torchrun nodes) renders, its learner validates against the Kubernetes
schemas, and its ranks agree with its replicas (skipped without kubectl, as tests/deploy/test_k8s.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

OVERLAY = Path(__file__).resolve().parents[2] / "deploy" / "k8s-learner-ranks"


def test_the_learner_ranks_overlay_renders_a_valid_torchrun_job():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the overlay cannot be rendered here")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    learner, service = docs["StatefulSet", "hap-learner"], docs["Service", "hap-learner"]
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    for doc in (learner, service):
        kubernetes_validate.validate(doc, latest_version(), strict=True)
    spec = learner["spec"]
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["torchrun"] and args[args.index("-m"):][:3] == ["-m", "deploy.cli", "learner"]
    assert f"--nnodes={spec['replicas']}" in args and spec["replicas"] > 1
    assert spec["podManagementPolicy"] == "Parallel"  # every rank starts at once: the rendezvous needs all
    # rank r is pod r: rank 0, the writer, keeps pod 0's checkpoint volume
    env = {e["name"]: e for e in container["env"]}
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert f"--master-addr=hap-learner-0.{spec['serviceName']}" in args
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"] for p in container["ports"]} == {"metrics", "rendezvous"}
