"""Dead-letter records: the original record, unchanged, plus headers saying why and whence.

`dlq_headers` is pure (tested without Kafka). `DlqWriter` produces with an
idempotent, acks=all producer and reports each record's acknowledgement; a
failed write is retried with backoff, and until it is acknowledged the
record's offset does not count as finished, so the partition cannot commit
past it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumer.errors import GrError

log = logging.getLogger("consumer.dlq")

DLQ_PREFIX = "gr.dlq."
MAX_DETAIL_BYTES = 1024
Headers = list[tuple[str, bytes]]


def truncate_utf8(text: str, limit: int = MAX_DETAIL_BYTES) -> bytes:
    """At most `limit` bytes, cut on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


def dlq_headers(
    original: Headers | None,
    *,
    reason: str,
    detail: str,
    source: Source,
    group: str,
    failed_at: datetime | None = None,
    http_status: int | None = None,
) -> Headers:
    """The original headers (earlier gr.dlq.* ones dropped: a replayed record that fails
    again describes its latest failure) plus the contract's gr.dlq.* headers."""
    headers = [(k, v) for k, v in (original or []) if not k.startswith(DLQ_PREFIX)]
    when = (failed_at or datetime.now(UTC)).astimezone(UTC)
    headers += [
        ("gr.dlq.reason", reason.encode()),
        ("gr.dlq.detail", truncate_utf8(detail)),
        ("gr.dlq.source.topic", source.topic.encode()),
        ("gr.dlq.source.partition", str(source.partition).encode()),
        ("gr.dlq.source.offset", str(source.offset).encode()),
        (
            "gr.dlq.source.timestamp",
            b"" if source.timestamp_ms is None else str(source.timestamp_ms).encode(),
        ),
        ("gr.dlq.consumer.group", group.encode()),
        (
            "gr.dlq.failed.at",
            when.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode(),
        ),
    ]
    if http_status is not None:
        headers.append(("gr.dlq.http.status", str(http_status).encode()))
    return headers


@dataclass(slots=True)
class DlqRecord:
    key: bytes | None
    value: bytes | None
    headers: Headers
    on_acked: Callable[[], None]
    not_before: float = 0.0
    attempts: int = 0


class DlqWriteError(GrError):
    """The DLQ could not take a record (yet); it will be tried again."""


class DlqWriter:
    """Produces DLQ records; call `service()` from the worker's loop (callbacks run there)."""

    def __init__(
        self,
        producer_factory: Callable[[], Any],
        topic: str,
        *,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._factory = producer_factory
        self._producer = producer_factory()
        self._topic = topic
        self._waiting: deque[DlqRecord] = deque()
        self._unacked = 0
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._on_failure = on_failure

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (waiting or in the producer)."""
        return len(self._waiting) + self._unacked

    def send(self, record: DlqRecord) -> None:
        self._waiting.append(record)
        self._produce_due(time.monotonic())

    def service(self, timeout_s: float = 0.0) -> None:
        """Produce what is due and serve acknowledgements; free when nothing is pending."""
        if not self.pending:
            return  # called every loop turn: a producer poll costs ~0.4 ms
        self._produce_due(time.monotonic())
        self._producer.poll(timeout_s)

    def _produce_due(self, now: float) -> None:
        for _ in range(len(self._waiting)):
            record = self._waiting[0]
            if record.not_before > now:
                self._waiting.rotate(-1)
                continue
            try:
                self._producer.produce(
                    self._topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=self._callback(record),
                )
            except BufferError:
                return  # the producer's queue is full: try again next turn
            self._waiting.popleft()
            self._unacked += 1

    def _callback(self, record: DlqRecord) -> Callable[[Any, Any], None]:
        def done(err: Any, _msg: Any) -> None:
            self._unacked -= 1
            if err is None:
                record.on_acked()
                return
            record.attempts += 1
            wait = min(self._retry_max, self._retry_initial * 2 ** min(record.attempts, 16))
            record.not_before = time.monotonic() + wait
            log.warning(
                "dlq write failed; will retry",
                extra={"error": str(err), "attempt": record.attempts, "retry_in_s": wait},
            )
            if self._on_failure is not None:
                self._on_failure(str(err))
            if getattr(err, "fatal", lambda: False)():
                self._producer = self._factory()  # an idempotent producer's fatal error
            self._waiting.append(record)

        return done

    def close(self, timeout_s: float) -> int:
        """Flush, then let the producer go (its threads and connections with it)."""
        left = self.flush(timeout_s)
        self._producer = None
        return left

    def flush(self, timeout_s: float) -> int:
        """Produce and wait; returns how many records are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self.service(0.05)
        return self.pending
