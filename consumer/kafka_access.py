"""Start-up check that the brokers accept this worker's credentials and certificates.

librdkafka treats a refused SASL password or TLS certificate like any broken
connection and retries forever, so a misconfigured worker would look healthy
while reading nothing. Before the worker joins its group, one short-lived
client asks for metadata with the worker's own settings; a refusal ends
start-up with a ConfigError naming the setting to fix. Brokers that are merely
unreachable are not a configuration error: the worker starts and retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from consumer import redaction
from consumer.config import Settings
from consumer.errors import ConfigError
from consumer.kafka_config import consumer_config

log = logging.getLogger(__name__)

DEFAULT_WAIT_S: Final = 10.0

# TLS alerts a broker sends when it refuses the client's certificate (or its absence):
# bad_certificate (42), unknown_ca (48), certificate_required (116).
_CLIENT_CERT_REFUSED: Final = (
    "alert bad certificate",
    "alert unknown ca",
    "alert certificate required",
    "alert number 42",
    "alert number 48",
    "alert number 116",
)


def refusal(code: str, message: str, settings: Settings) -> ConfigError | None:
    """The configuration error a librdkafka error stands for, if it is a refusal."""
    text = redaction.scrub(message)
    common = settings.kafka_common()
    if code == "_AUTHENTICATION":
        mechanism = common.get("sasl.mechanism", "GSSAPI")
        return ConfigError(
            "KAFKA_SASL_PASSWORD_FILE" if settings.sasl_password_file else "KAFKA_SASL_PASSWORD",
            f"was refused by the broker: SASL {mechanism} authentication failed for "
            f"KAFKA_SASL_USERNAME={common.get('sasl.username', '')!r} ({text})",
        )
    lowered = text.lower()
    if code == "_SSL" and "certificate verify failed" in lowered:
        return ConfigError(
            "KAFKA_SSL_CA_LOCATION",
            f"does not let the worker trust the broker's TLS certificate ({text})",
        )
    if any(alert in lowered for alert in _CLIENT_CERT_REFUSED):
        has_cert = "ssl.certificate.location" in common or "ssl.certificate.pem" in common
        problem = (
            "names a client certificate the broker refuses (not signed by a CA it trusts)"
            if has_cert
            else "is not set, and the broker requires a client certificate (mutual TLS)"
        )
        return ConfigError("KAFKA_SSL_CERTIFICATE_LOCATION", f"{problem} ({text})")
    return None


def check_kafka_access(
    settings: Settings,
    wait_s: float = DEFAULT_WAIT_S,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Raise ConfigError when the brokers refuse this worker; return once they answer,
    after `wait_s` if they cannot be reached at all (the worker will keep trying), or
    as soon as `stop()` is true (a SIGTERM while starting)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException

    seen: list[KafkaError] = []
    conf: dict[str, Any] = consumer_config(settings)
    conf["error_cb"] = seen.append
    conf["client.id"] = f"{conf.get('client.id', 'gr-s2s-consumer')}-access-check"
    client = Consumer(conf)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            except KafkaException:
                pass
            else:
                return
            client.poll(0.1)  # serves error_cb
            for error in seen:
                found = refusal(error.name(), error.str(), settings)
                if found is not None:
                    raise found
            seen.clear()
            if stop():
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "Kafka brokers not reachable yet; starting anyway and retrying",
                    extra={"waited_s": wait_s},
                )
                return
    finally:
        client.close()
