"""Reading the dead-letter topic: its records, their `gr.dlq.*` headers, and ranges of offsets.

Both `inspect` and `replay` read with `assign` (no group membership, no
rebalance) and read the records that are in the topic when they start (up
to the high watermarks then), so records dead-lettered meanwhile wait for
the next run instead of looping.

Anything read from the DLQ is somebody else's bytes: whoever can write to
the topic chooses its headers, key and value. `shown` makes such text safe
for the operator's terminal (every control character, terminal escape,
bidirectional override and other non-printable character is written as its
escape), and `Entry` reads no header as anything but text to show, a time,
or the name of a topic that the replay checks before it sends anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from consumer import config
from consumer.dlq import DLQ_PREFIX
from consumer.errors import ConfigError, GrError
from consumer.kafka_config import consumer_config

REPLAYED_FROM: Final = "gr.dlq.replayed.from"
METADATA_TIMEOUT_S: Final = 10.0
_STALL_S: Final = 30.0  # no record while some are still expected: give up reading


def shown(text: str, width: int | None = None) -> str:
    """`text` fit for a terminal: non-printable characters escaped, cut to `width`."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if width is not None and len(safe) > width:
        return f"{safe[: max(0, width - 3)]}..."
    return safe


def shortened(data: bytes | None, width: int) -> str:
    """A key or value for the terminal: escaped, cut to `width`, its size said when cut."""
    if data is None:
        return "(none)"
    if not data:
        return "(empty)"
    text = shown(data.decode("utf-8", "backslashreplace"))
    if len(text) <= width:
        return text
    return f"{text[: max(0, width - 3)]}... ({len(data):,} bytes)"


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Entry:
    """One DLQ record with its gr.dlq.* headers read (as text, not yet fit to print)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    dlq: dict[str, str]  # the gr.dlq.* headers, decoded (the last of a repeated name)

    @classmethod
    def of(cls, msg: Any) -> Entry:
        headers: list[tuple[str, bytes | None]] = list(msg.headers() or [])
        dlq = {
            k: (v or b"").decode("utf-8", "replace") for k, v in headers if k.startswith(DLQ_PREFIX)
        }
        return cls(msg.partition(), msg.offset(), msg.key(), msg.value(), headers, dlq)

    def header(self, name: str, default: str = "-", width: int | None = 80) -> str:
        """A gr.dlq.* header, fit for the terminal."""
        return shown(self.dlq.get(name, default), width)

    @property
    def reason(self) -> str:
        return self.dlq.get("gr.dlq.reason") or "(no reason header)"

    @property
    def source_topic(self) -> str | None:
        return self.dlq.get("gr.dlq.source.topic") or None

    @property
    def failed_at(self) -> datetime | None:
        raw = self.dlq.get("gr.dlq.failed.at")
        if not raw:
            return None
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when

    def replay_headers(self, dlq_topic: str) -> list[tuple[str, bytes | None]]:
        """The original headers (no gr.dlq.* one), plus where the replay took it from."""
        kept = [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]
        kept.append((REPLAYED_FROM, f"{dlq_topic}:{self.partition}:{self.offset}".encode()))
        return kept


def dlq_consumer(settings: config.Settings, group: str) -> Any:
    """A consumer of the service's cluster for the tools: `group` keeps (or never keeps)
    their progress; they read with `assign`, so it never joins a rebalance."""
    from confluent_kafka import Consumer

    overrides = {
        "group.id": group,
        "enable.partition.eof": True,
        "client.id": f"gr-consumer-dlq-{os.getpid()}",
    }
    return Consumer(consumer_config(settings, **overrides))


def partitions(client: Any, topic: str) -> list[int]:
    metadata = client.list_topics(topic, timeout=METADATA_TIMEOUT_S)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise ConfigError("KAFKA_DLQ_TOPIC", f"names topic {topic!r}, which does not exist")
    return sorted(found.partitions)


def watermarks(consumer: Any, topic: str, chosen: list[int]) -> dict[int, tuple[int, int]]:
    from confluent_kafka import TopicPartition

    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=METADATA_TIMEOUT_S)
        for p in chosen
    }


class RangeReader:
    """Reads offsets [start, end) of each partition with `assign`; commits nothing itself."""

    def __init__(self, consumer: Any, topic: str, ranges: dict[int, tuple[int, int]]) -> None:
        from confluent_kafka import TopicPartition

        self._consumer = consumer
        self._ends = {p: end for p, (_, end) in ranges.items()}
        self.active = {p for p, (start, end) in ranges.items() if start < end}
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(self.active)])
        self._last_record = time.monotonic()

    def batches(self, size: int) -> Iterator[list[Any]]:
        """Lists of records in range (in offset order per partition), one per poll, until
        every partition is read to its end or stopped."""
        from confluent_kafka import KafkaError, KafkaException

        while self.active:
            out: list[Any] = []
            for msg in self._consumer.consume(size, 0.5):
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    self.active.discard(p)  # at the end of the log, so past our range
                    continue
                if p not in self.active:
                    continue
                if msg.offset() >= self._ends[p] - 1:
                    self.active.discard(p)
                    if msg.offset() >= self._ends[p]:
                        continue
                out.append(msg)
            now = time.monotonic()
            if out:
                self._last_record = now
            elif self.active and now - self._last_record > _STALL_S:
                raise GrError(
                    f"no record for {_STALL_S:.0f}s from partitions {sorted(self.active)} "
                    "although their offsets say more are there"
                )
            yield out  # possibly empty: the caller may stop between polls

    def stop(self, partition: int) -> None:
        self.active.discard(partition)
