"""The built image, run with podman as the chart runs it: uid 10001, read-only root.

`scripts/image-check.sh` builds the unmodified Dockerfile with buildah and
exports GR_IMAGE (with CONTAINERS_CONF / CONTAINERS_STORAGE_CONF naming its
storage and runtime settings); scripts/deploy-check.sh then runs this file.
The container shares the host's network, so it reaches the local Kafka broker
and the S2S API simulator that the tests start from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from gr_devtools.kafka_local import free_port
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.support.cli_help import help_commands
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import committed, produce

pytestmark = pytest.mark.integration

API_KEY = "image-key-8c21d0"
KEY_PATH = "/var/run/secrets/gr-s2s-consumer/api/api-key"  # where the chart mounts it
SHUTDOWN_TIMEOUT_S = 10
GRACE_S = SHUTDOWN_TIMEOUT_S + 15  # the chart's default terminationGraceMarginSeconds


@pytest.fixture(scope="module")
def image() -> str:
    name = os.environ.get("GR_IMAGE")
    if not name:
        message = "no image: run scripts/image-check.sh (or make deploy-check), which sets GR_IMAGE"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so a missing image is a failure)")
        pytest.skip(message)
    return name


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# What every run shares: the chart's user and read-only root, the host network.
RUN = ["run", "--rm", "--read-only", "--user", "10001:10001", "--network", "host"]


def test_help_lists_only_the_production_commands(image: str) -> None:
    proc = podman(*RUN, image, "--help")
    assert proc.returncode == 0, proc.stderr
    assert help_commands(proc.stdout) == ["run", "check-config", "publish", "dlq"]
    tools = podman(*RUN, "--entrypoint", "python", image, "-c", "import gr_devtools")
    assert tools.returncode != 0, "the development tools must not be in the image"


def test_runs_as_10001_on_a_read_only_root(image: str) -> None:
    config = podman("image", "inspect", "--format", "{{.Config.User}}", image)
    assert config.stdout.strip() == "10001:10001"
    # Without --user: the image's own USER applies.
    proc = podman(
        "run", "--rm", "--read-only", "--entrypoint", "sh", image,
        "-c", "id -u; id -g; touch /opt/venv/x 2>/dev/null && echo writable || echo read-only",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "10001", "read-only"]


def test_check_config_exits_2_on_a_bad_setting(image: str) -> None:
    env = ["-e", "KAFKA_BOOTSTRAP_SERVERS=broker:9092", "-e", f"GR_API_KEY={API_KEY}"]
    good = podman(*RUN, *env, image, "check-config")
    assert good.returncode == 0, good.stdout + good.stderr
    assert API_KEY not in good.stdout + good.stderr
    bad = podman(*RUN, *env, "-e", "GR_BATCH_MAX_EVENTS=500", image, "check-config")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "GR_BATCH_MAX_EVENTS" in bad.stdout + bad.stderr
    assert API_KEY not in bad.stdout + bad.stderr


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(keys=[API_KEY], limit_per_window=None) as sim:
        yield sim


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_delivers_end_to_end_and_exits_0_on_sigterm(
    image: str,
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    topic = make_topic(partitions=3)
    group = f"image-{uuid.uuid4().hex[:8]}"
    n = 3000
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=3)
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o644)  # readable by uid 10001, as a Secret volume's file is
    http_port = free_port()
    name = f"gr-image-check-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY_FILE": KEY_PATH,
        "GR_BASE_URL": simulator.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "100",
        "GR_HTTP_PORT": str(http_port),
        "GR_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
    }
    args = [*RUN, "--name", name, "-v", f"{key_file}:{KEY_PATH}:ro"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    log = (tmp_path / "container.log").open("w")
    proc = subprocess.Popen(["podman", *args, image], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: len(simulator.accepted_events()) >= n, 120, f"{n} events delivered")
        seqs = sorted(seq_of(e) for e in simulator.accepted_events())
        assert seqs == list(range(n))
        _wait(lambda: sum(committed(bootstrap, group, topic, 3)) == n, 60, "every offset committed")
        http = urllib3.PoolManager(timeout=urllib3.Timeout(5))
        ready = http.request("GET", f"http://127.0.0.1:{http_port}/readyz")
        assert ready.status == 200, ready.data
        metrics = http.request("GET", f"http://127.0.0.1:{http_port}/metrics").data.decode()
        assert f"gr_events_delivered_total {float(n)}" in metrics

        # More events, then SIGTERM mid-stream, as Kubernetes stops a pod.
        produce(bootstrap, topic, (encode(transaction(n + i)) for i in range(n)), partitions=3)
        time.sleep(0.5)
        started = time.monotonic()
        kill = podman("kill", "--signal", "TERM", name)
        assert kill.returncode == 0, kill.stderr
        code = proc.wait(GRACE_S)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            podman("kill", "--signal", "KILL", name)
            proc.wait(30)
        log.close()
    output = (tmp_path / "container.log").read_text()
    assert code == 0, f"exit {code} after SIGTERM:\n{output[-3000:]}"
    assert took < GRACE_S, f"took {took:.1f} s to stop, grace is {GRACE_S} s"
    assert API_KEY not in output
    # At least once: whatever was committed was delivered first.
    delivered = {seq_of(e) for e in simulator.accepted_events()}
    offsets = committed(bootstrap, group, topic, 3)
    for partition, offset in enumerate(offsets):
        assert all(seq in delivered for seq in range(partition, offset * 3, 3)), partition
    print(f"SIGTERM -> exit 0 in {took:.1f} s; committed {offsets} of {2 * n} events")


def test_sbom_of_the_images_python_environment(image: str, tmp_path: Path) -> None:
    """A CycloneDX SBOM of what the image holds: every pin of the lock at its version, the
    service itself, and no development tools. Kept where GR_SBOM_OUT says (CI keeps it)."""
    import json
    import sys

    out = Path(os.environ.get("GR_SBOM_OUT") or tmp_path / "sbom.cdx.json")
    proc = subprocess.run(
        [sys.executable, "scripts/image_sbom.py", image, str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["bomFormat"] == "CycloneDX"
    assert doc["specVersion"] == "1.5"
    held = {c["name"].lower().replace("_", "-"): c["version"] for c in doc["components"]}
    pins = {}
    for line in Path("requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = version
    assert pins
    for name, version in pins.items():
        assert held.get(name) == version, (name, version, held.get(name))
    assert "gr-s2s-consumer" in held
    assert "gr-s2s-consumer-dev" not in held
    assert all(c["purl"].startswith("pkg:pypi/") for c in doc["components"])
