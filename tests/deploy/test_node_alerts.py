"""The chart's alert rules in a real Prometheus, scraping the chart's running pods.

Prometheus is built from the same pinned module as promtool (scripts/deploy-tools.sh).
It scrapes every worker pod of the releases below from a file_sd target list that
follows the pods (as a ServiceMonitor's discovery would: every pod of the release,
ready or not, labelled with its namespace and pod, job = the Service's name), and
evaluates the chart's PrometheusRule, rendered by helm with thresholds scaled from
minutes to seconds (the same expressions; `for` and windows shorter).

Each release meets one real fault, all at the same time, and the alert meant for it
must fire: the API down (LagGrowing, NoCommitProgress), the key revoked
(ApiKeyRefused), the DLQ topic refusing writes (DlqWriteFailing), one partition stuck
on a request the API keeps failing (NoCommitProgress for that partition only). Two
more must stay silent: a key rotation (one refusal while the worker picks up the new
key from its Secret; the rule this chart had before, kept here for comparison, pages
on it) and a rolling update.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3
import yaml

from gr_devtools.kafka_local import free_port
from gr_devtools.simulator import Simulator
from gr_devtools.simulator_core import Response, error_body
from tests.deploy.conftest import CHART
from tests.deploy.node import GATEWAY
from tests.deploy.node_env import API_KEY, NodeEnv, base_values, new_topic, report, wait_for
from tests.deploy.test_node_scenarios import Feeder, seqs
from tests.support.events import encode, transaction
from tests.support.kafka_io import produce

pytestmark = pytest.mark.integration

# The chart's thresholds, minutes made seconds.
SCALED = {
    "lagGrowing": {"window": "1m", "minEvents": 100, "for": "20s"},
    "noCommitProgress": {"maxAgeSeconds": 40, "for": "10s"},
    "apiKeyRefused": {"for": "40s"},
    "deadLettering": {"window": "1m", "eventsPerSecond": 5, "for": "30s"},
    "dlqWriteFailing": {"for": "30s"},
    "rateLimited": {"window": "1m", "share": 0.5, "for": "30s"},
}
STUCK_MARK = "stuck-me"
RELEASE = "gr-s2s-consumer"


def find_prometheus() -> Path | None:
    named = os.environ.get("GR_PROMETHEUS")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "gr-s2s-consumer" / "tools" / "bin" / "prometheus"
    found = Path(named) if named else built if built.exists() else None
    if found is None and (on_path := shutil.which("prometheus")):
        found = Path(on_path)
    return found


class StuckSimulator(Simulator):
    """The simulator, except that a request holding an event marked `stuck-me` gets a 503,
    every time: the partition that event is in cannot move past it."""

    def finish(self, seq: int, path: str, arrival: float, headers: Any, body: bytes) -> Response:
        if STUCK_MARK.encode() in body:
            return Response(503, headers, error_body("unavailable", "try again later"))
        return super().finish(seq, path, arrival, headers, body)


class Prometheus:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.targets = workdir / "targets.json"
        self.rules_dir = workdir / "rules"
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(5))

    def start(self) -> None:
        self.targets.write_text("[]")
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "2s", "scrape_timeout": "1s",
                       "evaluation_interval": "2s"},
            "rule_files": [str(self.rules_dir / "*.yaml")],
            "scrape_configs": [{
                # The ServiceMonitor's job label is the Service's name: the release's fullname.
                "job_name": RELEASE,
                "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
            }],
        }))  # fmt: skip
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.binary), f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_for(lambda: self._get("/-/ready") is not None, 60, "Prometheus ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _get(self, path: str) -> Any:
        try:
            resp = self.http.request("GET", f"http://127.0.0.1:{self.port}{path}")
        except urllib3.exceptions.HTTPError:
            return None
        if resp.status != 200:
            return None
        return orjson.loads(resp.data) if path.startswith("/api/") else True

    def alerts(self) -> list[dict[str, Any]]:
        doc = self._get("/api/v1/alerts")
        return doc["data"]["alerts"] if doc else []

    def rule_groups(self) -> int:
        doc = self._get("/api/v1/rules")
        return len(doc["data"]["groups"]) if doc else 0

    def query(self, q: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        doc = self._get(f"/api/v1/query?query={quote(q)}")
        return doc["data"]["result"] if doc else []


class TargetSync(threading.Thread):
    """Keeps Prometheus' target list equal to the releases' running pods, every second."""

    def __init__(self, env: NodeEnv, prom: Prometheus, namespaces: list[str]) -> None:
        super().__init__(daemon=True)
        self.env, self.prom, self.namespaces = env, prom, namespaces
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            groups = []
            for ns in self.namespaces:
                for pod in self.env.pods(ns, RELEASE):
                    ip = pod.get("status", {}).get("podIP")
                    if ip and pod["status"].get("phase") == "Running":
                        groups.append({"targets": [f"{ip}:8080"],
                                       "labels": {"namespace": ns, "pod": pod["metadata"]["name"]}})  # fmt: skip
            tmp = self.prom.targets.with_suffix(".tmp")
            tmp.write_text(orjson.dumps(groups).decode())
            tmp.replace(self.prom.targets)
            self.stop_event.wait(1)


def rules_for(env: NodeEnv, namespace: str, out: Path) -> None:
    """The chart's PrometheusRule for a release in `namespace`, as a rule file."""
    values = out.with_suffix(".values.yaml")
    values.write_text(yaml.safe_dump({
        "kafka": {"bootstrapServers": "x:9092"}, "api": {"key": "x"},
        "metrics": {"prometheusRule": {"enabled": True, "alerts": SCALED}},
    }))  # fmt: skip
    text = env.helm_run("template", RELEASE, str(CHART), "--namespace", namespace, "-f",
                        str(values), "--show-only", "templates/prometheusrule.yaml")  # fmt: skip
    out.write_text(yaml.safe_dump(yaml.safe_load(text)["spec"]))
    values.unlink()


PREVIOUS_KEY_RULE = """groups:
  - name: previous-chart-rule
    rules:
      # The chart's ApiKeyRefused before: any 401/403 in 5 minutes, for (scaled) 40s.
      - alert: PreviousApiKeyRefused
        expr: sum by (namespace, pod, status) (increase(gr_api_requests_total{namespace="%s", job="gr-s2s-consumer", status=~"401|403"}[5m])) > 0
        for: 40s
"""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    binary = find_prometheus()
    if binary is None:
        message = "prometheus not found: run scripts/deploy-tools.sh, or set GR_PROMETHEUS"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so a missing prometheus is a failure)")
        pytest.skip(message)
    prom = Prometheus(binary, tmp_path / "prometheus")
    yield prom
    prom.stop()


def _install(env: NodeEnv, ns: str, sim: Simulator, partitions: int, replicas: int = 1,
             dlq: bool = True) -> tuple[str, str]:  # fmt: skip
    topic = new_topic(env, ns, partitions, dlq=dlq)
    group = f"g-{topic}"
    values = base_values(env, f"http://{GATEWAY}:{sim.port}", topic, group, partitions, replicas)
    values["kafka"]["config"] = {"statistics.interval.ms": 1000}  # lag every second
    env.install(RELEASE, ns, values)
    return topic, group


def firing(prom: Prometheus) -> set[tuple[str, str, str]]:
    return {
        (
            a["labels"]["alertname"],
            a["labels"].get("namespace", ""),
            a["labels"].get("partition", ""),
        )
        for a in prom.alerts()
        if a["state"] == "firing"
    }


@pytest.mark.timeout(900)
def test_each_alert_fires_in_its_fault_and_none_in_routine_work(
    pods_cluster: NodeEnv, prometheus: Prometheus
) -> None:
    env = pods_cluster
    spaces = ["alert-api-down", "alert-key", "alert-dlq", "alert-stuck", "alert-steady"]
    for ns in spaces:
        rules_for(env, ns, prometheus.rules_dir / f"{ns}.yaml")
    (prometheus.rules_dir / "previous.yaml").write_text(PREVIOUS_KEY_RULE % "alert-key")
    prometheus.start()
    assert prometheus.rule_groups() == len(spaces) + 1
    sims: dict[str, Simulator] = {}
    for ns in spaces:
        cls = StuckSimulator if ns == "alert-stuck" else Simulator
        sims[ns] = cls(host=GATEWAY, keys=[API_KEY], limit_per_window=None).start()
    sync = TargetSync(env, prometheus, spaces)
    feeders: list[Feeder] = []
    seen: dict[tuple[str, str, str], float] = {}
    try:
        installs: dict[str, tuple[str, str]] = {}
        threads = [
            threading.Thread(
                target=lambda ns=ns: installs.__setitem__(
                    ns,
                    _install(
                        env,
                        ns,
                        sims[ns],
                        2,
                        replicas=2 if ns == "alert-steady" else 1,
                        dlq=ns != "alert-dlq",
                    ),
                )
            )
            for ns in spaces
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(400)
        assert set(installs) == set(spaces), f"installed: {sorted(installs)}"
        sync.start()
        for ns in spaces:
            topic, _ = installs[ns]
            feeder = Feeder(env, topic, 2, 0, 60_000, rate=40)  # steady traffic, 20/s a partition
            feeder.start()
            feeders.append(feeder)
        wait_for(lambda: all(len(seqs(sims[ns])) > 100 for ns in spaces if ns != "alert-dlq"),
                 120, "every release delivering")  # fmt: skip
        t0 = time.monotonic()

        def watch(until: float) -> None:
            while time.monotonic() < until:
                for key in firing(prometheus):
                    seen.setdefault(key, round(time.monotonic() - t0))
                time.sleep(2)

        # The faults, all at once.
        sims["alert-api-down"].set_outage(True)
        topic_dlq, _ = installs["alert-dlq"]
        produce(
            env.kafka.bootstrap, topic_dlq, [b"not json: to the DLQ, which is missing"], partition=0
        )
        topic_stuck, _ = installs["alert-stuck"]
        produce(env.kafka.bootstrap, topic_stuck,
                [encode(transaction(9_000_000, description=STUCK_MARK))], partition=1)  # fmt: skip

        # Routine key rotations: the new key in the Secret, the kubelet refreshes the
        # file, then the API revokes the old key; each worker meets one refusal. Twice:
        # the first refusal only creates the 403 counter's series.
        (pod,) = env.pods("alert-key", RELEASE)

        def rotate(old: str, new: str) -> None:
            sims["alert-key"].add_key(new)
            env.node.kubectl("-n", "alert-key", "patch", "secret", f"{RELEASE}-api", "-p",
                             orjson.dumps({"stringData": {"api-key": new}}).decode())  # fmt: skip
            wait_for(
                lambda: env.node.kubectl("-n", "alert-key", "exec", pod["metadata"]["name"], "--",
                                         "cat", "/var/run/secrets/gr-s2s-consumer/api/api-key"
                                         ).strip() == new,
                90, "the rotated key in the pod's file",
            )  # fmt: skip
            sims["alert-key"].revoke_key(old)

        keys = [API_KEY, "node-key-rotated-81b4", "node-key-rotated-c07a"]
        rotate(keys[0], keys[1])
        time.sleep(5)
        rotate(keys[1], keys[2])
        rotated_at = time.monotonic() - t0
        # A rolling update of the steady release.
        steady_topic, steady_group = installs["alert-steady"]
        values = base_values(env, f"http://{GATEWAY}:{sims['alert-steady'].port}", steady_topic,
                             steady_group, 2, 2)  # fmt: skip
        values["kafka"]["config"] = {"statistics.interval.ms": 1000}
        env.install(RELEASE, "alert-steady", values, "--set", "image.tag=check-2")
        rolled_at = time.monotonic() - t0

        # Observe the rotation for longer than ApiKeyRefused's `for`, then revoke for good.
        watch(time.monotonic() + 75)
        refused_after_rotation = sims["alert-key"].status_counts()
        sims["alert-key"].revoke_key(keys[2])
        revoked_at = time.monotonic() - t0
        expected = {
            ("GrS2SConsumerLagGrowing", "alert-api-down"),
            ("GrS2SConsumerNoCommitProgress", "alert-api-down"),
            ("GrS2SConsumerApiKeyRefused", "alert-key"),
            ("GrS2SConsumerDlqWriteFailing", "alert-dlq"),
            ("GrS2SConsumerNoCommitProgress", "alert-stuck"),
        }
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not expected <= {(a, n) for a, n, _ in seen}:
            watch(time.monotonic() + 4)
        watch(time.monotonic() + 6)
    finally:
        sync.stop_event.set()
        for feeder in feeders:
            feeder.stop_event.set()
        for sim in sims.values():
            sim.stop()
    report(f"[alerts] rotation at {rotated_at:.0f} s, rolling update done at {rolled_at:.0f} s, "
          f"key revoked at {revoked_at:.0f} s; answers to the rotated release {refused_after_rotation}")  # fmt: skip
    for key, at in sorted(seen.items(), key=lambda kv: kv[1]):
        report(f"[alerts] {key[0]} {key[1]}{'[' + key[2] + ']' if key[2] else ''} firing at {at} s")
    fired = {(a, n) for a, n, _ in seen}
    assert expected <= fired, f"did not fire: {expected - fired}"
    # The chart's key alert waited for the sustained refusal, not the rotation's.
    (key_at,) = [
        at
        for (a, n, _), at in seen.items()
        if (a, n) == ("GrS2SConsumerApiKeyRefused", "alert-key")
    ]
    assert key_at > revoked_at, "ApiKeyRefused fired during the rotation"
    assert 403 in refused_after_rotation, "the rotation met no refusal: nothing was shown"
    assert ("PreviousApiKeyRefused", "alert-key") in fired, "the previous rule did not page"
    previous_at = min(at for (a, _, _), at in seen.items() if a == "PreviousApiKeyRefused")
    assert previous_at < revoked_at, "the previous rule paged only on the real revocation"
    # Only the stuck partition is reported stuck.
    stuck = {p for a, n, p in seen if (a, n) == ("GrS2SConsumerNoCommitProgress", "alert-stuck")}
    assert stuck == {"1"}, stuck
    # Nothing at all from the rolling update.
    assert not [k for k in seen if k[1] == "alert-steady"], seen
