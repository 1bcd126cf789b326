"""Long outages: the API down past max.poll.interval.ms, the key revoked mid-stream.

The worker must stay in its group (no eviction, no lost partitions), hold
memory within its cap, dead-letter nothing, and pick up by itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from consumer import config
from consumer.worker import Worker
from gr_devtools import samples
from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.support.kafka_io import committed, produce, read_all
from tests.support.procs import group_members, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.integration]

KEY = "outage-key-51be0a"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(keys=[KEY], limit_per_window=None) as s:
        yield s


def _settings(broker: LocalKafka, topic: str, sim: Simulator, **extra: str) -> config.Settings:
    return config.load(
        {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "GR_API_KEY": KEY,
            "GR_BASE_URL": sim.url,
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_HTTP_PORT": "0",
            "GR_BATCH_LINGER_MS": "50",
            "GR_HTTP_TIMEOUT_S": "1",
            "GR_RETRY_INITIAL_S": "0.05",
            "GR_RETRY_MAX_S": "1",
            **extra,
        }
    )


def _start(settings: config.Settings) -> tuple[Worker, threading.Thread, list[int]]:
    worker = Worker(settings)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    return worker, thread, codes


def _gauge(worker: Worker, name: str) -> float:
    value = worker.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def _rebalances(worker: Worker, kind: str) -> float:
    value = worker.metrics.registry.get_sample_value("gr_rebalances_total", {"kind": kind})
    return 0.0 if value is None else value


def test_api_down_longer_than_max_poll_interval(fault_broker: LocalKafka, sim: Simulator) -> None:
    topic = f"outage-{uuid.uuid4().hex[:6]}"
    create_topic(fault_broker.bootstrap, topic, 6)
    create_topic(fault_broker.bootstrap, f"{topic}.dlq", 1)
    n = 30_000
    produce(fault_broker.bootstrap, topic,
            (s.value for s in samples.generate(n, poison_share=0.0, seed=4)), partitions=6)  # fmt: skip
    cap = 2 * 1024 * 1024
    settings = _settings(
        fault_broker, topic, sim,
        KAFKA_MAX_POLL_INTERVAL_MS="8000", KAFKA_SESSION_TIMEOUT_MS="6000",
        KAFKA_HEARTBEAT_INTERVAL_MS="1000", GR_MAX_BUFFERED_BYTES=str(cap),
    )  # fmt: skip
    worker, thread, codes = _start(settings)
    wait_until(lambda: sim.events_accepted() >= 2000, 60, "delivery under way")
    sim.set_outage(True)  # connection refused
    outage_s, peak_buffered, members_seen = 20.0, 0.0, set()
    end = time.monotonic() + outage_s
    while time.monotonic() < end:
        peak_buffered = max(peak_buffered, _gauge(worker, "gr_buffered_bytes"))
        members_seen.add(group_members(fault_broker.bootstrap, settings.group_id))
        time.sleep(0.5)
    accepted_during = sim.events_accepted()
    sim.set_outage(False)
    back = time.monotonic()
    wait_until(lambda: sim.events_accepted() >= n, 120, "everything after the outage")
    resume_s = time.monotonic() - back
    wait_until(lambda: sum(committed(fault_broker.bootstrap, settings.group_id, topic, 6)) == n,
               30, "committed")  # fmt: skip
    revokes_before_stop = _rebalances(worker, "revoke")  # close() revokes, later
    worker.request_stop()
    thread.join(60)
    print(f"\noutage {outage_s:.0f}s > max.poll.interval 8s: members seen {sorted(members_seen)}, "
          f"lost {_rebalances(worker, 'lost')}, assigns {_rebalances(worker, 'assign')}, "
          f"peak buffered {peak_buffered / 1024:.0f} KiB (cap {cap // 1024} KiB), "
          f"rest ({n - accepted_during:,} events) delivered in {resume_s:.1f}s after it")  # fmt: skip
    assert codes == [0]
    assert members_seen == {1}
    assert _rebalances(worker, "lost") == 0
    assert revokes_before_stop == 0
    assert _rebalances(worker, "assign") == 1  # never evicted, never re-joined
    assert peak_buffered <= cap + settings.batch_max_bytes  # one batch over is the paused edge
    assert _gauge(worker, "gr_partitions_paused") == 0  # all resumed afterwards
    assert sim.events_accepted() == n  # nothing twice: no partition moved
    assert read_all(fault_broker.bootstrap, f"{topic}.dlq", timeout_s=3) == []


def test_key_revoked_mid_stream_then_restored(fault_broker: LocalKafka, sim: Simulator) -> None:
    topic = f"revoke-{uuid.uuid4().hex[:6]}"
    create_topic(fault_broker.bootstrap, topic, 4)
    create_topic(fault_broker.bootstrap, f"{topic}.dlq", 1)
    n = 20_000
    produce(fault_broker.bootstrap, topic,
            (s.value for s in samples.generate(n, poison_share=0.0, seed=8)), partitions=4)  # fmt: skip
    sim.set_latency(0.01)
    settings = _settings(fault_broker, topic, sim)
    worker, thread, codes = _start(settings)
    wait_until(lambda: sim.events_accepted() >= 3000, 60, "delivery under way")
    sim.revoke_key(KEY)
    wait_until(lambda: worker.health.halted, 30, "halted")
    ready, reason = worker.health.ready()
    assert not ready
    assert "403" in reason
    time.sleep(1)
    frozen_events = sim.events_accepted()
    frozen_marks = committed(fault_broker.bootstrap, settings.group_id, topic, 4)
    time.sleep(4)
    assert sim.events_accepted() == frozen_events  # nothing delivered while refused
    later_marks = committed(fault_broker.bootstrap, settings.group_id, topic, 4)
    assert later_marks == frozen_marks  # nothing further committed
    refused = sim.status_counts().get(403, 0)
    assert refused >= 1
    sim.restore_key(KEY)
    wait_until(lambda: sim.events_accepted() >= n, 120, "resumed by itself")
    wait_until(lambda: worker.health.ready()[0], 10, "ready again")
    wait_until(lambda: sum(committed(fault_broker.bootstrap, settings.group_id, topic, 4)) == n,
               30, "committed")  # fmt: skip
    worker.request_stop()
    thread.join(60)
    print(f"\nkey revoked: {refused} requests refused (403) while halted, "
          f"{sim.events_accepted():,} events delivered in the end")  # fmt: skip
    assert codes == [0]
    assert sim.events_accepted() == n
    assert read_all(fault_broker.bootstrap, f"{topic}.dlq", timeout_s=3) == []
