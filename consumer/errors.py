"""The service's exception tree, one root so callers can tell ours from the rest.

GrError
├── ConfigError          bad configuration: names the variable; exit 2
├── TransportError       no HTTP answer (refused, reset, timeout, TLS); retried
├── JobAbandonedError    the worker gave up a delivery job (revoked, stopping)
├── DlqWriteError        the DLQ did not take a record (yet); retried, never fatal
├── WorkerFailedError    the loop hit something it cannot go on from; exit 1
├── InvalidEventError    (also a ValueError) the producer refused an event: the schema
└── DeliveryError        the producer's event was not taken by Kafka

Raised where they happen: s2s, delivery, dlq, worker, config, producer.
"""

from __future__ import annotations

from typing import Any


class GrError(Exception):
    """Root of everything this package raises on purpose."""


class ConfigError(GrError):
    """A configuration variable is missing or wrong; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem


class TransportError(GrError):
    """No HTTP answer: connection refused or reset, timeout, TLS failure."""


class JobAbandonedError(GrError):
    """The worker gave up on this job (revoked partition or shutdown): no result counts."""


class DlqWriteError(GrError):
    """The DLQ could not take a record (yet); `code` is librdkafka's error name."""

    def __init__(self, code: str, *, fatal: bool = False) -> None:
        super().__init__(f"dlq write failed: {code}")
        self.code = code
        self.fatal = fatal  # the producer is in librdkafka's fatal state: replace it


class WorkerFailedError(GrError):
    """The main loop cannot go on (a fatal Kafka error, a bug): the process exits 1."""


class InvalidEventError(GrError, ValueError):
    """The event fails the schema (or is not JSON-serialisable); nothing was produced.

    `reason` is what the consumer would have put in `gr.dlq.reason`
    (`invalid_json`, `schema_violation`, `too_large`, `empty_value`) or
    `not_serializable`; `detail` says what and where (`$.payload.amount`).
    """

    def __init__(self, event_type: object, reason: str, detail: str) -> None:
        what = "event"
        if isinstance(event_type, str):
            what = f"{event_type!r} event"
            # payload details start with the type already: say it once
            detail_shown = detail.removeprefix(f"{event_type!r}: ")
        else:
            detail_shown = detail
        super().__init__(f"invalid {what} ({reason}): {detail_shown}")
        self.event_type = event_type if isinstance(event_type, str) else None
        self.reason = reason
        self.detail = detail


class DeliveryError(GrError):
    """Kafka did not take the event. `code` is librdkafka's error name (`_MSG_TIMED_OUT`, ...)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        retriable: bool = False,
        fatal: bool = False,
        topic: str | None = None,
        key: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.fatal = fatal
        self.topic = topic
        self.key = key

    @classmethod
    def from_kafka(cls, err: Any, topic: str | None, key: bytes | None) -> DeliveryError:
        """From a confluent_kafka.KafkaError."""
        return cls(
            f"delivery to {topic} failed: {err.str()} ({err.name()})",
            code=str(err.name()),
            retriable=bool(err.retriable()),
            fatal=bool(err.fatal()),
            topic=topic,
            key=key,
        )
