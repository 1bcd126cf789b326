"""Small, real Kafka I/O for tests: produce records, read a topic back, read commits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from gr_devtools.kafka_local import committed_with_retry


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    # as they came: duplicates and null values kept
    header_list: tuple[tuple[str, bytes | None], ...] = ()


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | None],
    *,
    partition: int | None = None,
    partitions: int | None = None,
    keys: Iterable[bytes | None] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    conf: dict[str, Any] | None = None,
) -> int:
    """Produce in order; `partitions` spreads round-robin, `partition` pins one."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **(conf or {})}
    )
    key_iter = iter(keys) if keys is not None else None
    count = 0
    for i, value in enumerate(values):
        kwargs: dict[str, Any] = {"value": value}
        if key_iter is not None:
            kwargs["key"] = next(key_iter)
        if partition is not None:
            kwargs["partition"] = partition
        elif partitions is not None:
            kwargs["partition"] = i % partitions
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    assert producer.flush(60) == 0
    return count


def read_all(
    bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 30
) -> list[Record]:
    """Every record of a topic, without a group: read each partition to its end.

    With `expect`, first wait (up to `timeout_s`) until the topic holds that many,
    for records that are still being written.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = sorted(meta.partitions)

        def ends() -> dict[int, tuple[int, int]]:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in parts
            }

        marks = ends()
        while expect is not None and time.monotonic() < deadline:
            if sum(high - low for low, high in marks.values()) >= expect:
                break
            time.sleep(0.2)
            marks = ends()
        remaining = {p: high for p, (low, high) in marks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in remaining])
        out: list[Record] = []
        while remaining and time.monotonic() < deadline + 30:
            msgs: list[Any] = consumer.consume(500, 0.5)
            for m in msgs:
                if m.error() is not None:
                    continue
                listed = tuple(m.headers() or [])
                out.append(
                    Record(
                        m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                        dict(listed), listed,
                    )
                )  # fmt: skip
                if m.offset() + 1 >= remaining.get(m.partition(), 0):
                    remaining.pop(m.partition(), None)
        return out
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset per partition (-1001 when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = committed_with_retry(consumer, [TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    return [tp.offset for tp in tps]


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()
