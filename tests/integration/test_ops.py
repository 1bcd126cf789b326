"""The operator's view of a running worker: probes, metrics, and regex subscriptions."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest
import urllib3

from gr_devtools.kafka_local import create_topic, free_port
from gr_devtools.simulator import Simulator
from tests.integration.conftest import API_KEY
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import committed, produce
from tests.support.procs import spawn_worker, wait_until

pytestmark = pytest.mark.integration

METRICS = [
    "gr_events_consumed_total",
    "gr_events_delivered_total",
    "gr_events_dead_lettered_total",
    "gr_api_requests_total",
    "gr_batch_size_events_bucket",
    "gr_api_request_seconds_bucket",
    "gr_delivery_retries_total",
    "gr_partition_pauses_total",
    "gr_partitions_paused",
    "gr_partitions_assigned",
    "gr_commit_lag",
    "gr_commits_total",
    "gr_rate_limit_remaining",
    "gr_buffered_bytes",
    "gr_rebalances_total",
]


def test_probes_metrics_and_a_regex_subscription(
    bootstrap: str, simulator: Simulator, tmp_path: Path
) -> None:
    prefix = f"ops-{uuid.uuid4().hex[:6]}"
    topics = [f"{prefix}-eu", f"{prefix}-us"]
    for t in topics:
        create_topic(bootstrap, t, 2)
    create_topic(bootstrap, f"{prefix}.dlq", 1)
    for i, t in enumerate(topics):
        produce(bootstrap, t, [encode(transaction(i * 100 + j)) for j in range(100)], partitions=2)
    produce(bootstrap, topics[0], [b"not json"], partition=0)
    simulator.set_default_limit(500)
    simulator.set_error_rate(0.1)
    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": f"^{prefix}-.*",  # a regex: both topics, not the DLQ
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{prefix}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": simulator.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_HTTP_PORT": str(port),
        "GR_BATCH_LINGER_MS": "50",
        "GR_RETRY_INITIAL_S": "0.05",
    }
    http = urllib3.PoolManager(retries=False)
    base = f"http://127.0.0.1:{port}"
    worker = spawn_worker(env, tmp_path, "ops")

    def get(path: str) -> urllib3.BaseHTTPResponse | None:
        try:
            return http.request("GET", base + path, timeout=2)
        except urllib3.exceptions.HTTPError:
            return None

    wait_until(lambda: (r := get("/healthz")) is not None and r.status == 200, 30, "healthz")
    wait_until(lambda: len(simulator.accepted_events()) >= 200, 60, "both topics delivered")
    ready = get("/readyz")
    assert ready is not None
    assert ready.status == 200
    assert orjson.loads(ready.data) == {"status": "ok", "reason": "ok"}
    wait_until(lambda: committed(bootstrap, group, topics[0], 2)[0] == 51, 30, "commit")
    time.sleep(1.5)  # one more commit round for the lag gauge
    metrics = get("/metrics")
    assert metrics is not None
    text = metrics.data.decode()
    for name in METRICS:
        assert f"\n{name}" in text, name
    assert 'gr_events_dead_lettered_total{reason="invalid_json"} 1.0' in text
    assert "gr_events_delivered_total 200.0" in text
    assert 'gr_api_requests_total{endpoint="/api/v1/events",status="200"}' in text
    assert f'gr_events_consumed_total{{topic="{topics[1]}"}} 100.0' in text
    assert "gr_rate_limit_remaining" in text
    assert sorted(seq_of(e) for e in simulator.accepted_events()) == list(range(200))
    assert worker.terminate(60) == 0
