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
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer import redaction
from consumer.clock import SYSTEM, Clock
from consumer.errors import DlqWriteError
from consumer.events import DETAIL_MAX_BYTES

log = logging.getLogger("consumer.dlq")

DLQ_PREFIX = "gr.dlq."
Headers = list[tuple[str, bytes | None]]  # a header's value may be null (Kafka allows it)


def truncate_utf8(text: str, limit: int = DETAIL_MAX_BYTES) -> bytes:
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


@dataclass(slots=True, eq=False)
class DlqRecord:
    """One record on its way to the DLQ; the writer holds it until the DLQ acknowledges it."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    # whose it is: the worker's (partition, generation); `offset` and `reason` for its books
    owner: Any = None
    offset: int = -1
    reason: str = ""
    not_before: float = 0.0
    attempts: int = 0
    # its partition went to another worker, which reads and dead-letters it again
    cancelled: bool = False
    # after the DLQ topic refused it for its size: the size to cut it to next
    cap: int = 0
    # the producer it was last handed to (0: none; it waits in the writer)
    sent_with: int = 0
    # the bytes its owner counts it for while it waits (its size when it was made)
    held: int = 0

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


_ACK_POLL_S = 0.005


def _is_fatal(err: Any) -> bool:
    """librdkafka's fatal state, however the client shows it: `poll` raises the original
    error with `fatal()` true (`_GAPLESS_GUARANTEE`, `PRODUCER_FENCED`...), later `produce`
    calls raise `_FATAL` with `fatal()` false, as do the error callback and delivery reports."""
    if err is None:
        return False
    code = getattr(err, "code", None)
    fatal = getattr(err, "fatal", None)
    return bool((callable(code) and code() == KafkaError._FATAL) or (callable(fatal) and fatal()))


def error_name(err: Any) -> str:
    """A librdkafka error's name (bounded set: fit for a metric label)."""
    name = getattr(err, "name", None)
    if callable(name):
        return str(name())
    return type(err).__name__


class DlqWriter:
    """The one place DLQ records wait: produced, retried with backoff until acknowledged.

    Call `service()` from the worker's loop (the producer's callbacks run there);
    it returns the records acknowledged since the last call. A failure of any
    kind (a missing topic, no authorisation, a full queue, a size refusal, the
    producer's fatal state) waits and is tried again: never raised. A producer
    in librdkafka's fatal state is replaced, whichever way the client reports
    it: `poll` raising the fatal error (what confluent-kafka does), `produce`
    refusing with `_FATAL`, the error callback, a delivery report.
    """

    def __init__(
        self,
        producer_factory: Callable[[dict[str, Any]], Any],
        conf: dict[str, Any],
        topic: str,
        *,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        on_failure: Callable[[str], None] | None = None,
        on_success: Callable[[], None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._clock = clock
        self._factory = producer_factory
        self._conf = {**conf, "error_cb": self._on_error}
        self._topic = topic
        self._max_bytes = int(conf.get("message.max.bytes", 1_000_000))
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._on_failure = on_failure
        self._on_success = on_success
        self._generation = 0
        self._producer: Any = None
        self._fatal = False
        self._new_producer()
        self._records: dict[int, DlqRecord] = {}  # by id: every record not yet acknowledged
        self._due: list[tuple[float, int, DlqRecord]] = []  # those waiting to be produced
        self._seq = itertools.count()
        self._producing: dict[int, DlqRecord] = {}  # by id: handed to the producer, unreported
        self._acked: list[DlqRecord] = []

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (waiting or in the producer)."""
        return len(self._records)

    def next_wake(self, now: float) -> float | None:
        """When `service()` next has work: soon while the producer holds records (their
        acknowledgements arrive on its threads), else the earliest retry."""
        if self._producing:
            return now + _ACK_POLL_S
        due = self._due
        while due and due[0][2].cancelled:
            heapq.heappop(due)
        return due[0][0] if due else None

    def send(self, record: DlqRecord) -> None:
        if record.size > self._max_bytes:
            truncate(record, self._max_bytes)
        self._records[id(record)] = record
        self._queue(record)
        self._produce_due(self._clock.monotonic())

    def cancel(self, owner: Any) -> int:
        """The partition went: its records are not sent again (one already in the producer
        still reports its acknowledgement). Returns how many were let go."""
        gone = [r for r in self._records.values() if r.owner == owner]
        for record in gone:
            record.cancelled = True
            del self._records[id(record)]
        return len(gone)

    def service(self, timeout_s: float = 0.0) -> list[DlqRecord]:
        """Produce what is due, serve acknowledgements; returns the records acknowledged."""
        if self._records or self._producing:
            self._produce_due(self._clock.monotonic())
            if self._producing:
                try:
                    self._producer.poll(timeout_s)
                except KafkaException as exc:
                    # confluent-kafka raises librdkafka's fatal error from poll()
                    err = exc.args[0] if exc.args else None
                    if not _is_fatal(err):
                        raise
                    log.warning("dlq producer failed", extra={"error": error_name(err)})
                    self._fatal = True
            if self._fatal:
                self._renew()
        acked, self._acked = self._acked, []
        return acked

    def _on_error(self, err: Any) -> None:
        """librdkafka's error callback (on the loop's thread, inside poll)."""
        if _is_fatal(err):
            self._fatal = True

    def _new_producer(self) -> None:
        self._generation += 1
        self._producer = self._factory(self._conf)

    def _renew(self) -> None:
        """A fatal producer: a new one; what the old one held goes again through the new.

        Never from inside a callback of the old producer: it is purged and polled
        here, and any record it still held is queued again whatever it reports.
        """
        self._fatal = False
        old, generation = self._producer, self._generation
        log.warning("dlq producer in a fatal state; replacing it")
        with contextlib.suppress(Exception):
            old.purge()
            old.poll(0)
        self._new_producer()
        held, self._producing = self._producing, {}
        for record in held.values():
            if record.sent_with == generation:
                record.sent_with = 0
                if not record.cancelled:
                    self._queue(record)
        if self._on_failure is not None:
            self._on_failure("_FATAL")

    def _queue(self, record: DlqRecord) -> None:
        heapq.heappush(self._due, (record.not_before, next(self._seq), record))

    def _produce_due(self, now: float) -> None:
        due = self._due
        while due and not self._fatal:
            not_before, _, record = due[0]
            if record.cancelled or record.sent_with:
                heapq.heappop(due)
                continue
            if not_before > now:
                return
            try:
                self._produce(record)
            except BufferError:
                return  # the producer's queue is full: try again next turn
            except DlqWriteError as exc:
                heapq.heappop(due)
                if exc.code == "MSG_SIZE_TOO_LARGE":
                    self._shrink(record)
                elif exc.fatal:
                    self._fatal = True
                self._failed(record, exc.code)
                continue
            heapq.heappop(due)
            record.sent_with = self._generation
            self._producing[id(record)] = record

    def _produce(self, record: DlqRecord) -> None:
        try:
            self._producer.produce(
                self._topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                on_delivery=self._callback(record, self._generation),
            )
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            raise DlqWriteError(error_name(err), fatal=_is_fatal(err)) from exc

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
        self._queue(record)

    def _callback(self, record: DlqRecord, generation: int) -> Callable[[Any, Any], None]:
        def done(err: Any, _msg: Any) -> None:
            if record.sent_with != generation:
                return  # queued again after its producer was replaced: this report is stale
            record.sent_with = 0
            self._producing.pop(id(record), None)
            if err is None:
                self._records.pop(id(record), None)
                self._acked.append(record)
                if self._on_success is not None:
                    self._on_success()
                return
            code = error_name(err)
            if code == "MSG_SIZE_TOO_LARGE":  # the DLQ topic's own limit is lower
                self._shrink(record)
            if _is_fatal(err):
                self._fatal = True  # replaced in service(), not inside its own callback
            self._failed(record, code)

        return done

    def close(self, timeout_s: float) -> int:
        """Flush, then let the producer go (its threads and connections with it)."""
        left = self.flush(timeout_s)
        self._producer = None
        return left

    def flush(self, timeout_s: float) -> int:
        """Produce and wait; returns how many records are still unacknowledged (what was
        acknowledged meanwhile stays for the next `service()`)."""
        deadline = self._clock.monotonic() + timeout_s
        acked: list[DlqRecord] = []
        while self.pending and self._clock.monotonic() < deadline:
            acked += self.service(min(0.05, max(0.0, deadline - self._clock.monotonic())))
            if not self._producing and self.pending:
                wake = self.next_wake(self._clock.monotonic())
                if wake is not None:
                    self._clock.sleep(max(0.0, min(wake, deadline) - self._clock.monotonic()))
        self._acked[:0] = acked
        return self.pending
