"""The local broker really is a Kafka broker: groups, commits, and restarts keep data."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from gr_devtools.kafka_local import LocalKafka, committed_with_retry
from tests.conftest import TopicFactory

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % partitions)
    assert producer.flush(30) == 0


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def test_group_consume_commit_and_read_back(bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=3)
    _produce(bootstrap, topic, 30, 3)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = _consumer(bootstrap, group)
    consumer.subscribe([topic])
    seen: list[bytes] = []
    for _ in range(100):
        for msg in consumer.consume(100, timeout=0.5):
            assert msg.error() is None
            seen.append(msg.value() or b"")
        if len(seen) >= 30:
            break
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(30))
    result = consumer.commit(asynchronous=False)
    assert all(tp.error is None for tp in result)
    consumer.close()

    fresh = _consumer(bootstrap, group)
    committed = fresh.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    fresh.close()
    assert [tp.offset for tp in committed] == [10, 10, 10]


def test_committed_offsets_survive_a_broker_restart(
    local_broker: LocalKafka, make_topic: TopicFactory
) -> None:
    bootstrap = local_broker.bootstrap
    topic = make_topic(partitions=2)
    _produce(bootstrap, topic, 20, 2)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = _consumer(bootstrap, group)
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    consumer.commit(
        offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 7)], asynchronous=False
    )
    consumer.close()

    local_broker.restart()

    fresh = _consumer(bootstrap, group)
    committed = committed_with_retry(fresh, [TopicPartition(topic, 0), TopicPartition(topic, 1)])
    # the records are still there too
    fresh.assign([TopicPartition(topic, 0, 0)])
    values = []
    for _ in range(40):
        values += [m.value() for m in fresh.consume(50, timeout=0.5) if m.error() is None]
        if len(values) >= 10:
            break
    fresh.close()
    assert [tp.offset for tp in committed] == [4, 7]
    assert values == [f"v{i}".encode() for i in range(0, 20, 2)]
