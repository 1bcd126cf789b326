"""librdkafka configurations for the service's clients, built from Settings.

The settings the service relies on for correctness are set here, in one
place, and cannot be overridden by the `KAFKA_*` pass-through (config.py
refuses them).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from consumer import redaction
from consumer.config import Settings
from consumer.errors import ConfigError


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest",
        # Bound librdkafka's prefetch: memory stays within configuration.
        "queued.max.messages.kbytes": 16384,
        "fetch.max.bytes": 16 * 1024 * 1024,
        # ...and with that bound, librdkafka's default 1 s pause before fetching
        # again once the queue is full starved the loop: 76k events/s, every
        # run, with 1,200 empty consumes per million; 20 ms: 94k (bench/).
        "fetch.queue.backoff.ms": 20,
        "max.poll.interval.ms": 300000,
        "session.timeout.ms": 45000,
        "client.id": f"gr-s2s-consumer-{os.getpid()}",
        # librdkafka's own log lines go through ours: same format, same redaction.
        "logger": logging.getLogger("librdkafka.consumer"),
    }
    user = settings.kafka_common()
    if str(user.get("group.protocol", "")).lower() == "consumer":
        # KIP-848: assignment and session timing are the broker's business now.
        # Only our defaults go; a user's own classic-only setting is left for
        # librdkafka to refuse by name.
        for key in ("partition.assignment.strategy", "session.timeout.ms"):
            conf.pop(key, None)
    conf.update(user)
    conf.update(
        {
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # where a partition ends tells the worker when what it holds is all there is
            # to send (the pacer sends that at once instead of spreading it)
            "enable.partition.eof": True,
        }
    )
    conf.update(overrides)
    return conf


_CONSUMER_ONLY = re.compile(
    r"^(group\.|partition\.assignment|session\.timeout|heartbeat|max\.poll|auto\.offset|"
    r"fetch\.|queued\.|isolation\.level|check\.crcs|enable\.auto|auto\.commit|"
    r"coordinator\.query|consume\.|allow\.auto\.create|max\.partition\.fetch)"
)


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The DLQ producer: idempotent, acks=all, so an acknowledged DLQ write is durable."""
    conf: dict[str, Any] = {
        k: v for k, v in settings.kafka_common().items() if not _CONSUMER_ONLY.match(k)
    }
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": f"gr-s2s-consumer-dlq-{os.getpid()}",
            "logger": logging.getLogger("librdkafka.producer"),
        }
    )
    conf.update(overrides)
    return conf


_PROPERTY = re.compile(r'property[^"]*"([^"]+)"')


def _mentioned_key(text: str, settings: Settings) -> str | None:
    """The user's pass-through key that librdkafka's message names, longest first."""
    for key in sorted(settings.kafka_extra, key=len, reverse=True):
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", text):
            return key
    return None


def validate_librdkafka(settings: Settings) -> None:
    """Let librdkafka itself judge the pass-through settings; name the variable it rejects."""
    from confluent_kafka import Consumer, KafkaException

    conf = consumer_config(settings, log_level=0)
    try:
        client = Consumer(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        text = str(exc)
        match = _PROPERTY.search(text)
        key = match.group(1) if match else _mentioned_key(text, settings)
        variable = "KAFKA_" + key.upper().replace(".", "_") if key else "KAFKA_*"
        text = redaction.scrub(text)  # the secrets are remembered: every form of them
        raise ConfigError(variable, f"rejected by librdkafka: {text}") from None
    client.close()


_RETRIABLE_COORDINATOR_ERRORS = (
    "NOT_COORDINATOR",
    "COORDINATOR_LOAD_IN_PROGRESS",
    "COORDINATOR_NOT",
)


def committed_with_retry(
    consumer: Any, partitions: list[Any], timeout_s: float = 30.0
) -> list[Any]:
    """`Consumer.committed`, retried while the group coordinator is still loading.

    Right after a broker (re)start the offsets topic loads asynchronously and
    the coordinator answers NOT_COORDINATOR for a while.
    """
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: list[Any] = consumer.committed(partitions, timeout=5)
            return result
        except KafkaException as exc:
            retriable = any(e in str(exc) for e in _RETRIABLE_COORDINATOR_ERRORS)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
