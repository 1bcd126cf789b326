"""librdkafka configurations: what the service relies on is set here and cannot be overridden."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest

from consumer.config import ApiKeySource, Secret, Settings, load
from consumer.errors import ConfigError
from consumer.kafka_config import consumer_config, producer_config, validate_librdkafka

SASL_PASSWORD = "sasl-pw-Hj4mW9rQ1"
BASE = {"KAFKA_BOOTSTRAP_SERVERS": "localhost:1", "GR_API_KEY": "gr-live-Zq8xK3vN7pT2"}

# What the service sets itself; a pass-through value may not change these.
OWNED = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
}
CLASSIC_ONLY = (
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
)


def settings_from(**extra: str) -> Settings:
    return load({**BASE, **extra})


def direct(kafka_extra: Mapping[str, str | Secret]) -> Settings:
    """Settings built without load(), so nothing refused the owned keys on the way."""
    return Settings(
        bootstrap_servers="broker:9092",
        api_key=ApiKeySource(value=Secret("k")),
        group_id="the-group",
        kafka_extra=kafka_extra,
    )


def without_logger(conf: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if k != "logger"}


# ---- consumer_config ----


def test_consumer_defaults() -> None:
    conf = without_logger(consumer_config(settings_from()))
    assert conf == {
        "bootstrap.servers": "localhost:1",
        "group.id": "gr-s2s-consumer",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": 16384,
        "fetch.max.bytes": 16 * 1024 * 1024,
        "fetch.queue.backoff.ms": 20,
        "max.poll.interval.ms": 300000,
        "session.timeout.ms": 45000,
        "client.id": f"gr-s2s-consumer-{os.getpid()}",
    }


def test_consumer_group_id_from_settings() -> None:
    conf = consumer_config(settings_from(KAFKA_GROUP_ID="team-a"))
    assert conf["group.id"] == "team-a"


def test_pass_through_replaces_tunable_defaults() -> None:
    conf = consumer_config(
        settings_from(
            KAFKA_AUTO_OFFSET_RESET="latest",
            KAFKA_SESSION_TIMEOUT_MS="10000",
            KAFKA_FETCH_MAX_BYTES="1048576",
            KAFKA_CLIENT_ID="my-client",
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        )
    )
    assert conf["auto.offset.reset"] == "latest"
    assert conf["session.timeout.ms"] == "10000"
    assert conf["fetch.max.bytes"] == "1048576"
    assert conf["client.id"] == "my-client"
    assert conf["security.protocol"] == "SASL_SSL"


def test_secrets_are_revealed_only_in_the_client_config() -> None:
    s = settings_from(KAFKA_SASL_PASSWORD=SASL_PASSWORD)
    assert consumer_config(s)["sasl.password"] == SASL_PASSWORD
    assert producer_config(s)["sasl.password"] == SASL_PASSWORD
    assert SASL_PASSWORD not in repr(s)


def test_auto_commit_is_off_and_cannot_be_overridden() -> None:
    s = direct(
        {
            "enable.auto.commit": "true",
            "enable.auto.offset.store": "true",
            "enable.partition.eof": "false",
            "group.id": "someone-else",
            "bootstrap.servers": "elsewhere:9092",
        }
    )
    conf = consumer_config(s)
    for key, value in OWNED.items():
        assert conf[key] is value
    assert conf["group.id"] == "the-group"
    assert conf["bootstrap.servers"] == "broker:9092"


def test_auto_commit_keys_are_refused_on_the_way_in() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(KAFKA_ENABLE_AUTO_COMMIT="true")
    assert info.value.variable == "KAFKA_ENABLE_AUTO_COMMIT"


def test_keyword_overrides_come_last() -> None:
    conf = consumer_config(settings_from(), log_level=0, **{"client.id": "probe"})
    assert conf["log_level"] == 0
    assert conf["client.id"] == "probe"
    assert conf["enable.auto.commit"] is False


def test_kip848_consumer_protocol_drops_classic_defaults() -> None:
    conf = without_logger(consumer_config(settings_from(KAFKA_GROUP_PROTOCOL="consumer")))
    assert conf["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in conf
    assert "session.timeout.ms" not in conf
    # the rest stays
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["max.poll.interval.ms"] == 300000
    for key, value in OWNED.items():
        assert conf[key] is value


def test_kip848_refuses_a_user_session_timeout_by_name() -> None:
    """Our default goes; the user's own setting is never dropped silently."""
    s = settings_from(KAFKA_GROUP_PROTOCOL="consumer", KAFKA_SESSION_TIMEOUT_MS="10000")
    assert consumer_config(s)["session.timeout.ms"] == "10000"
    with pytest.raises(ConfigError) as info:
        validate_librdkafka(s)
    assert info.value.variable == "KAFKA_SESSION_TIMEOUT_MS"


def test_classic_protocol_keeps_classic_keys() -> None:
    conf = consumer_config(settings_from(KAFKA_GROUP_PROTOCOL="classic"))
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["session.timeout.ms"] == 45000


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KAFKA_HEARTBEAT_INTERVAL_MS", "3000"), ("KAFKA_GROUP_PROTOCOL_TYPE", "consumer")],
)
def test_kip848_refuses_a_classic_only_setting_by_name(variable: str, value: str) -> None:
    """A user's own setting is never dropped silently: librdkafka's refusal names it."""
    s = settings_from(KAFKA_GROUP_PROTOCOL="consumer", **{variable: value})
    with pytest.raises(ConfigError) as info:
        validate_librdkafka(s)
    assert info.value.variable == variable


@pytest.mark.parametrize("protocol", ["CONSUMER", "Consumer"])
def test_kip848_protocol_value_is_case_insensitive(protocol: str) -> None:
    s = settings_from(KAFKA_GROUP_PROTOCOL=protocol)
    conf = consumer_config(s)
    assert "partition.assignment.strategy" not in conf
    assert "session.timeout.ms" not in conf
    validate_librdkafka(s)


# ---- producer_config ----


def test_producer_is_idempotent_with_acks_all() -> None:
    conf = without_logger(producer_config(settings_from()))
    assert conf == {
        "bootstrap.servers": "localhost:1",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "client.id": f"gr-s2s-consumer-dlq-{os.getpid()}",
    }


def test_producer_durability_cannot_be_overridden() -> None:
    conf = producer_config(
        settings_from(KAFKA_ACKS="1", KAFKA_ENABLE_IDEMPOTENCE="false", KAFKA_LINGER_MS="50")
    )
    assert conf["acks"] == "all"
    assert conf["enable.idempotence"] is True
    assert conf["linger.ms"] == 5


def test_producer_keeps_connection_settings_and_drops_consumer_ones() -> None:
    s = settings_from(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        KAFKA_SSL_CA_LOCATION="/etc/ca.pem",
        KAFKA_GROUP_PROTOCOL="consumer",
        KAFKA_GROUP_INSTANCE_ID="pod-0",
        KAFKA_SESSION_TIMEOUT_MS="10000",
        KAFKA_HEARTBEAT_INTERVAL_MS="1000",
        KAFKA_MAX_POLL_INTERVAL_MS="60000",
        KAFKA_AUTO_OFFSET_RESET="latest",
        KAFKA_FETCH_MIN_BYTES="10",
        KAFKA_QUEUED_MIN_MESSAGES="10",
        KAFKA_ISOLATION_LEVEL="read_committed",
        KAFKA_CHECK_CRCS="true",
        KAFKA_AUTO_COMMIT_INTERVAL_MS="1000",
        KAFKA_COORDINATOR_QUERY_INTERVAL_MS="1000",
        KAFKA_PARTITION_ASSIGNMENT_STRATEGY="range",
        KAFKA_QUEUE_BUFFERING_MAX_MESSAGES="1000",
    )
    conf = without_logger(producer_config(s))
    assert conf == {
        "bootstrap.servers": "localhost:1",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "svc",
        "sasl.password": SASL_PASSWORD,
        "ssl.ca.location": "/etc/ca.pem",
        "queue.buffering.max.messages": "1000",  # a producer setting: kept
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "client.id": f"gr-s2s-consumer-dlq-{os.getpid()}",
    }


def test_real_clients_accept_the_built_configs() -> None:
    from confluent_kafka import Consumer, Producer

    for s in (settings_from(), settings_from(KAFKA_GROUP_PROTOCOL="consumer")):
        Consumer(consumer_config(s, log_level=0)).close()
        producer = Producer(producer_config(s, log_level=0))
        assert producer.flush(0) == 0


# ---- validate_librdkafka ----


def validation_error(**extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_librdkafka(settings_from(**extra))
    return info.value


def test_valid_settings_pass() -> None:
    validate_librdkafka(settings_from())
    validate_librdkafka(
        settings_from(
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            KAFKA_SASL_MECHANISM="PLAIN",
            KAFKA_SASL_USERNAME="svc",
            KAFKA_SASL_PASSWORD=SASL_PASSWORD,
            KAFKA_GROUP_PROTOCOL="consumer",
        )
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAFKA_NO_SUCH_PROPERTY", "x"),  # No such configuration property: "..."
        ("KAFKA_SESSION_TIMEOUT_MS", "abc"),  # Invalid value for configuration property "..."
        ("KAFKA_SESSION_TIMEOUT_MS", "0"),  # Configuration property "..." value 0 is outside
        ("KAFKA_FETCH_MAX_BYTES", "-5"),
        ("KAFKA_SECURITY_PROTOCOL", "bogus"),  # Invalid value "bogus" for configuration ...
        ("KAFKA_GROUP_PROTOCOL", "nope"),
    ],
)
def test_rejected_setting_names_its_variable(variable: str, value: str) -> None:
    exc = validation_error(KAFKA_SASL_PASSWORD=SASL_PASSWORD, **{variable: value})
    assert exc.variable == variable
    assert exc.problem.startswith("rejected by librdkafka: ")
    assert SASL_PASSWORD not in str(exc)


def test_a_secret_echoed_by_librdkafka_is_masked() -> None:
    # librdkafka quotes a bad value back; here it is also the password
    exc = validation_error(KAFKA_SASL_PASSWORD="hunter2-xyz", KAFKA_SECURITY_PROTOCOL="hunter2-xyz")
    assert exc.variable == "KAFKA_SECURITY_PROTOCOL"
    assert "hunter2-xyz" not in str(exc)
    assert 'Invalid value "***" for configuration property "security.protocol"' in str(exc)


def test_an_empty_secret_does_not_garble_the_message() -> None:
    exc = validation_error(KAFKA_SASL_PASSWORD="", KAFKA_SECURITY_PROTOCOL="bogus")
    assert exc.variable == "KAFKA_SECURITY_PROTOCOL"
    assert 'configuration property "security.protocol"' in exc.problem


@pytest.mark.parametrize(
    ("variable", "extra"),
    [
        ("KAFKA_CHECK_CRCS", {"KAFKA_CHECK_CRCS": "maybe"}),
        (
            "KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION",
            {"KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION": "sometimes"},
        ),
        (
            "KAFKA_SSL_CA_LOCATION",
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
        ),
    ],
)
def test_rejected_setting_names_its_variable_whatever_the_message_form(
    variable: str, extra: dict[str, str]
) -> None:
    exc = validation_error(**extra)
    assert exc.variable == variable


def test_kip848_with_a_heartbeat_interval_passes_or_names_the_variable() -> None:
    s = settings_from(KAFKA_GROUP_PROTOCOL="consumer", KAFKA_HEARTBEAT_INTERVAL_MS="3000")
    with pytest.raises(ConfigError) as info:
        validate_librdkafka(s)
    assert info.value.variable == "KAFKA_HEARTBEAT_INTERVAL_MS"
    assert "group.protocol=consumer" in info.value.problem
