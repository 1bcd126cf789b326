"""Dead-letter records: the original record, unchanged, plus headers saying why and whence.

`dlq_headers` is pure (tested without Kafka). `DlqWriter` produces with an
idempotent, acks=all producer and reports each record's acknowledgement; a
failed write, whatever the error, is retried with backoff and reported, never
raised to the worker; until it is acknowledged the record's offset does not
count as finished, so the partition cannot commit past it.

The DLQ takes every record the consumer can read: one too large for the
producer or the DLQ topic (the consumer reads records up to the broker's
limit, the producer's own default is lower) goes as a truncated copy, reason
`too_large`, its original reason, size and coordinates in the headers.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException

from consumer import redaction
from consumer.clock import SYSTEM, Clock
from consumer.errors import DlqWriteError

log = logging.getLogger("consumer.dlq")

DLQ_PREFIX = "gr.dlq."
MAX_DETAIL_BYTES = 1024
Headers = list[tuple[str, bytes | None]]  # a header's value may be null (Kafka allows it)


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
        # the detail may quote the API's answer: no secret leaves in it
        ("gr.dlq.detail", truncate_utf8(redaction.scrub(detail))),
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


def _header_bytes(headers: Headers) -> int:
    return sum(len(k) + len(v or b"") for k, v in headers)


@dataclass(slots=True)
class DlqRecord:
    key: bytes | None
    value: bytes | None
    headers: Headers
    on_acked: Callable[[], None]
    not_before: float = 0.0
    attempts: int = 0
    # its partition went to another worker, which reads and dead-letters it again
    cancelled: bool = False
    # after the DLQ topic refused it for its size: the size to cut it to next
    cap: int = 0

    @property
    def size(self) -> int:
        """Roughly what the producer counts against message.max.bytes."""
        return (
            len(self.value or b"")
            + len(self.key or b"")
            + _header_bytes(self.headers)
            + RECORD_OVERHEAD
        )


RECORD_OVERHEAD = 512  # record and batch framing, with room to spare
# a broker-side size refusal (the DLQ topic's own max.message.bytes) is met with this much,
# then half as much at each further refusal
SMALL_COPY_BYTES = 64 * 1024


def truncate(record: DlqRecord, limit: int) -> DlqRecord:
    """Cut the record, in place, to fit `limit` bytes: the value first, then the original
    headers. Reason `too_large`; the original reason and sizes kept in `gr.dlq.original.*`."""
    value = record.value or b""
    ours = [(k, v or b"") for k, v in record.headers if k.startswith(DLQ_PREFIX)]
    theirs = [(k, v) for k, v in record.headers if not k.startswith(DLQ_PREFIX)]
    found = dict(ours)
    reason = (found.get("gr.dlq.original.reason") or found.get("gr.dlq.reason") or b"").decode()
    size = int(found.get("gr.dlq.original.size") or str(len(value)).encode())
    detail = found.get("gr.dlq.detail", b"").decode("utf-8", "replace")
    if "gr.dlq.original.size" not in found:
        detail = f"{size} bytes, too large for the DLQ; cut ({reason}: {detail})"
    drop = ("gr.dlq.reason", "gr.dlq.detail", "gr.dlq.original.size", "gr.dlq.original.reason")
    ours = [(k, v) for k, v in ours if k not in drop] + [
        ("gr.dlq.reason", b"too_large"),
        ("gr.dlq.detail", truncate_utf8(detail)),
        ("gr.dlq.original.size", str(size).encode()),
        ("gr.dlq.original.reason", reason.encode()),
    ]
    record.value = b""
    record.headers = [*theirs, *ours]
    if record.size > limit and theirs:
        # the value alone was not enough: the original headers go too, and say so
        record.headers = [
            *ours,
            ("gr.dlq.original.headers.count", str(len(theirs)).encode()),
            ("gr.dlq.original.headers.size", str(_header_bytes(theirs)).encode()),
        ]
    record.value = value[: max(0, limit - record.size)]
    return record


def error_name(err: Any) -> str:
    """A librdkafka error's name (bounded set: fit for a metric label)."""
    name = getattr(err, "name", None)
    if callable(name):
        return str(name())
    return type(err).__name__


class DlqWriter:
    """Produces DLQ records; call `service()` from the worker's loop (callbacks run there)."""

    def __init__(
        self,
        producer_factory: Callable[[], Any],
        topic: str,
        *,
        max_message_bytes: int = 1_000_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        on_failure: Callable[[str], None] | None = None,
        on_success: Callable[[], None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._clock = clock
        self._factory = producer_factory
        self._producer: Any = producer_factory()
        self._topic = topic
        self._max_bytes = max_message_bytes
        self._waiting: deque[DlqRecord] = deque()
        self._unacked = 0
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._on_failure = on_failure
        self._on_success = on_success
        self._replace = False

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (waiting or in the producer)."""
        return len(self._waiting) + self._unacked

    def send(self, record: DlqRecord) -> None:
        if record.size > self._max_bytes:
            truncate(record, self._max_bytes)
        self._waiting.append(record)
        self._produce_due(self._clock.monotonic())

    def discard_cancelled(self) -> int:
        """Drop waiting records whose partition went; returns how many."""
        before = len(self._waiting)
        self._waiting = deque(r for r in self._waiting if not r.cancelled)
        return before - len(self._waiting)

    def service(self, timeout_s: float = 0.0) -> None:
        """Produce what is due and serve acknowledgements; free when nothing is pending."""
        if not self.pending:
            return  # called every loop turn: a producer poll costs ~0.4 ms
        self._produce_due(self._clock.monotonic())
        self._producer.poll(timeout_s)
        if self._replace:
            self._renew()

    def _renew(self) -> None:
        """A fatal producer error: a new producer; what the old one held is sent again.

        Never from inside a delivery callback: the old producer is purged and
        polled here, so each record it held comes back through its callback.
        """
        self._replace = False
        old = self._producer
        with contextlib.suppress(Exception):
            old.purge()
            old.poll(0)
        self._producer = self._factory()

    def _produce_due(self, now: float) -> None:
        for _ in range(len(self._waiting)):
            record = self._waiting[0]
            if record.cancelled:
                self._waiting.popleft()
                continue
            if record.not_before > now:
                self._waiting.rotate(-1)
                continue
            try:
                self._produce(record)
            except BufferError:
                return  # the producer's queue is full: try again next turn
            except DlqWriteError as exc:
                self._waiting.popleft()
                if exc.code == "MSG_SIZE_TOO_LARGE":
                    self._shrink(record)
                self._failed(record, exc.code)
                continue
            self._waiting.popleft()
            self._unacked += 1

    def _produce(self, record: DlqRecord) -> None:
        try:
            self._producer.produce(
                self._topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                on_delivery=self._callback(record),
            )
        except KafkaException as exc:
            raise DlqWriteError(error_name(exc.args[0]) if exc.args else "unknown") from exc

    def _shrink(self, record: DlqRecord) -> None:
        """Refused for its size: cut it if it is over the cap, a cap halved at each refusal
        (the topic's limit is unknown). The broker refuses whole producer batches, so a
        small record refused beside a large one goes again as it is."""
        cap = record.cap or min(self._max_bytes, SMALL_COPY_BYTES)
        record.cap = max(RECORD_OVERHEAD, cap // 2)
        if record.size > cap:
            truncate(record, cap)

    def _failed(self, record: DlqRecord, code: str) -> None:
        """Any failure: wait with backoff, report it, try again (unless its partition went)."""
        if self._on_failure is not None:
            self._on_failure(code)
        if record.cancelled:
            return
        record.attempts += 1
        wait = min(self._retry_max, self._retry_initial * 2 ** min(record.attempts, 16))
        record.not_before = self._clock.monotonic() + wait
        if record.attempts & (record.attempts - 1) == 0:  # 1, 2, 4, 8...: not every retry
            log.warning(
                "dlq write failed; will retry",
                extra={"error": code, "attempt": record.attempts, "retry_in_s": wait},
            )
        self._waiting.append(record)

    def _callback(self, record: DlqRecord) -> Callable[[Any, Any], None]:
        def done(err: Any, _msg: Any) -> None:
            self._unacked -= 1
            if err is None:
                record.on_acked()
                if self._on_success is not None:
                    self._on_success()
                return
            code = error_name(err)
            if code == "MSG_SIZE_TOO_LARGE":  # the DLQ topic's own limit is lower
                self._shrink(record)
            if getattr(err, "fatal", lambda: False)():
                self._replace = True  # in service(), not inside the producer's own callback
            self._failed(record, code)

        return done

    def close(self, timeout_s: float) -> int:
        """Flush, then let the producer go (its threads and connections with it)."""
        left = self.flush(timeout_s)
        self._producer = None
        return left

    def flush(self, timeout_s: float) -> int:
        """Produce and wait; returns how many records are still unacknowledged."""
        deadline = self._clock.monotonic() + timeout_s
        while self.pending and self._clock.monotonic() < deadline:
            self.service(min(0.05, max(0.0, deadline - self._clock.monotonic())))
        return self.pending
