"""Secrets never leak, and Kafka over SASL_SSL works by configuration alone.

A worker runs against the broker's SASL_SSL listener (TLS with a self-signed
certificate the client trusts through KAFKA_SSL_CA_LOCATION, SASL/PLAIN) with a password,
through a refused key (403), 500s and poison records; then the API key and
the SASL password are searched for everywhere they could surface: the logs,
/metrics, /readyz, the DLQ records and headers, check-config's output, and
the error a wrong password produces.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import urllib3

from gr_devtools import samples
from gr_devtools.kafka_local import LocalKafka, create_topic, free_port
from gr_devtools.simulator import Simulator
from tests.fault.conftest import SASL_PASSWORD, SASL_USER
from tests.support.kafka_io import produce, read_all
from tests.support.procs import spawn_worker, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.integration]

API_KEY = "gr-live-SECRET-4f9e1a7c22b8d0e3"


def _env(
    broker: LocalKafka, topic: str, sim: Simulator, port: int, password: str
) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": broker.sasl_protocol,
        "KAFKA_SSL_CA_LOCATION": str(broker.ca_pem),
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": SASL_USER,
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": sim.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_HTTP_PORT": str(port),
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "0.5",
        "GR_LOG_LEVEL": "DEBUG",
    }


def _assert_clean(where: str, text: str | bytes) -> None:
    blob = text.encode() if isinstance(text, str) else text
    assert API_KEY.encode() not in blob, f"API key found in {where}"
    assert SASL_PASSWORD.encode() not in blob, f"SASL password found in {where}"


def test_no_secret_reaches_logs_metrics_dlq_or_errors(
    fault_broker: LocalKafka, tmp_path: Path
) -> None:
    topic = f"secrets-{uuid.uuid4().hex[:6]}"
    create_topic(fault_broker.bootstrap, topic, 2)
    create_topic(fault_broker.bootstrap, f"{topic}.dlq", 1)
    items = list(samples.generate(3000, poison_share=0.03, seed=21))
    produce(fault_broker.bootstrap, topic, (s.value for s in items), partitions=2)
    valid = sum(1 for s in items if s.expect == "valid")
    http = urllib3.PoolManager()
    with Simulator(keys=[API_KEY], limit_per_window=None) as sim:
        sim.revoke_key(API_KEY)  # start refused: 403s, halted, readiness with a reason
        sim.set_error_rate(0.2)
        port = free_port()
        env = _env(fault_broker, topic, sim, port, SASL_PASSWORD)
        worker = spawn_worker(env, tmp_path, "sasl")
        wait_until(lambda: sim.status_counts().get(403, 0) >= 2, 60, "refused key")
        ready = http.request("GET", f"http://127.0.0.1:{port}/readyz")
        assert ready.status == 503
        _assert_clean("/readyz", ready.data)
        sim.restore_key(API_KEY)
        wait_until(lambda: sim.events_accepted() >= valid, 120, "delivery over SASL")
        metrics = http.request("GET", f"http://127.0.0.1:{port}/metrics").data
        assert b"gr_events_delivered_total" in metrics
        _assert_clean("/metrics", metrics)
        assert worker.terminate(60) == 0
    _assert_clean("the worker's logs", worker.log())
    assert "api key refused" in worker.log()  # the logs did talk about the key, without it
    dlq = read_all(fault_broker.bootstrap, f"{topic}.dlq", expect=len(items) - valid)
    assert len(dlq) >= len(items) - valid
    for record in dlq:
        _assert_clean("a DLQ value", record.value or b"")
        for name, value in record.headers.items():
            _assert_clean(f"DLQ header {name}", value)

    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    shown = subprocess.run(
        [sys.executable, "-m", "consumer", "check-config"],
        env={**clean_env, **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert '"sasl.password": "***"' in shown.stdout
    _assert_clean("check-config", shown.stdout + shown.stderr)


def test_a_wrong_sasl_password_fails_without_showing_either(
    fault_broker: LocalKafka, tmp_path: Path
) -> None:
    topic = f"badpw-{uuid.uuid4().hex[:6]}"
    create_topic(fault_broker.bootstrap, topic, 1)
    wrong = SASL_PASSWORD + "-wrong"
    with Simulator(keys=[API_KEY], limit_per_window=None) as sim:
        env = _env(fault_broker, topic, sim, free_port(), wrong)
        worker = spawn_worker(env, tmp_path, "badpw")
        wait_until(lambda: "Authentication failed" in worker.log() or
                   "SASL authentication error" in worker.log(), 60, "auth failure logged")  # fmt: skip
        time.sleep(1)
        worker.terminate(60)
    log = worker.log()
    _assert_clean("the logs of a failed login", log)
    assert wrong not in log


KEY_A = "gr-live-ROTATE-A-0c83f5e1d2"
KEY_B = "gr-live-ROTATE-B-7a19be44c0"


def test_rotated_keys_echoed_answers_and_exceptions_leak_nothing(
    fault_broker: LocalKafka, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """At DEBUG, the key file rotates mid-run, the API quotes the key back in every answer
    but a 200 (400s dead-lettered with that answer, 500s, 403s), and a delivery raises an
    exception carrying the key: neither key is found in the logs, /metrics, /readyz, the
    DLQ headers or the traceback, and the masks show they were there to be scrubbed."""
    from consumer import config
    from consumer.delivery import Delivery
    from consumer.observe import OpsServer, setup_logging
    from consumer.worker import Worker

    topic = f"rotate-{uuid.uuid4().hex[:6]}"
    create_topic(fault_broker.bootstrap, topic, 2)
    create_topic(fault_broker.bootstrap, f"{topic}.dlq", 1)
    items = list(samples.generate(3000, poison_share=0.0, reject_share=0.005, seed=33))
    produce(fault_broker.bootstrap, topic, (s.value for s in items), partitions=2)
    refused = sum(1 for s in items if s.expect == "api_rejected")
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY_A + "\n")
    http = urllib3.PoolManager()
    raised: list[str] = []
    real_judge = Delivery._judge

    def judge_once_failing(self: Delivery, *args: Any) -> Any:
        if not raised:
            raised.append("yes")
            raise RuntimeError(
                f"injected failure while judging an answer, X-API-Key: {key_file.read_text().strip()}"
            )
        return real_judge(self, *args)

    with Simulator(keys=[KEY_A, KEY_B], limit_per_window=None) as sim:
        sim.echo_key = True
        sim.set_error_rate(0.05)
        sim.set_reject_rule({"payload.description": "reject-me"})
        settings = config.load(
            {
                "KAFKA_BOOTSTRAP_SERVERS": fault_broker.bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
                "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
                "GR_API_KEY_FILE": str(key_file),
                "GR_BASE_URL": sim.url,
                "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
                "GR_BATCH_LINGER_MS": "50",
                "GR_BATCH_MAX_EVENTS": "20",
                "GR_RETRY_INITIAL_S": "0.05",
                "GR_RETRY_MAX_S": "0.5",
                "GR_HTTP_PORT": "0",
                "GR_LOG_LEVEL": "DEBUG",
            }
        )
        root = logging.getLogger()
        saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
        setup_logging(settings.log_level, "json")
        worker = Worker(settings)
        ops = OpsServer(0, worker.metrics, worker.health, host="127.0.0.1")
        ops.start()
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(Delivery, "_judge", judge_once_failing)
                thread.start()
                wait_until(lambda: sim.events_accepted() >= 1000, 120, "delivery with key A")
            key_file.write_text(KEY_B + "\n")  # rotated: the Secret is re-mounted
            sim.revoke_key(KEY_A)  # and the old key stops working
            wait_until(lambda: sim.status_counts().get(403, 0) >= 1, 60, "key A refused")
            ready = http.request("GET", f"http://127.0.0.1:{ops.port}/readyz").data
            wait_until(
                lambda: sim.events_accepted() >= len(items) - refused, 180, "delivery with key B"
            )
            metrics = http.request("GET", f"http://127.0.0.1:{ops.port}/metrics").data
        finally:
            worker.request_stop()
            thread.join(60)
            ops.stop()
            root.handlers[:], level, sys.excepthook, threading.excepthook = saved
            root.setLevel(level)
    assert codes == [0]
    assert raised == ["yes"]
    logs = capfd.readouterr().err
    dlq = read_all(fault_broker.bootstrap, f"{topic}.dlq", expect=refused)
    assert len(dlq) >= refused
    places: dict[str, bytes] = {
        "the logs": logs.encode(),
        "/readyz": ready,
        "/metrics": metrics,
        **{
            f"DLQ record {i} header {k}": v for i, r in enumerate(dlq) for k, v in r.headers.items()
        },
    }
    for where, blob in places.items():
        for key in (KEY_A, KEY_B):
            assert key.encode() not in blob, f"{key[:16]}... found in {where}"
    # the traceback of the failed delivery (the batch is retried), scrubbed
    assert "injected failure while judging an answer, X-API-Key: ***" in logs
    assert '"key":"***"' in logs.replace('\\"', '"')  # the API's echo, logged at DEBUG, scrubbed
    details = [r.headers["gr.dlq.detail"] for r in dlq]
    assert all(b'"key":"***"' in d for d in details), details[:2]
