"""A group coordinator that answers the committed-offset look-up with an error.

After an assignment librdkafka asks the coordinator for the group's committed
offsets before it fetches. A coordinator that has just moved, or whose broker
is restarting, answers for the whole request: NOT_COORDINATOR, or
COORDINATOR_NOT_AVAILABLE. librdkafka then never fetches those partitions: the
worker owns them, reads nothing, and says nothing, until it restarts (the
chaos run's broker restart once left four partitions so for six minutes).

A real broker, behind a proxy that makes its answers to the next OffsetFetch
requests those errors, under one worker, two workers (the second joining
while the coordinator answers wrongly), a user's eager assignor and the
KIP-848 protocol: every
event is delivered and committed, and the worker says it assigned again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from consumer import config
from gr_devtools.kafka_local import LocalKafka, create_topic, free_port
from gr_devtools.simulator import Simulator
from tests.integration.conftest import API_KEY, RunningWorker, wait_for
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import committed, end_offsets, produce
from tests.support.kafka_proxy import (
    COORDINATOR_LOAD_IN_PROGRESS,
    COORDINATOR_NOT_AVAILABLE,
    NOT_COORDINATOR,
    KafkaProxy,
)

pytestmark = pytest.mark.integration

PARTITIONS = 12
PER_PARTITION = 40


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[LocalKafka, KafkaProxy]]:
    inner = free_port()
    proxy = KafkaProxy(inner)
    broker = LocalKafka(extra_listeners={"PROXIED": (inner, proxy.port)})
    broker.start()
    try:
        yield broker, proxy
    finally:
        broker.destroy()
        proxy.close()


def _settings(
    bootstrap: str, topic: str, group: str, sim: Simulator, **env: str
) -> config.Settings:
    base = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": sim.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "100",
        "GR_HTTP_PORT": "0",
        "GR_SHUTDOWN_TIMEOUT_S": "5",
    }
    base.update(env)
    return config.load(base)


def _topic(direct: str, events: range) -> tuple[str, str]:
    """A new topic holding `events`, with its DLQ topic, and a new group's name."""
    topic = f"lookup-{uuid.uuid4().hex[:6]}"
    create_topic(direct, topic, PARTITIONS)
    create_topic(direct, f"{topic}.dlq", 1)
    produce(direct, topic, (encode(transaction(i)) for i in events), partitions=PARTITIONS)
    return topic, f"g-{uuid.uuid4().hex[:8]}"


def _delivered(sim: Simulator) -> set[int]:
    return {seq_of(e) for r in sim.records() for e in r.events}


def _committed_all(direct: str, group: str, topic: str) -> bool:
    ends = end_offsets(direct, topic, PARTITIONS)
    return committed(direct, group, topic, PARTITIONS) == ends


# Statistics every second where the default's 5 s is not what the case is about.
_FAST_STATS = {"KAFKA_STATISTICS_INTERVAL_MS": "1000"}


@pytest.mark.parametrize(
    ("error", "env"),
    [
        (NOT_COORDINATOR, {}),
        (COORDINATOR_NOT_AVAILABLE, _FAST_STATS),
        # eager: whole assignments only
        (NOT_COORDINATOR, {"KAFKA_PARTITION_ASSIGNMENT_STRATEGY": "range", **_FAST_STATS}),
        # KIP-848: the broker assigns
        (NOT_COORDINATOR, {"KAFKA_GROUP_PROTOCOL": "consumer", **_FAST_STATS}),
        (COORDINATOR_LOAD_IN_PROGRESS, {}),  # librdkafka asks again itself
    ],
    ids=["not-coordinator", "coordinator-not-available", "eager", "kip-848", "load-in-progress"],
)
def test_partitions_whose_offset_look_up_failed_are_fetched_after_all(
    proxied: tuple[LocalKafka, KafkaProxy],
    simulator: Simulator,
    start_worker: Callable[..., RunningWorker],
    error: int,
    env: dict[str, str],
) -> None:
    broker, proxy = proxied
    direct = broker.bootstrap
    n = PARTITIONS * PER_PARTITION
    topic, group = _topic(direct, range(n))
    proxy.fail_offset_fetches(1, error)
    rw = start_worker(_settings(f"127.0.0.1:{proxy.port}", topic, group, simulator, **env))
    wait_for(lambda: _delivered(simulator) >= set(range(n)), 60, "every event delivered")
    wait_for(lambda: _committed_all(direct, group, topic), 30, "every partition committed")
    assert proxy.failed == 1
    restarts = rw.metrics.fetch_restarts._value.get()
    assert rw.stop() == 0
    if error == COORDINATOR_LOAD_IN_PROGRESS:
        assert restarts == 0  # librdkafka asked again; nothing was stuck
    else:
        assert restarts == PARTITIONS


def test_a_worker_joining_while_the_coordinator_answers_wrongly_fetches_its_share(
    proxied: tuple[LocalKafka, KafkaProxy],
    simulator: Simulator,
    start_worker: Callable[..., RunningWorker],
) -> None:
    """Scale-out: the second worker's share comes with a failed look-up; the first
    worker's look-ups for what it gets back are unaffected."""
    broker, proxy = proxied
    direct = broker.bootstrap
    first = PARTITIONS * PER_PARTITION
    topic, group = _topic(direct, range(first))
    bootstrap = f"127.0.0.1:{proxy.port}"
    one = start_worker(_settings(bootstrap, topic, group, simulator))
    wait_for(lambda: _committed_all(direct, group, topic), 60, "the first events committed")
    proxy.fail_offset_fetches(1, NOT_COORDINATOR)
    two = start_worker(_settings(bootstrap, topic, group, simulator))
    wait_for(lambda: proxy.failed == 1, 30, "the second worker's look-up answered wrongly")
    more = range(first, 2 * first)
    produce(direct, topic, (encode(transaction(i)) for i in more), partitions=PARTITIONS)
    wait_for(lambda: _delivered(simulator) >= set(range(2 * first)), 60, "every event delivered")
    wait_for(lambda: _committed_all(direct, group, topic), 30, "every partition committed")
    owned_by_two = two.metrics.partitions_assigned._value.get()
    restarts = one.metrics.fetch_restarts._value.get() + two.metrics.fetch_restarts._value.get()
    assert two.stop() == 0
    assert one.stop() == 0
    assert owned_by_two > 0
    assert restarts >= 1
