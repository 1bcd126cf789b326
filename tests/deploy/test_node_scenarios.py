"""The chart's pods on a real node: what reached the API, and what the group committed.

Every scenario runs the image the deploy check built, under the kubelet, against the
local Kafka broker and the API simulator (both on the node's bridge address), and
judges the outcome by what the simulator accepted (every event's sequence number:
none missing, duplicates counted) and by the group's committed offsets.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from confluent_kafka import Producer

from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.deploy.conftest import ROOT
from tests.deploy.node import GATEWAY
from tests.deploy.node_env import (
    API_KEY,
    SCRAM_PASSWORD,
    NodeEnv,
    PodWatch,
    base_values,
    new_topic,
    pod_ready,
    restarts,
    wait_for,
)
from tests.deploy.node_env import (
    report as report_line,
)
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import committed

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "deploy.md"
# What a site changes in the documented install: its brokers. Everything else in the
# block runs as written.
DOC_BROKERS = "b-1.kafka.example.com:9096,b-2.kafka.example.com:9096"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(host=GATEWAY, keys=[API_KEY], limit_per_window=None) as s:
        yield s


def seqs(sim: Simulator) -> collections.Counter[int]:
    return collections.Counter(seq_of(e) for e in sim.accepted_events())


class Feeder(threading.Thread):
    """Produces events start..start+n-1 at about `rate` a second, event i to partition
    i % P: of a fresh topic fed only this way, event i sits at offset i // P."""

    def __init__(self, env: NodeEnv, topic: str, partitions: int, start: int, n: int,
                 rate: float) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.env, self.topic, self.partitions = env, topic, partitions
        self.start_seq, self.n, self.rate = start, n, rate
        self.done = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        producer = _producer(self.env)
        chunk = max(1, int(self.rate / 5))
        next_at = time.monotonic()
        i, end = self.start_seq, self.start_seq + self.n
        while i < end and not self.stop_event.is_set():
            count = min(chunk, end - i)
            _produce_from(self.env, self.topic, self.partitions, i, count, producer)
            i += count
            self.done = i - self.start_seq
            next_at += 0.2
            time.sleep(max(0.0, next_at - time.monotonic()))


def _producer(env: NodeEnv) -> Producer:
    return Producer({"bootstrap.servers": env.kafka.bootstrap, "enable.idempotence": True,
                     "linger.ms": 5})  # fmt: skip


def _produce_from(env: NodeEnv, topic: str, partitions: int, first: int, count: int,
                  producer: Producer | None = None) -> None:  # fmt: skip
    """Events first..first+count-1, event j to partition j % partitions, in order."""
    producer = producer or _producer(env)
    for j in range(first, first + count):
        while True:
            try:
                producer.produce(topic, encode(transaction(j)), partition=j % partitions)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def offset_of(seq: int, partitions: int) -> tuple[int, int]:
    return seq % partitions, seq // partitions


def wait_delivered(sim: Simulator, n: int, timeout_s: float) -> collections.Counter[int]:
    def all_there() -> collections.Counter[int] | None:
        got = seqs(sim)
        return got if set(got) >= set(range(n)) else None

    found: collections.Counter[int] = wait_for(all_there, timeout_s, f"all {n} events at the API")
    return found


def wait_committed(env: NodeEnv, group: str, topic: str, partitions: int, n: int) -> list[int]:
    def all_committed() -> list[int] | None:
        offsets = committed(env.kafka.bootstrap, group, topic, partitions)
        return offsets if sum(offsets) == n else None

    found: list[int] = wait_for(all_committed, 60, f"{n} committed")
    return found


def pod_metrics(pod: dict[str, Any]) -> str:
    ip = pod["status"]["podIP"]
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(3))
    return http.request("GET", f"http://{ip}:8080/metrics").data.decode()


def owned_partitions(metrics: str) -> set[int]:
    return {
        int(p) for p in re.findall(r'gr_partition_consumer_lag\{[^}]*partition="(\d+)"', metrics)
    }


def diagnose(env: NodeEnv, namespace: str) -> str:
    """The pods' conditions, container states and last log lines, for a failure message."""
    out = []
    for pod in env.pods(namespace):
        name = pod["metadata"]["name"]
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        states = [c.get("state") for c in pod.get("status", {}).get("containerStatuses", [])]
        out.append(
            f"--- {name} {conds} {states}\n"
            + "\n".join(env.logs(namespace, name).splitlines()[-25:])
        )
    return "\n".join(out)


def report(name: str, **facts: Any) -> None:
    """One line per scenario with what reached the API."""
    report_line(f"[scenario] {name}: " + ", ".join(f"{k}={v}" for k, v in facts.items()))


# ---------------------------------------------------------------- the documented install


def documented_install() -> str:
    text = DOC.read_text()
    section = text.split("## 3. Install the chart", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None, "no sh block under '## 3. Install the chart'"
    return block.group(1)


@pytest.mark.timeout(600)
def test_the_documented_install_runs_as_written(pods_cluster: NodeEnv, sim: Simulator,
                                                tmp_path: Path) -> None:  # fmt: skip
    env = pods_cluster
    script = documented_install()
    assert DOC_BROKERS in script
    assert (
        "helm install gr-s2s-consumer ./helm/gr-s2s-consumer -n gr-s2s-consumer -f my-values.yaml"
        in script
    )
    script = script.replace(DOC_BROKERS, env.kafka.pod_scram_bootstrap)
    # The API's address is the site's too: the simulator's, given the way a site
    # adds its own settings, one more values file.
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "api": {"baseUrl": f"http://{GATEWAY}:{sim.port}"},
        "extraEnv": [{"name": "GR_ALLOW_INSECURE_HTTP", "value": "true"}],
    }))  # fmt: skip
    script = script.replace("-f my-values.yaml", f"-f my-values.yaml -f {site}")
    for topic, partitions in (("game-events", 12), ("game-events.dlq", 1)):
        create_topic(env.kafka.bootstrap, topic, partitions)
    (tmp_path / "api-key.txt").write_text(API_KEY + "\n")
    (tmp_path / "kafka-password.txt").write_text(SCRAM_PASSWORD)
    (tmp_path / "kafka-ca.pem").write_bytes(env.kafka.ca_pem.read_bytes())
    (tmp_path / "helm").symlink_to(ROOT / "helm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(env.node.bins.kubectl)
    (bin_dir / "helm").symlink_to(env.helm)
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
        env={**env.helm_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "KUBECONFIG": str(env.node.kubeconfig)},
    )  # fmt: skip
    took = time.monotonic() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    # check-config ran in the pod: the settings, redacted.
    assert '"bootstrap_servers"' in proc.stdout
    assert API_KEY not in proc.stdout + proc.stderr
    assert SCRAM_PASSWORD not in proc.stdout + proc.stderr
    assert '"sasl.password": "***"' in proc.stdout

    # The KEDA objects the documented values make were accepted by the API server
    # against KEDA's own CRD schema (tests/deploy/crds), and say what the workers do.
    so = env.api.get(
        "/apis/keda.sh/v1alpha1/namespaces/gr-s2s-consumer/scaledobjects/gr-s2s-consumer"
    )
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 2)
    meta = so["spec"]["triggers"][0]["metadata"]
    assert (meta["sasl"], meta["tls"], meta["offsetResetPolicy"]) == (
        "scram_sha512",
        "enable",
        "earliest",
    )
    ta = env.api.get(
        "/apis/keda.sh/v1alpha1/namespaces/gr-s2s-consumer/triggerauthentications/gr-s2s-consumer"
    )
    assert {r["parameter"] for r in ta["spec"]["secretTargetRef"]} == {"username", "password", "ca"}
    assert env.api.exists(
        "/apis/monitoring.coreos.com/v1/namespaces/gr-s2s-consumer/servicemonitors/gr-s2s-consumer"
    )

    # No KEDA operator runs here: the Deployment has no replicas field and runs one.
    try:
        wait_for(lambda: [p for p in env.pods("gr-s2s-consumer") if pod_ready(p)], 60, "ready")
    except AssertionError:
        pytest.fail(f"the worker is not ready:\n{diagnose(env, 'gr-s2s-consumer')}")
    assert len(env.pods("gr-s2s-consumer", "gr-s2s-consumer")) == 1
    n = 2400
    _produce_from(env, "game-events", 12, 0, n)
    got = wait_delivered(sim, n, 120)
    offsets = wait_committed(env, "gr-s2s-consumer", "game-events", 12, n)
    dupes = sum(c - 1 for c in got.values())
    assert dupes == 0
    assert restarts(env.pods("gr-s2s-consumer", "gr-s2s-consumer")[0]) == 0
    report("documented install", commands_exit=proc.returncode, seconds=round(took), events=n,
           delivered=len(got), duplicates=dupes, committed=sum(offsets))  # fmt: skip


# ---------------------------------------------------------- a Service named kafka


def _selectorless_service(env: NodeEnv, namespace: str, name: str, port: int, target: int,
                          port_name: str) -> None:  # fmt: skip
    env.api.create(f"/api/v1/namespaces/{namespace}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": port_name, "port": port, "targetPort": target}]},
    })  # fmt: skip
    env.api.create(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-host", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
        "ports": [{"name": port_name, "port": target, "protocol": "TCP"}],
    })  # fmt: skip


def _namespace(env: NodeEnv, name: str) -> None:
    env.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": name}})  # fmt: skip


def pod_env(env: NodeEnv, namespace: str, pod: str) -> dict[str, str]:
    out = env.node.kubectl("-n", namespace, "exec", pod, "--", "env")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.timeout(600)
def test_a_service_named_kafka_in_the_namespace(pods_cluster: NodeEnv, sim: Simulator) -> None:
    """The brokers behind a Service named `kafka` (and a `kafka-ui` beside it), reached by
    DNS name through kube-proxy. The chart's pods get no service links; pods of a
    user's own manifest do, and start and deliver all the same."""
    env = pods_cluster
    ns = "svc-kafka"
    _namespace(env, ns)
    _selectorless_service(env, ns, "kafka", 9092, env.kafka.pod_port, "tcp-client")
    _selectorless_service(env, ns, "kafka-ui", 8080, sim.port, "http")
    topic, partitions = new_topic(env, "svc", 4), 4
    values = base_values(env, f"http://{GATEWAY}:{sim.port}", topic, f"g-{topic}", partitions, 2)
    values["kafka"]["bootstrapServers"] = "kafka:9092"  # DNS, then the Service's address
    env.install("gr-s2s-consumer", ns, values)
    pods = env.pods(ns, "gr-s2s-consumer")
    assert len(pods) == 2
    assert all(pod_ready(p) for p in pods)
    links = {k for k in pod_env(env, ns, pods[0]["metadata"]["name"]) if k.startswith("KAFKA_")}
    assert not {k for k in links if "SERVICE" in k or "_PORT" in k}, links
    _produce_from(env, topic, partitions, 0, 2000)
    wait_delivered(sim, 2000, 120)
    wait_committed(env, f"g-{topic}", topic, partitions, 2000)

    # The same workers from a manifest of the user's own, with service links on (the
    # Kubernetes default): KAFKA_SERVICE_HOST, KAFKA_PORT_9092_TCP_ADDR, KAFKA_UI_...
    # reach the container, and the worker leaves them out of librdkafka's settings.
    env.node.kubectl("-n", ns, "patch", "deployment", "gr-s2s-consumer", "--type", "merge",
                     "-p", '{"spec":{"template":{"spec":{"enableServiceLinks":true}}}}')  # fmt: skip
    env.node.kubectl("-n", ns, "rollout", "status", "deployment/gr-s2s-consumer", "--timeout=240s",
                     timeout=300)  # fmt: skip
    pods = [
        p for p in env.pods(ns, "gr-s2s-consumer") if p["metadata"].get("deletionTimestamp") is None
    ]
    assert len(pods) == 2
    assert all(pod_ready(p) and restarts(p) == 0 for p in pods)
    injected = pod_env(env, ns, pods[0]["metadata"]["name"])
    for var in ("KAFKA_SERVICE_HOST", "KAFKA_PORT", "KAFKA_PORT_9092_TCP_ADDR",
                "KAFKA_SERVICE_PORT_TCP_CLIENT", "KAFKA_UI_SERVICE_PORT"):  # fmt: skip
        assert var in injected, var
    _produce_from(env, topic, partitions, 2000, 2000)
    got = wait_delivered(sim, 4000, 120)
    offsets = wait_committed(env, f"g-{topic}", topic, partitions, 4000)
    log = env.logs(ns, pods[0]["metadata"]["name"])
    assert "ignoring KAFKA_* variables a kubelet sets for Services" in log
    assert "KAFKA_PORT_9092_TCP_ADDR" in log
    dupes = sum(c - 1 for c in got.values())
    report("Service named kafka", events=4000, delivered=len(got), duplicates=dupes,
           committed=sum(offsets), restarts=sum(restarts(p) for p in pods),
           service_links_in_pod=len([k for k in injected if k.startswith("KAFKA_") and "SERVICE" in k]))  # fmt: skip
    assert dupes == 0


# ------------------------------------------------------------- a rolling update


@pytest.mark.timeout(600)
def test_helm_upgrade_to_a_new_image_tag_rolls_by_sigterm(pods_cluster: NodeEnv,
                                                           sim: Simulator) -> None:  # fmt: skip
    """Pods replaced one by one by the kubelet's SIGTERM and grace period, while events
    keep coming: every old worker drains, commits and exits 0; nothing lost, nothing
    sent twice."""
    env = pods_cluster
    ns = "rolling"
    topic, partitions = new_topic(env, "roll", 4), 4
    group = f"g-{topic}"
    sim.set_latency((0.02, 0.08))
    values = base_values(env, f"http://{GATEWAY}:{sim.port}", topic, group, partitions, 2)
    env.install("gr-s2s-consumer", ns, values)
    old = {p["metadata"]["name"] for p in env.pods(ns, "gr-s2s-consumer")}
    n = 24000
    with PodWatch(env, ns) as watch:
        feeder = Feeder(env, topic, partitions, 0, n, rate=800)
        feeder.start()
        wait_for(lambda: len(seqs(sim)) > 2000, 60, "delivery under way")
        started = time.monotonic()
        env.install("gr-s2s-consumer", ns, values, "--set", "image.tag=check-2")
        rolled = time.monotonic() - started
        feeder.join(120)
        got = wait_delivered(sim, n, 180)
        offsets = wait_committed(env, group, topic, partitions, n)
        time.sleep(2)
    pods = env.pods(ns, "gr-s2s-consumer")
    assert len(pods) == 2
    for pod in pods:
        assert pod["metadata"]["name"] not in old
        assert pod["spec"]["containers"][0]["image"].endswith(":check-2")
        assert restarts(pod) == 0
    codes = watch.exit_codes()
    assert set(codes) >= old, f"no termination seen for {old - set(codes)}"
    for name in old:
        assert codes[name] == [0], (name, codes[name])
    dupes = sum(c - 1 for c in got.values())
    report("helm upgrade image tag", events=n, delivered=len(got), duplicates=dupes,
           committed=sum(offsets), old_pods_exit_codes={k: codes[k] for k in sorted(old)},
           upgrade_seconds=round(rolled))  # fmt: skip
    assert len(got) == n
    assert dupes == 0


# ------------------------------------------------------ deleted, and force-deleted


@pytest.mark.timeout(900)
def test_a_deleted_pod_and_a_force_deleted_one(pods_cluster: NodeEnv, sim: Simulator) -> None:
    """`kubectl delete pod`: SIGTERM, drain, commit, no duplicate. `--force
    --grace-period=0`: the pod is gone from the API at once and its worker killed;
    nothing is lost, and what is sent twice is only what that worker had delivered
    and not yet committed on its own partitions."""
    env = pods_cluster
    ns = "deleting"
    topic, partitions = new_topic(env, "del", 4), 4
    group = f"g-{topic}"
    sim.set_latency((0.1, 0.3))  # requests in flight when the kill comes
    values = base_values(env, f"http://{GATEWAY}:{sim.port}", topic, group, partitions, 2)
    # A killed worker never leaves the group: its partitions wait for the session to
    # expire (45 s by default) before they move. 10 s keeps the test short.
    values["kafka"]["config"] = {"session.timeout.ms": 10000}
    env.install("gr-s2s-consumer", ns, values)
    n = 30000
    with PodWatch(env, ns) as watch:
        feeder = Feeder(env, topic, partitions, 0, n, rate=700)
        feeder.start()
        wait_for(lambda: len(seqs(sim)) > 3000, 90, "delivery under way")
        first = env.pods(ns, "gr-s2s-consumer")[0]["metadata"]["name"]
        env.node.kubectl("-n", ns, "delete", "pod", first, "--wait=true", timeout=180)
        wait_for(lambda: len([p for p in env.pods(ns, "gr-s2s-consumer") if pod_ready(p)]) == 2,
                 120, "two ready workers again")  # fmt: skip
        wait_for(lambda: len(seqs(sim)) > feeder.done * 0.5 + 2000, 90, "delivery goes on")
        dupes_graceful = sum(c - 1 for c in seqs(sim).values())

        # A worker that owns partitions (its lag gauges say which, within a statistics
        # interval of the assignment).
        def a_victim() -> tuple[dict[str, Any], set[int]] | None:
            for pod in env.pods(ns, "gr-s2s-consumer"):
                if pod_ready(pod) and (parts := owned_partitions(pod_metrics(pod))):
                    return pod, parts
            return None

        victim, owned = wait_for(a_victim, 60, "a worker owning partitions")
        # Slow answers now: the forced worker cannot finish its requests in the two
        # seconds a force-deleted pod gets before SIGKILL.
        sim.set_latency((2.5, 3.5))
        time.sleep(1)
        before = committed(env.kafka.bootstrap, group, topic, partitions)
        killed_at = time.monotonic()
        env.node.kubectl("-n", ns, "delete", "pod", victim["metadata"]["name"], "--force",
                         "--grace-period=0", timeout=60)  # fmt: skip
        time.sleep(3)
        sim.set_latency((0.1, 0.3))
        feeder.join(180)
        got = wait_delivered(sim, n, 300)
        offsets = wait_committed(env, group, topic, partitions, n)
        recovered_s = time.monotonic() - killed_at
        time.sleep(2)
    dupes = {s: c - 1 for s, c in got.items() if c > 1}
    report("deleted and force-deleted", events=n, delivered=len(got),
           duplicates_after_graceful_delete=dupes_graceful, duplicates_total=sum(dupes.values()),
           duplicates_by_partition=dict(collections.Counter(s % partitions for s in dupes)),
           forced_pod_partitions=sorted(owned), committed=sum(offsets),
           all_delivered_s_after_force_delete=round(recovered_s),
           exit_codes=watch.exit_codes())  # fmt: skip
    assert len(got) == n, "events lost"
    assert dupes_graceful == 0
    assert watch.exit_codes().get(first) == [0]
    assert owned, "the force-deleted worker owned no partition"
    for s in dupes:
        partition, offset = offset_of(s, partitions)
        assert partition in owned, f"event {s} sent twice from partition {partition}"
        assert offset >= before[partition], (
            f"event {s} (offset {offset}) sent twice though committed ({before[partition]})"
        )
        # ...and within what a worker holds delivered-but-uncommitted per partition
        # (GR_MAX_UNCOMMITTED_EVENTS, 5,000) plus the batch in flight.
        assert offset < before[partition] + 5000 + 100, (s, before)


# ----------------------------------------------------------------- readiness


@pytest.mark.timeout(600)
def test_ready_only_once_joined_and_not_while_the_key_is_refused(
    pods_cluster: NodeEnv, sim: Simulator
) -> None:
    env = pods_cluster
    ns = "readiness"
    _namespace(env, ns)
    # The brokers' Service has no endpoints yet: the worker runs, cannot join.
    env.api.create(f"/api/v1/namespaces/{ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "brokers"},
        "spec": {"ports": [{"name": "kafka", "port": 9092, "targetPort": env.kafka.pod_port}]},
    })  # fmt: skip
    topic, partitions = new_topic(env, "ready", 2), 2
    group = f"g-{topic}"
    values = base_values(env, f"http://{GATEWAY}:{sim.port}", topic, group, partitions, 1)
    values["kafka"]["bootstrapServers"] = "brokers:9092"
    path = env.workdir / f"values-{ns}.yaml"
    path.write_text(yaml.safe_dump(values))
    env.helm_run("install", "gr-s2s-consumer", str(ROOT / "helm" / "gr-s2s-consumer"),
                 "--namespace", ns, "-f", str(path))  # fmt: skip

    def running_pod() -> dict[str, Any] | None:
        pods = env.pods(ns, "gr-s2s-consumer")
        states = pods[0]["status"].get("containerStatuses", []) if pods else []
        return pods[0] if states and "running" in states[0]["state"] else None

    pod = wait_for(running_pod, 120, "the worker running")
    observed_unready = 0
    for _ in range(9):  # 18 s, past the 10 s the worker waits for brokers before starting
        pod = env.pods(ns, "gr-s2s-consumer")[0]
        assert not pod_ready(pod), "ready before joining its group"
        observed_unready += 1
        time.sleep(2)
    assert restarts(pod) == 0  # alive (liveness), only not ready
    _selectorless_endpoints(env, ns, "brokers", env.kafka.pod_port)
    t = time.monotonic()
    wait_for(lambda: pod_ready(env.pods(ns, "gr-s2s-consumer")[0]), 120, "ready once joined")
    ready_after = time.monotonic() - t
    _produce_from(env, topic, partitions, 0, 500)
    wait_delivered(sim, 500, 60)

    # The key refused: delivery halts and the pod leaves the Service's endpoints.
    sim.revoke_key(API_KEY)
    _produce_from(env, topic, partitions, 500, 500)
    wait_for(
        lambda: not pod_ready(env.pods(ns, "gr-s2s-consumer")[0]), 60, "not ready while refused"
    )
    halted_for = time.monotonic()
    time.sleep(8)
    assert not pod_ready(env.pods(ns, "gr-s2s-consumer")[0])
    sim.restore_key(API_KEY)
    wait_for(lambda: pod_ready(env.pods(ns, "gr-s2s-consumer")[0]), 60, "ready again")
    got = wait_delivered(sim, 1000, 120)
    offsets = wait_committed(env, group, topic, partitions, 1000)
    report("readiness", unready_checks_before_join=observed_unready,
           ready_s_after_brokers_reachable=round(ready_after, 1),
           unready_while_refused_s=round(time.monotonic() - halted_for),
           events=1000, delivered=len(got), duplicates=sum(c - 1 for c in got.values()),
           committed=sum(offsets), restarts=restarts(env.pods(ns, "gr-s2s-consumer")[0]))  # fmt: skip
    assert restarts(env.pods(ns, "gr-s2s-consumer")[0]) == 0


def _selectorless_endpoints(env: NodeEnv, namespace: str, name: str, target: int) -> None:
    env.api.create(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-host", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
        "ports": [{"name": "kafka", "port": target, "protocol": "TCP"}],
    })  # fmt: skip
