"""DlqWriter against a scripted producer: every failure waits and retries, none escapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.dlq import DlqRecord, DlqWriter


class ScriptedProducer:
    """Fails `produce` with the given errors in turn, then queues; `poll` acks or fails."""

    def __init__(self, raise_on_produce: list[int] | None = None) -> None:
        self.raise_on_produce = list(raise_on_produce or [])
        self.queued: list[tuple[dict[str, Any], Callable[[Any, Any], None]]] = []
        self.produced: list[dict[str, Any]] = []
        self.deliver_error: KafkaError | None = None
        self.purged = False
        self.conf: dict[str, Any] = {}

    def produce(self, topic: str, *, on_delivery: Callable[[Any, Any], None], **kw: Any) -> None:
        if self.raise_on_produce:
            raise KafkaException(KafkaError(self.raise_on_produce.pop(0)))
        self.queued.append((kw, on_delivery))
        self.produced.append(kw)

    def poll(self, _timeout: float) -> int:
        queued, self.queued = self.queued, []
        for _kw, callback in queued:
            callback(self.deliver_error, None)
        return len(queued)

    def purge(self) -> None:
        self.purged = True


def record(acks: list[int], value: bytes = b"v") -> DlqRecord:
    headers: list[tuple[str, bytes | None]] = [
        ("gr.dlq.reason", b"invalid_json"),
        ("gr.dlq.detail", b"not JSON"),
    ]
    return DlqRecord(b"k", value, headers, ("t", 0), 0, "invalid_json")


class Writer(DlqWriter):
    """`service()` counts what it returns into `acks`, as the worker tells its ledger."""

    acks: list[int]

    def service(self, timeout_s: float = 0.0) -> list[DlqRecord]:
        done = super().service(timeout_s)
        self.acks += [1] * len(done)
        return done


def writer(
    producers: list[ScriptedProducer],
    failures: list[str],
    acks: list[int] | None = None,
    max_message_bytes: int = 1_000_000,
) -> Writer:
    made = iter(producers)

    def make(conf: dict[str, Any]) -> ScriptedProducer:
        producer = next(made)
        producer.conf = conf
        return producer

    w = Writer(
        make,
        {"message.max.bytes": max_message_bytes},
        "dlq",
        retry_initial_s=0.0,
        retry_max_s=0.0,
        on_failure=failures.append,
    )
    w.acks = acks if acks is not None else []
    return w


@pytest.mark.parametrize("code", [KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART])
def test_a_produce_error_is_retried_not_raised(code: int) -> None:
    producer = ScriptedProducer(raise_on_produce=[code, code])
    failures: list[str] = []
    acks: list[int] = []
    w = writer([producer], failures, acks)
    w.send(record(acks))
    assert w.pending == 1
    w.service(0)
    w.service(0)
    w.service(0)
    assert acks == [1]
    assert len(failures) == 2
    assert w.pending == 0


def test_a_record_too_large_for_the_producer_is_truncated_up_front() -> None:
    producer = ScriptedProducer()
    acks: list[int] = []
    w = writer([producer], [], acks, max_message_bytes=10_000)
    w.send(record(acks, value=b"x" * 50_000))
    w.service(0)
    (sent,) = producer.produced
    headers = dict(sent["headers"])
    assert headers["gr.dlq.reason"] == b"too_large"
    assert headers["gr.dlq.original.reason"] == b"invalid_json"
    assert headers["gr.dlq.original.size"] == b"50000"
    assert 0 < len(sent["value"]) < 10_000
    assert acks == [1]


def test_a_size_refusal_from_the_broker_retries_a_smaller_copy() -> None:
    producer = ScriptedProducer()
    producer.deliver_error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    failures: list[str] = []
    acks: list[int] = []
    w = writer([producer], failures, acks)
    w.send(record(acks, value=b"x" * 200_000))
    w.service(0)  # refused by the topic
    producer.deliver_error = None
    w.service(0)
    w.service(0)
    assert failures == ["MSG_SIZE_TOO_LARGE"]
    assert len(producer.produced[-1]["value"]) <= 64 * 1024
    assert acks == [1]


def test_a_cancelled_record_is_not_retried() -> None:
    """Its partition went to another worker, which dead-letters it again."""
    producer = ScriptedProducer()
    producer.deliver_error = KafkaError(KafkaError._MSG_TIMED_OUT)
    acks: list[int] = []
    w = writer([producer], [], acks)
    w.send(record(acks))
    w.service(0)  # fails: waits for its retry
    assert w.pending == 1
    assert w.cancel(("t", 0)) == 1
    assert w.pending == 0
    producer.deliver_error = None
    w.service(0)
    assert len(producer.produced) == 1
    assert acks == []


def test_a_fatal_delivery_report_as_the_client_makes_it_replaces_the_producer() -> None:
    """confluent-kafka reports a fatal producer in delivery reports with the `_FATAL` code
    and `fatal()` false: the writer must know it by the code."""
    first, second = ScriptedProducer(), ScriptedProducer()
    first.deliver_error = KafkaError(KafkaError._FATAL)
    assert not first.deliver_error.fatal()
    acks: list[int] = []
    w = writer([first, second], [], acks)
    w.send(record(acks))
    w.service(0)
    assert first.purged
    w.service(0)
    w.service(0)
    assert acks == [1]
    assert second.produced


def test_the_error_callback_and_a_refused_produce_also_replace_a_fatal_producer() -> None:
    first, second, third = ScriptedProducer(), ScriptedProducer(), ScriptedProducer()
    acks: list[int] = []
    w = writer([first, second, third], [], acks)
    first.conf["error_cb"](KafkaError(KafkaError._FATAL, "fenced"))  # inside a poll
    w.send(record(acks))
    w.service(0)
    assert first.purged  # replaced by the error callback
    second.raise_on_produce = [KafkaError._FATAL]
    w.send(record(acks))
    w.service(0)
    assert second.purged  # replaced when produce raised _FATAL
    w.service(0)
    w.service(0)
    assert len(acks) == 2
    assert len(third.produced) == 2


def headed(
    acks: list[int], headers: list[tuple[str, bytes | None]], value: bytes = b"v"
) -> DlqRecord:
    ours: list[tuple[str, bytes | None]] = [
        ("gr.dlq.reason", b"invalid_json"),
        ("gr.dlq.detail", b"not JSON"),
    ]
    return DlqRecord(None, value, headers + ours, ("t", 0), 0, "invalid_json")


def test_null_header_values_are_sized_and_sent_as_they_are() -> None:
    """A null header value is legal in Kafka; it once made the size check raise TypeError."""
    producer = ScriptedProducer()
    acks: list[int] = []
    w = writer([producer], [], acks)
    original: list[tuple[str, bytes | None]] = [("trace", None), ("h", b"1"), ("h", None)]
    r = headed(acks, original)
    assert r.size > 0
    w.send(r)
    w.service(0)
    assert acks == [1]
    assert producer.produced[0]["headers"][:3] == original


def test_a_copy_too_large_by_its_headers_drops_them_and_says_so() -> None:
    """Cutting the value is not enough when the headers alone are over the limit."""
    producer = ScriptedProducer()
    acks: list[int] = []
    w = writer([producer], [], acks, max_message_bytes=64_000)
    w.send(headed(acks, [("bulk", b"h" * 200_000), ("n", None)], value=b"x" * 1000))
    w.service(0)
    (sent,) = producer.produced
    headers = dict(sent["headers"])
    assert "bulk" not in headers
    assert "n" not in headers
    assert headers["gr.dlq.reason"] == b"too_large"
    assert headers["gr.dlq.original.reason"] == b"invalid_json"
    assert headers["gr.dlq.original.headers.count"] == b"2"
    assert headers["gr.dlq.original.headers.size"] == str(4 + 200_000 + 1).encode()
    size = sum(len(k) + len(v or b"") for k, v in sent["headers"]) + len(sent["value"])
    assert size < 64_000
    assert acks == [1]


def test_size_refusals_cut_the_copy_smaller_each_time_until_the_topic_takes_it() -> None:
    """The DLQ topic's own limit is unknown (here 3,000 bytes): each refusal halves the copy."""

    class SmallTopic(ScriptedProducer):
        def poll(self, _timeout: float) -> int:
            queued, self.queued = self.queued, []
            for kw, callback in queued:
                size = len(kw["value"] or b"") + sum(
                    len(k) + len(v or b"") for k, v in kw["headers"]
                )
                err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if size > 3000 else None
                callback(err, None)
            return len(queued)

    producer = SmallTopic()
    failures: list[str] = []
    acks: list[int] = []
    w = writer([producer], failures, acks)
    w.send(headed(acks, [("bulk", b"h" * 20_000)], value=b"x" * 100_000))
    for _ in range(20):
        w.service(0)
    assert acks == [1]
    assert 1 <= len(failures) <= 8
    assert dict(producer.produced[-1]["headers"])["gr.dlq.reason"] == b"too_large"
