"""What the chart's pods need around the node: a Kafka broker they can reach, the image in
the node's runtime, the CRDs, and helpers to install releases and watch their pods.

The broker is the project's local Apache Kafka (gr_devtools.kafka_local) with two
more listeners on the node's bridge address: PLAINTEXT for most scenarios, and
SASL_SSL with SCRAM-SHA-512 and a certificate for that address for the documented
install (which turns both on). Tests on the host use the usual 127.0.0.1 listener.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import urllib3
import yaml

from gr_devtools.kafka_local import LocalKafka, create_topic, free_port
from tests.deploy.conftest import CHART
from tests.deploy.control_plane import find_binaries
from tests.deploy.node import GATEWAY, Node, NodeError, find_node_binaries

CRDS = Path(__file__).resolve().parent / "crds"
IMAGE_TAG = "check"  # the tag the chart's pods run; "check-2" is the upgrade's
API_KEY = "node-key-3c9e1f"
SCRAM_USER, SCRAM_PASSWORD = "gr-consumer", "node-scram-pw-7d21"
STORE_PASSWORD = "node-keystore-5a1b"


@dataclass
class PodKafka:
    """LocalKafka plus listeners on the bridge address, for pods."""

    broker: LocalKafka
    pod_port: int
    pod_scram_port: int
    ca_pem: Path

    @property
    def bootstrap(self) -> str:  # for the tests, on the host
        return self.broker.bootstrap

    @property
    def pod_bootstrap(self) -> str:
        return f"{GATEWAY}:{self.pod_port}"

    @property
    def pod_scram_bootstrap(self) -> str:
        return f"{GATEWAY}:{self.pod_scram_port}"


def start_pod_kafka(data_dir: Path) -> PodKafka:
    tls = data_dir / "pod-tls"
    tls.mkdir(parents=True, exist_ok=True)
    store = tls / "broker.p12"
    ca_pem = tls / "broker.pem"
    keystore = ["-keystore", str(store), "-storetype", "PKCS12", "-storepass", STORE_PASSWORD]
    for args in (
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
         "-dname", "CN=gr-node-kafka", "-ext", f"SAN=IP:{GATEWAY},IP:127.0.0.1,DNS:localhost",
         "-validity", "2", "-keypass", STORE_PASSWORD, *keystore],
        ["-exportcert", "-alias", "broker", "-rfc", "-file", str(ca_pem), *keystore],
    ):  # fmt: skip
        subprocess.run(["keytool", *args], check=True, capture_output=True, timeout=120)
    broker = LocalKafka(data_dir=data_dir / "broker", scram_users={SCRAM_USER: SCRAM_PASSWORD})
    pod_port, pod_scram_port = free_port(), free_port()
    b = broker
    props = {
        "listeners": ",".join([
            f"PLAINTEXT://127.0.0.1:{b.port}", f"CONTROLLER://127.0.0.1:{b.controller_port}",
            f"SCRAM://127.0.0.1:{b.scram_port}", f"POD://{GATEWAY}:{pod_port}",
            f"PODSCRAM://{GATEWAY}:{pod_scram_port}",
        ]),
        "advertised.listeners": ",".join([
            f"PLAINTEXT://127.0.0.1:{b.port}", f"SCRAM://127.0.0.1:{b.scram_port}",
            f"POD://{GATEWAY}:{pod_port}", f"PODSCRAM://{GATEWAY}:{pod_scram_port}",
        ]),
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SCRAM:SASL_SSL,POD:PLAINTEXT,"
            "PODSCRAM:SASL_SSL"
        ),
        "listener.name.podscram.sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.podscram.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.location": str(store),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.password": STORE_PASSWORD,
        "ssl.key.password": STORE_PASSWORD,
    }  # fmt: skip
    broker.extra_properties.update(props)
    broker.start(timeout_s=120)
    return PodKafka(broker, pod_port, pod_scram_port, ca_pem)


@dataclass
class NodeEnv:
    node: Node
    kafka: PodKafka
    helm: Path
    image: str
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    closed: bool = False

    @property
    def api(self) -> Any:
        return self.node.api

    def close(self) -> None:
        """Workloads first (pods drain against the live broker), then the broker, then the
        node. Idempotent: the teardown test calls it before the fixture does."""
        if self.closed:
            return
        self.closed = True
        self.node.delete_workloads()
        self.kafka.broker.destroy()
        self.node.close()

    def helm_run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        proc = subprocess.run(
            [str(self.helm), *args, "--kubeconfig", str(self.node.kubeconfig)],
            capture_output=True, text=True, timeout=timeout, check=False, env=self.helm_env(),
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def helm_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HELM_CACHE_HOME": str(self.workdir / "helm-cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm-config"),
            "HELM_DATA_HOME": str(self.workdir / "helm-data"),
        }

    def install(self, release: str, namespace: str, values: dict[str, Any], *extra: str) -> None:
        path = self.workdir / f"values-{namespace}-{release}-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(values))
        self.helm_run("upgrade", "--install", release, str(CHART), "--namespace", namespace,
                      "--create-namespace", "-f", str(path), "--wait", "--timeout", "300s",
                      *extra)  # fmt: skip

    def pods(self, namespace: str, release: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.items(f"/api/v1/namespaces/{namespace}/pods")
        if release is not None:
            items = [
                p for p in items
                if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == release
            ]  # fmt: skip
        return items

    def logs(self, namespace: str, pod: str, previous: bool = False) -> str:
        args = ["-n", namespace, "logs", pod]
        if previous:
            args.append("--previous")
        return self.node.kubectl(*args, check=False)


def report(line: str) -> None:
    """A result line of the node tests: printed, and kept in GR_NODE_REPORT when set
    (deploy-check.sh shows that file at the end, since pytest captures the output)."""
    print(f"\n{line}")
    path = os.environ.get("GR_NODE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def restarts(pod: dict[str, Any]) -> int:
    return sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses", []))


def base_values(
    env: NodeEnv,
    sim_url: str,
    topic: str,
    group: str,
    partitions: int,
    replicas: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """A release of the chart against the node's broker and a simulator on the bridge."""
    values: dict[str, Any] = {
        "image": {"repository": "gr-s2s-consumer", "tag": IMAGE_TAG},
        "replicaCount": replicas,
        "kafka": {
            "bootstrapServers": env.kafka.pod_bootstrap,
            "topics": [topic],
            "groupId": group,
            "dlqTopic": f"{topic}.dlq",
            "partitions": partitions,
        },
        "api": {"baseUrl": sim_url, "key": API_KEY},
        "batch": {"lingerMs": 100},
        "shutdownTimeoutSeconds": 15,
        "terminationGraceMarginSeconds": 10,
        # The simulator speaks http; retries fast, for short tests.
        "extraEnv": [
            {"name": "GR_ALLOW_INSECURE_HTTP", "value": "true"},
            {"name": "GR_RETRY_INITIAL_S", "value": "0.1"},
            {"name": "GR_RETRY_MAX_S", "value": "2"},
        ],
        "readinessProbe": {"periodSeconds": 2, "failureThreshold": 2},
        "startupProbe": {"periodSeconds": 2, "failureThreshold": 60},
        # Small requests: a two-core node holds several releases at once.
        "resources": {
            "requests": {"cpu": "50m", "memory": "96Mi"},
            "limits": {"cpu": "1", "memory": "384Mi"},
        },
    }
    for key, value in extra.items():
        values[key] = value
    return values


def new_topic(env: NodeEnv, prefix: str, partitions: int, dlq: bool = True) -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:6]}"
    create_topic(env.kafka.bootstrap, topic, partitions)
    if dlq:
        create_topic(env.kafka.bootstrap, f"{topic}.dlq", 1)
    return topic


@dataclass
class Termination:
    pod: str
    container: str
    exit_code: int
    reason: str
    signal: int | None


class PodWatch:
    """Every container termination in a namespace, from the API's watch stream: a pod's
    final status (its exit code) is written by the kubelet just before the object goes."""

    def __init__(self, env: NodeEnv, namespace: str) -> None:
        self.env = env
        self.namespace = namespace
        self.terminations: dict[tuple[str, str], Termination] = {}
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        api = self.env.api
        http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(self.env.node.plane.ca))  # type: ignore[union-attr]
        headers = {"Authorization": api._headers["Authorization"]}
        version = ""  # each watch goes on from the last event seen: no gap between them
        while not self._stop.is_set():
            url = f"{api.url}/api/v1/namespaces/{self.namespace}/pods?watch=1&timeoutSeconds=5"
            if version:
                url += f"&resourceVersion={version}&allowWatchBookmarks=true"
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                resp = http.request("GET", url, headers=headers, preload_content=False,
                                    timeout=urllib3.Timeout(connect=5, read=10))  # fmt: skip
                buf = b""
                for chunk in resp.stream(4096):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            event = orjson.loads(line)
                            if event.get("type") == "ERROR":  # too old: list afresh
                                version = ""
                                continue
                            version = event["object"]["metadata"].get("resourceVersion", version)
                            self._event(event)
                resp.release_conn()

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "BOOKMARK":
            return
        pod = event.get("object", {})
        name = pod.get("metadata", {}).get("name")
        if not name:
            return
        self.seen.add(name)
        for status in pod.get("status", {}).get("containerStatuses", []) or []:
            for state in (status.get("state", {}), status.get("lastState", {})):
                term = state.get("terminated")
                if term:
                    key = (name, term.get("containerID", status["name"]))
                    self.terminations[key] = Termination(
                        name, status["name"], term["exitCode"], term.get("reason", ""),
                        term.get("signal"),
                    )  # fmt: skip

    def exit_codes(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for t in self.terminations.values():
            out.setdefault(t.pod, []).append(t.exit_code)
        return out


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every)


def apply_crds(node: Node) -> None:
    api = node.api
    for path in sorted(CRDS.glob("*.yaml")):
        api.create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            yaml.safe_load(path.read_text()),
        )
    for path in sorted(CRDS.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]

        def established(name: str = name) -> bool:
            crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return any(
                c["type"] == "Established" and c["status"] == "True"
                for c in crd.get("status", {}).get("conditions", [])
            )

        wait_for(established, 60, f"CRD {name}")


@contextlib.contextmanager
def node_env(workdir: Path, helm: Path, image: str) -> Iterator[NodeEnv]:
    """The node, the broker on its bridge, the CRDs and the image (tagged check and check-2,
    and under the documentation's registry name) in its containerd."""
    binaries, node_bins = find_binaries(), find_node_binaries()
    if binaries is None or node_bins is None:
        raise NodeError("no node binaries: run scripts/k8s-tools.sh")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    node = Node(binaries, node_bins, workdir / "node").start()
    timings["node start"] = node.started_s
    if node.swept:
        report(f"[node] took away what a dead node left: {'; '.join(node.swept)}")
    env: NodeEnv | None = None
    try:
        t = time.monotonic()
        node.own(workdir / "kafka")
        kafka = start_pod_kafka(workdir / "kafka")
        timings["broker"] = time.monotonic() - t
        env = NodeEnv(node, kafka, helm, image, workdir, timings)
        t = time.monotonic()
        node.import_image(
            image,
            f"gr-s2s-consumer:{IMAGE_TAG}",
            "gr-s2s-consumer:check-2",
            "registry.example.com/games/gr-s2s-consumer:0.1.0",
        )
        timings["image import"] = time.monotonic() - t
        apply_crds(node)
        timings["total set-up"] = time.monotonic() - t0
        yield env
    finally:
        if env is not None:
            env.close()
        else:
            node.close()
