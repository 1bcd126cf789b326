"""A DLQ that cannot take a record: never a crash; waits, retries, shows it, and bounds delivery.

Against the real broker: a record larger than the producer's own limit, a
DLQ topic that does not exist (yet), a DLQ topic that refuses everything,
and DLQ records of a partition that moved to another worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from consumer.worker import Worker
from gr_devtools import samples
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.kafka_io import committed, produce, read_all

pytestmark = pytest.mark.integration


def _value(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def _valid(n: int, seed: int) -> list[bytes]:
    return [v for s in samples.generate(n, poison_share=0.0, seed=seed) if (v := s.value)]


def test_a_record_too_large_for_the_producer_goes_to_the_dlq_truncated(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    huge = b'{"event_type":"purchase","payload":"' + b"x" * 1_010_000 + b'"}'
    valid = _valid(20, seed=41)
    # the broker takes it (its limit is 1,048,588 bytes) and the consumer reads it;
    # a producer with the default message.max.bytes (1,000,000) would refuse it
    produce(bootstrap, topic, [*valid[:10], huge, *valid[10:]],
            conf={"message.max.bytes": 2_000_000})  # fmt: skip
    rw = start_worker(make_settings(topic))
    wait_for(lambda: committed(bootstrap, rw.worker.settings.group_id, topic, 1) == [21], 60,
             "committed past the huge record")  # fmt: skip
    assert simulator.events_accepted() == 20
    (record,) = read_all(bootstrap, f"{topic}.dlq", expect=1)
    assert record.headers["gr.dlq.reason"] == b"too_large"
    assert record.headers["gr.dlq.source.offset"] == b"10"
    assert record.headers["gr.dlq.original.size"] == str(len(huge)).encode()
    assert record.value is not None
    assert 0 < len(record.value) < 1_000_000
    assert huge.startswith(record.value)
    assert rw.stop() == 0


def test_a_missing_dlq_topic_waits_shows_and_recovers(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=1)
    valid = _valid(50, seed=42)
    produce(bootstrap, topic, [*valid[:25], b"not json", *valid[25:]])
    settings = make_settings(topic, KAFKA_TOPIC_METADATA_PROPAGATION_MAX_MS="2000")
    rw = start_worker(settings)
    wait_for(lambda: _value(rw.worker, "gr_dlq_write_failures_total",
                            error="UNKNOWN_TOPIC_OR_PART") >= 1, 90, "a failed DLQ write")  # fmt: skip
    ready, reason = rw.health.ready()
    assert not ready
    assert "DLQ" in reason
    assert rw.thread.is_alive()
    assert committed(bootstrap, settings.group_id, topic, 1) == [25]  # not past the record
    create_topic(bootstrap, f"{topic}.dlq", 1)
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 1) == [51], 90, "committed")
    wait_for(lambda: rw.health.ready()[0], 10, "ready again")
    assert simulator.events_accepted() == 50
    assert rw.stop() == 0


def test_delivery_stops_a_bounded_number_of_events_ahead_of_the_commit(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1, **{"max.message.bytes": "64"})  # refuses all
    produce(bootstrap, topic, [b"not json", *_valid(3000, seed=43)])
    bound = 500
    rw = start_worker(make_settings(topic, GR_MAX_UNCOMMITTED_EVENTS=str(bound)))
    wait_for(lambda: _value(rw.worker, "gr_partition_pauses_total", cause="uncommitted") >= 1,
             60, "paused for uncommitted events")  # fmt: skip
    time.sleep(2)
    accepted = simulator.events_accepted()
    assert accepted >= bound
    assert accepted <= bound + rw.worker.settings.batch_max_events  # one batch past the line
    assert _value(rw.worker, "gr_partitions_paused") == 1  # a record waits for the DLQ
    labels = {"topic": topic, "partition": "0"}
    wait_for(lambda: _value(rw.worker, "gr_partition_uncommitted_events", **labels) >= bound,
             5, "the gauge")  # fmt: skip
    assert _value(rw.worker, "gr_dlq_write_failures_total", error="MSG_SIZE_TOO_LARGE") >= 1
    assert rw.stop() == 0


def test_dlq_records_of_a_partition_that_moved_are_not_retried(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=2)
    create_topic(bootstrap, f"{topic}.dlq", 1, **{"max.message.bytes": "64"})  # refuses all
    valid = _valid(200, seed=44)
    poison = {0: 3, 1: 5}
    for p, count in poison.items():
        produce(bootstrap, topic, [*valid[:100], *[b"not json"] * count], partition=p)
    settings = make_settings(topic, GR_SHUTDOWN_TIMEOUT_S="2")
    first = start_worker(settings)
    wait_for(lambda: first.worker._dlq.pending == 8, 60, "both partitions' records pending")
    second = start_worker(settings)
    wait_for(lambda: _value(first.worker, "gr_partitions_assigned") == 1, 60, "one moved")
    wait_for(lambda: _value(second.worker, "gr_partitions_assigned") == 1, 60, "second owns one")
    # the records of the partition that moved are dropped: only the kept one's remain
    wait_for(lambda: first.worker._dlq.pending in set(poison.values()), 10,
             "only the kept partition's records pending")  # fmt: skip
    assert first.stop() == 0
    assert second.stop() == 0


def test_a_producer_in_librdkafkas_fatal_state_is_replaced_and_the_record_still_goes(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    """With `enable.gapless.guarantee` the idempotent DLQ producer turns fatal when the DLQ
    topic refuses a record for its size: confluent-kafka raises the fatal error from poll()
    and refuses every later produce with `_FATAL`. The writer replaces the producer, cuts the
    copy smaller, and the worker goes on (it used to exit 1: the error escaped the loop)."""
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1, **{"max.message.bytes": "20000"})
    poison = b"{" + b"p" * 60_000  # invalid_json, 60 KB
    valid = _valid(30, seed=7)
    produce(bootstrap, topic, [*valid[:10], poison, *valid[10:]])
    settings = make_settings(
        topic, KAFKA_ENABLE_GAPLESS_GUARANTEE="true", GR_EVENT_MAX_BYTES="100000"
    )
    rw = start_worker(settings)
    wait_for(
        lambda: (
            not rw.thread.is_alive() or committed(bootstrap, settings.group_id, topic, 1) == [31]
        ),
        90,
        "committed past the poison record",
    )
    assert rw.thread.is_alive(), f"the worker stopped with exit code {rw.exit_code}"
    assert _value(rw.worker, "gr_dlq_write_failures_total", error="_FATAL") >= 1
    assert rw.stop() == 0
    assert simulator.events_accepted() == 30
    (record,) = read_all(bootstrap, f"{topic}.dlq", expect=1)
    assert record.headers["gr.dlq.reason"] == b"too_large"
    assert record.headers["gr.dlq.original.reason"] == b"invalid_json"
    assert record.headers["gr.dlq.source.offset"] == b"10"
    assert record.value is not None
    assert poison.startswith(record.value)
