"""Partition state across rebalances, failures and stops, against the real broker.

Each test here reproduces a way a worker used to stop for good, or to stop
too slowly, while it looked healthy: a key halt that outlived the jobs
probing it, a partition paused when it was lost, an unexpected exception, a
stop sequence longer than its setting.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer import dispatch, observe
from consumer.worker import Worker
from gr_devtools import samples
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY, RunningWorker, SettingsFactory, wait_for
from tests.support.kafka_io import committed, produce
from tests.support.procs import group_members, spawn_worker

pytestmark = pytest.mark.integration


def _count(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def _topic_with_events(
    bootstrap: str, make_topic: TopicFactory, partitions: int, n: int, seed: int
) -> str:
    topic = make_topic(partitions=partitions)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    values = (s.value for s in samples.generate(n, poison_share=0.0, seed=seed))
    produce(bootstrap, topic, values, partitions=partitions)
    return topic


def test_key_halt_lifts_after_a_rebalance_cancelled_the_probing_jobs(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    n = 6000
    topic = _topic_with_events(bootstrap, make_topic, 2, n, seed=31)
    simulator.set_latency(0.005)
    # an eager assignor: a member joining takes every partition from every member,
    # so the first worker's probing jobs are all cancelled, and it gets one back
    settings = make_settings(
        topic, KAFKA_PARTITION_ASSIGNMENT_STRATEGY="range", GR_SHUTDOWN_TIMEOUT_S="2",
        KAFKA_MAX_PARTITION_FETCH_BYTES="16384", GR_BATCH_MAX_EVENTS="20",
    )  # fmt: skip
    first = start_worker(settings)
    wait_for(lambda: simulator.events_accepted() >= 300, 60, "delivery under way")
    simulator.revoke_key(API_KEY)
    wait_for(lambda: first.health.halted, 30, "halted")
    second = start_worker(settings)
    wait_for(lambda: _count(second.worker, "gr_partitions_assigned") == 1, 60, "second joined")
    wait_for(lambda: _count(first.worker, "gr_partitions_assigned") == 1, 60, "first kept one")
    assert _count(first.worker, "gr_rebalances_total", kind="revoke") >= 1
    time.sleep(1)
    simulator.restore_key(API_KEY)
    wait_for(lambda: first.health.ready()[0], 30, "first worker ready again")
    wait_for(lambda: simulator.events_accepted() >= n, 60, "every event delivered")
    wait_for(lambda: sum(committed(bootstrap, settings.group_id, topic, 2)) == n, 30, "committed")
    assert first.stop() == 0
    assert second.stop() == 0


def test_partition_paused_when_lost_fetches_again_when_assigned_back(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
) -> None:
    n = 20_000
    topic = _topic_with_events(bootstrap, make_topic, 2, n, seed=32)
    settings = make_settings(
        topic, GR_MAX_BUFFERED_BYTES="1048576", KAFKA_MAX_POLL_INTERVAL_MS="6000",
        KAFKA_SESSION_TIMEOUT_MS="6000", KAFKA_HEARTBEAT_INTERVAL_MS="1000",
    )  # fmt: skip
    worker = Worker(settings)
    stall = threading.Event()

    def until() -> bool:
        if stall.is_set():  # the loop stops past max.poll.interval.ms: the assignment is lost
            stall.clear()
            time.sleep(9)
        return False

    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run(until)), daemon=True)
    simulator.set_outage(True)  # nothing is delivered: the buffers fill, both partitions pause
    thread.start()
    wait_for(lambda: _count(worker, "gr_partitions_paused") == 2, 60, "both paused")
    stall.set()
    wait_for(lambda: _count(worker, "gr_rebalances_total", kind="lost") >= 1, 60, "lost")
    wait_for(lambda: _count(worker, "gr_partitions_assigned") == 2, 60, "assigned back")
    simulator.set_outage(False)
    wait_for(lambda: simulator.events_accepted() >= n, 90, "every event delivered")
    worker.request_stop()
    thread.join(30)
    assert codes == [0]


def test_an_unexpected_error_leaves_the_group_and_returns_1(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
) -> None:
    topic = _topic_with_events(bootstrap, make_topic, 2, 5000, seed=33)
    simulator.set_latency(0.01)
    settings = make_settings(topic)
    worker = Worker(settings)

    def until() -> bool:
        if simulator.events_accepted() >= 500:
            raise ValueError("a bug in the loop")
        return False

    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(worker.run(until))
        except BaseException as exc:  # noqa: BLE001  # what the old loop let escape
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome == [1]
    assert group_members(bootstrap, settings.group_id) == 0  # it left at once


def test_the_whole_stop_fits_the_shutdown_timeout(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator, tmp_path: Path
) -> None:
    """API down and the DLQ not acknowledging: the stop still ends within the setting."""
    topic = make_topic(partitions=4)
    # a DLQ topic that refuses every record: no DLQ write is ever acknowledged
    create_topic(bootstrap, f"{topic}.dlq", 1, **{"max.message.bytes": "64"})
    items = list(samples.generate(4000, poison_share=0.02, seed=34))
    produce(bootstrap, topic, (s.value for s in items), partitions=4)
    timeout_s = 6
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": simulator.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_HTTP_PORT": "0",
        "GR_HTTP_TIMEOUT_S": "1",
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "0.5",
        "GR_SHUTDOWN_TIMEOUT_S": str(timeout_s),
    }
    simulator.set_outage(True)
    worker = spawn_worker(env, tmp_path, "stopper")
    deadline = time.monotonic() + 60
    while '"msg":"record dead-lettered"' not in worker.log():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    time.sleep(1)
    started = time.monotonic()
    code = worker.terminate(60)
    took = time.monotonic() - started
    print(
        f"\nstop with the API down and the DLQ stuck: {took:.1f}s for GR_SHUTDOWN_TIMEOUT_S={timeout_s}"
    )
    assert code == 0, worker.log()
    assert took <= timeout_s + 0.5, worker.log()[-3000:]  # the slack: signal delivery


def test_an_api_outage_longer_than_the_stall_timeout_keeps_liveness(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waiting on the API is not a stall a restart could end: /healthz stays up (every
    worker restarted at once used to, a rebalance that fixed nothing); /readyz and
    gr_partitions_waiting say what it waits on."""
    monkeypatch.setattr(observe, "API_FAILING_S", 1.0)
    topic = _topic_with_events(bootstrap, make_topic, 1, 2000, seed=35)
    simulator.set_outage(True)  # read, never delivered: nothing to commit
    rw = start_worker(make_settings(topic, GR_STALL_TIMEOUT_S="3"))
    wait_for(lambda: "API failing" in rw.health.ready()[1], 30, "readiness saying why")
    time.sleep(5)
    assert rw.health.live()[0]
    age = _count(rw.worker, "gr_partition_last_commit_age_seconds", topic=topic, partition="0")
    assert age > 3
    assert _count(rw.worker, "gr_partitions_waiting", cause="api") == 1
    simulator.set_outage(False)
    wait_for(lambda: rw.health.ready()[0], 30, "ready again once it delivers")
    assert rw.stop() == 0


def test_liveness_fails_for_a_partition_stuck_with_nothing_outside_holding_it(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job lost by a bug (the ledger thinks it in flight, nothing delivers it): only a
    restart ends that, and liveness says so."""
    topic = _topic_with_events(bootstrap, make_topic, 1, 2000, seed=36)
    monkeypatch.setattr(dispatch.Dispatcher, "send", lambda self, jobs: None)
    rw = start_worker(make_settings(topic, GR_STALL_TIMEOUT_S="3"))
    wait_for(lambda: not rw.health.live()[0], 30, "liveness failing")
    assert "committed nothing" in rw.health.live()[1]
    assert rw.health.ready()[0]  # nothing outside is wrong
    rw.worker.request_stop()
