"""The chart installed, upgraded and uninstalled on a real API server.

`helm template` and schema checks cannot see what only an API server does:
objects sent to a namespace that does not exist, custom resources without
their CRDs, fields the server rejects, a Deployment whose selector does not
match its pods. Here every ci/*-values.yaml scenario goes through
`helm install`, `helm upgrade` and `helm uninstall` against kube-apiserver
with etcd and kube-controller-manager (tests/deploy/control_plane.py); the
pinned CRDs in tests/deploy/crds/ are applied first.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, CI_VALUES
from tests.deploy.control_plane import (
    ControlPlane,
    find_binaries,
    log_tail,
    resource_path,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

CRDS = Path(__file__).resolve().parent / "crds"
SCENARIOS = sorted(f.name.removesuffix("-values.yaml") for f in CI_VALUES.glob("*-values.yaml"))
# What a cluster has before the chart arrives, as the scenarios expect it:
# the namespace all-options deploys into (namespaceOverride), the one the
# Prometheus stack lives in, and the PriorityClass all-options names.
NAMESPACES = ("game-analytics", "monitoring")
PRIORITY_CLASS = "gr-high"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    binaries = find_binaries()
    if binaries is None:
        message = "no control plane: run scripts/k8s-tools.sh (builds kube-apiserver, fetches etcd)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so a missing control plane is a failure)")
        pytest.skip(message)
    with running(binaries, tmp_path_factory.mktemp("k8s")) as cp:
        yield cp


@pytest.fixture(scope="module")
def cluster(plane: ControlPlane) -> ControlPlane:
    """The control plane with the CRDs established and the scenarios' prerequisites."""
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        plane.api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    for path in sorted(CRDS.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        wait_for(lambda name=name: _established(plane, name), 60, f"CRD {name} established")
    for ns in NAMESPACES:
        plane.api.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        )
    plane.api.create(
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": PRIORITY_CLASS},
            "value": 100000,
        },
    )
    return plane


def _established(plane: ControlPlane, name: str) -> bool:
    crd = plane.api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conditions = crd.get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def helm_run(helm: Path, plane: ControlPlane, *args: str) -> str:
    proc = subprocess.run(
        [str(helm), *args, "--kubeconfig", str(plane.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # helm's own state stays with this control plane, not in the user's home.
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(plane.workdir / "helm-cache"),
            "HELM_CONFIG_HOME": str(plane.workdir / "helm-config"),
            "HELM_DATA_HOME": str(plane.workdir / "helm-data"),
        },
    )
    assert proc.returncode == 0, (
        f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n"
        f"--- kube-apiserver log ---\n{log_tail(plane, 'kube-apiserver')}"
    )
    return proc.stdout


def manifest(helm: Path, plane: ControlPlane, release: str, namespace: str) -> list[dict[str, Any]]:
    text = helm_run(helm, plane, "get", "manifest", release, "--namespace", namespace)
    return [d for d in yaml.safe_load_all(text) if d]


def owned(plane: ControlPlane, path: str, owner_kind: str, owner_uid: str) -> list[dict[str, Any]]:
    return [
        item
        for item in plane.api.items(path)
        if any(
            ref["kind"] == owner_kind and ref["uid"] == owner_uid
            for ref in item["metadata"].get("ownerReferences", [])
        )
    ]


def test_the_control_plane_is_the_pinned_release(cluster: ControlPlane) -> None:
    go_mod = (Path(__file__).resolve().parent / "k8s" / "go.mod").read_text()
    assert f"k8s.io/kubernetes {cluster.version}" in go_mod


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_install_upgrade_uninstall(helm: Path, cluster: ControlPlane, scenario: str) -> None:
    api = cluster.api
    release = f"gr-{scenario}"
    namespace = f"rel-{scenario}"
    values = str(CI_VALUES / f"{scenario}-values.yaml")
    helm_run(helm, cluster, "install", release, str(CHART), "--namespace", namespace,
             "--create-namespace", "-f", values)  # fmt: skip

    # Every object the release holds is on the server, where the chart meant it.
    docs = manifest(helm, cluster, release, namespace)
    chart_ns = yaml.safe_load(Path(values).read_text()).get("namespaceOverride") or namespace
    for doc in docs:
        path = resource_path(doc, namespace)
        assert api.exists(path), f"{doc['kind']} {doc['metadata']['name']} missing at {path}"
        if doc["kind"] not in {"PriorityClass"}:
            assert doc["metadata"].get("namespace", chart_ns) == chart_ns, (
                f"{doc['kind']} {doc['metadata']['name']} in {doc['metadata'].get('namespace')}, "
                f"not the release's {chart_ns}"
            )

    # kube-controller-manager makes the Deployment a ReplicaSet, and that Pods.
    (dep_doc,) = [d for d in docs if d["kind"] == "Deployment"]
    dep_path = resource_path(dep_doc, namespace)
    dep = api.get(dep_path)
    rs_list = f"/apis/apps/v1/namespaces/{chart_ns}/replicasets"
    (rs,) = wait_for(
        lambda: owned(cluster, rs_list, "Deployment", dep["metadata"]["uid"]),
        60,
        f"a ReplicaSet of {dep_path}",
    )
    assert rs["spec"]["replicas"] == dep["spec"]["replicas"] >= 1
    pods_path = f"/api/v1/namespaces/{chart_ns}/pods"

    def rs_pods() -> list[dict[str, Any]]:
        found = owned(cluster, pods_path, "ReplicaSet", rs["metadata"]["uid"])
        return found if len(found) == rs["spec"]["replicas"] else []

    pods = wait_for(rs_pods, 60, f"the pods of ReplicaSet {rs['metadata']['name']}")
    for pod in pods:  # the pod the chart asked for, as admitted by the server
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["automountServiceAccountToken"] is False

    # An upgrade that changes the configuration rolls the workers: a new ReplicaSet.
    helm_run(helm, cluster, "upgrade", release, str(CHART), "--namespace", namespace,
             "-f", values, "--set", "log.level=WARNING")  # fmt: skip
    status = helm_run(helm, cluster, "status", release, "--namespace", namespace, "-o", "json")
    assert yaml.safe_load(status)["version"] == 2
    (cm_doc,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "GR_LOG_LEVEL" in d.get("data", {})
    ]
    assert api.get(resource_path(cm_doc, namespace))["data"]["GR_LOG_LEVEL"] == "WARNING"
    wait_for(
        lambda: len(owned(cluster, rs_list, "Deployment", dep["metadata"]["uid"])) == 2,
        60,
        "a second ReplicaSet after the upgrade",
    )
    revision = api.get(dep_path)["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
    assert revision == "2"

    # Uninstall leaves nothing: the objects, and what the controllers made from them.
    helm_run(helm, cluster, "uninstall", release, "--namespace", namespace)
    for doc in docs:
        path = resource_path(doc, namespace)
        wait_for(lambda path=path: not api.exists(path), 60, f"{path} deleted")
    wait_for(
        lambda: not owned(cluster, rs_list, "Deployment", dep["metadata"]["uid"]),
        120,
        "the ReplicaSets garbage-collected",
    )
    wait_for(
        lambda: (
            not [
                p
                for p in api.items(f"/api/v1/namespaces/{chart_ns}/pods")
                if p["metadata"]["labels"].get("app.kubernetes.io/instance") == release
            ]
        ),
        120,
        "the pods garbage-collected",
    )


@pytest.mark.timeout(300)
def test_dashboard_and_service_monitor_go_where_asked(helm: Path, cluster: ControlPlane) -> None:
    """By default the release namespace; another one (that exists) when asked for."""
    release, namespace = "gr-monitoring", "rel-monitoring"
    kinds = {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    values = [
        "-f", str(CI_VALUES / "default-values.yaml"),
        "--set", "grafanaDashboard.enabled=true",
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.prometheusRule.enabled=true",
    ]  # fmt: skip

    def placed() -> dict[str, str]:
        return {
            d["kind"]: d["metadata"]["namespace"]
            for d in manifest(helm, cluster, release, namespace)
            if d["kind"] in kinds
            and (d["kind"] != "ConfigMap" or d["metadata"]["name"].endswith("-dashboard"))
        }

    helm_run(helm, cluster, "install", release, str(CHART), "--namespace", namespace,
             "--create-namespace", *values)  # fmt: skip
    assert placed() == dict.fromkeys(kinds, namespace)

    elsewhere = [
        "--set", "grafanaDashboard.namespace=monitoring",
        "--set", "metrics.serviceMonitor.namespace=monitoring",
        "--set", "metrics.prometheusRule.namespace=monitoring",
    ]  # fmt: skip
    helm_run(helm, cluster, "upgrade", release, str(CHART), "--namespace", namespace,
             *values, *elsewhere)  # fmt: skip
    assert placed() == dict.fromkeys(kinds, "monitoring")
    for doc in manifest(helm, cluster, release, namespace):
        if doc["kind"] in kinds and doc["metadata"]["namespace"] == "monitoring":
            assert cluster.api.exists(resource_path(doc))
        if doc["kind"] == "ServiceMonitor":  # it still scrapes the release's Service
            assert doc["spec"]["namespaceSelector"]["matchNames"] == [namespace]
    helm_run(helm, cluster, "uninstall", release, "--namespace", namespace)
