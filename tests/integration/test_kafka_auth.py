"""The Kafka security managed clusters use: SCRAM-SHA-512 over TLS and mutual TLS.

One broker of its own with a SASL_SSL listener taking SCRAM-SHA-512 (its users
written when the storage is formatted) and an SSL listener that requires a
client certificate. Through each, a real worker process consumes, delivers,
dead-letters and commits; a wrong password, an untrusted or missing client
certificate, and an untrusted broker each end start-up with exit 2 and a
message naming the setting to fix, never a healthy-looking retry loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.support.events import encode, transaction
from tests.support.kafka_io import committed, produce, read_all
from tests.support.procs import spawn_worker, wait_until

pytestmark = pytest.mark.integration

SCRAM_USER, SCRAM_PASSWORD = "gr-consumer", "scram-pw-5d0c7e21a9"
API_KEY = "auth-test-key-71c0"
POISON = b'{"event_type": "click", "payload": {}}'  # no campaign_id


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[LocalKafka]:
    broker = LocalKafka(scram_users={SCRAM_USER: SCRAM_PASSWORD}, mtls=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.destroy()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(keys=[API_KEY], limit_per_window=None) as s:
        yield s


def _topic(broker: LocalKafka, n: int) -> str:
    """A topic with `n` events then one poison record, written over the plain listener."""
    topic = f"auth-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    create_topic(broker.bootstrap, f"{topic}.dlq", 1)
    produce(
        broker.bootstrap, topic, [*(encode(transaction(i)) for i in range(n)), POISON], partition=0
    )
    return topic


def _env(sim: Simulator, topic: str, kafka: dict[str, str]) -> dict[str, str]:
    return {
        **kafka,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": sim.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "50",
        "GR_HTTP_PORT": "0",
    }


def _scram(broker: LocalKafka, password: str = SCRAM_PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.scram_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": SCRAM_USER,
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_SSL_CA_LOCATION": str(broker.ca_pem),
    }


def _mtls(broker: LocalKafka, cert: tuple[Path, Path] | None) -> dict[str, str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.mtls_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(broker.ca_pem),
    }
    if cert is not None:
        env["KAFKA_SSL_CERTIFICATE_LOCATION"] = str(cert[0])
        env["KAFKA_SSL_KEY_LOCATION"] = str(cert[1])
    return env


def _delivers_dead_letters_and_commits(
    broker: LocalKafka, sim: Simulator, kafka: dict[str, str], tmp_path: Path, name: str
) -> None:
    n = 300
    topic = _topic(broker, n)
    env = _env(sim, topic, kafka)
    worker = spawn_worker(env, tmp_path, name)
    wait_until(
        lambda: committed(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, 1) == [n + 1],
        90,
        "every record committed",
    )
    assert worker.terminate(60) == 0, worker.log()
    assert len(sim.accepted_events()) == n
    dlq = read_all(broker.bootstrap, f"{topic}.dlq", expect=1)
    assert [r.value for r in dlq] == [POISON]
    assert dlq[0].headers["gr.dlq.reason"] == b"schema_violation"


def test_scram_sha_512_consumes_delivers_dead_letters_and_commits(
    secure_broker: LocalKafka, sim: Simulator, tmp_path: Path
) -> None:
    _delivers_dead_letters_and_commits(secure_broker, sim, _scram(secure_broker), tmp_path, "scram")


def test_mutual_tls_consumes_delivers_dead_letters_and_commits(
    secure_broker: LocalKafka, sim: Simulator, tmp_path: Path
) -> None:
    cert = secure_broker.client_certificate("gr-consumer")
    _delivers_dead_letters_and_commits(
        secure_broker, sim, _mtls(secure_broker, cert), tmp_path, "mtls"
    )


def _start_up_refused(kafka: dict[str, str], sim: Simulator) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    env.update(_env(sim, "auth-never-read", kafka))
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_wrong_scram_password_ends_start_up_naming_the_setting(
    secure_broker: LocalKafka, sim: Simulator
) -> None:
    wrong = SCRAM_PASSWORD + "-old"
    proc = _start_up_refused(_scram(secure_broker, wrong), sim)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: KAFKA_SASL_PASSWORD was refused by the broker")
    assert "SCRAM-SHA-512" in last
    for secret in (wrong, SCRAM_PASSWORD, API_KEY):
        assert secret not in proc.stderr + proc.stdout


@pytest.mark.parametrize("which", ["untrusted", "missing"])
def test_a_refused_client_certificate_ends_start_up_naming_the_setting(
    secure_broker: LocalKafka, sim: Simulator, which: str
) -> None:
    cert = (
        secure_broker.client_certificate("stranger", trusted=False)
        if which == "untrusted"
        else None
    )
    proc = _start_up_refused(_mtls(secure_broker, cert), sim)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: KAFKA_SSL_CERTIFICATE_LOCATION")
    assert ("refuses" if which == "untrusted" else "is not set") in last


def test_an_untrusted_broker_certificate_ends_start_up_naming_the_setting(
    secure_broker: LocalKafka, sim: Simulator
) -> None:
    kafka = _mtls(secure_broker, secure_broker.client_certificate("gr-consumer"))
    kafka.pop("KAFKA_SSL_CA_LOCATION")  # the system's CAs do not know the test broker
    proc = _start_up_refused(kafka, sim)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("configuration error: KAFKA_SSL_CA_LOCATION")
    )
