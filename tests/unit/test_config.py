"""config.load: defaults, validation naming the variable, secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.config import (
    DEFAULT_BASE_URL,
    ApiKeySource,
    Secret,
    Settings,
    is_secret_kafka_key,
    load,
)
from consumer.errors import ConfigError, GrError
from consumer.events import STRICT_RULES

API_KEY = "gr-live-Zq8xK3vN7pT2"
SASL_PASSWORD = "sasl-pw-Hj4mW9rQ1"
BASE: dict[str, str] = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "GR_API_KEY": API_KEY}


def env(**extra: str) -> dict[str, str]:
    return {**BASE, **extra}


def load_error(environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(environ)
    return info.value


def assert_refused(environ: dict[str, str], variable: str) -> ConfigError:
    """load() raises ConfigError naming `variable`, leaking no secret."""
    exc = load_error(environ)
    assert exc.variable == variable
    text = str(exc)
    assert text.startswith(variable + " ")
    for secret in (API_KEY, SASL_PASSWORD):
        assert secret not in text
        assert secret not in repr(exc)
    return exc


# ---- defaults ----


def test_minimal_environment_gives_the_documented_defaults() -> None:
    s = load(BASE)
    assert s.bootstrap_servers == "broker:9092"
    assert s.topics == ("game-events",)
    assert s.topic_patterns == ["game-events"]
    assert s.group_id == "gr-s2s-consumer"
    assert s.dlq_topic == "game-events.dlq"
    assert s.kafka_extra == {}
    assert s.base_url == DEFAULT_BASE_URL == "https://sdk-api.gamerebellion.com"
    assert s.batch_max_events == 100
    assert s.batch_max_bytes == 1_048_576
    assert s.batch_linger_ms == 500
    assert s.event_max_bytes == 262_144
    assert s.strict_event_types is False
    assert s.rate_limit_per_minute is None
    assert s.http_port == 8080
    assert s.http_timeout_s == 10.0
    assert s.max_in_flight == 8
    assert s.max_buffered_bytes == 64 * 1024 * 1024
    assert s.retry_initial_s == 0.2
    assert s.retry_max_s == 30.0
    assert s.shutdown_timeout_s == 30.0
    assert s.log_level == "INFO"
    assert s.log_format == "json"
    assert s.api_key.read() == Secret(API_KEY)


def test_blank_values_mean_the_default() -> None:
    s = load(
        env(
            KAFKA_TOPICS="  ",
            KAFKA_GROUP_ID="",
            KAFKA_DLQ_TOPIC=" ",
            GR_BASE_URL="",
            GR_BATCH_MAX_EVENTS="",
            GR_HTTP_PORT="  ",
            GR_RATE_LIMIT_PER_MINUTE=" ",
            GR_SHUTDOWN_TIMEOUT_S="",
            GR_LOG_LEVEL="",
            GR_STRICT_EVENT_TYPES="",
        )
    )
    assert s.topics == ("game-events",)
    assert s.group_id == "gr-s2s-consumer"
    assert s.dlq_topic == "game-events.dlq"
    assert s.base_url == DEFAULT_BASE_URL
    assert s.batch_max_events == 100
    assert s.http_port == 8080
    assert s.rate_limit_per_minute is None
    assert s.shutdown_timeout_s == 30.0
    assert s.log_level == "INFO"
    assert s.strict_event_types is False


def test_every_setting_read_from_the_environment() -> None:
    s = load(
        env(
            KAFKA_BOOTSTRAP_SERVERS=" b1:9092, b2:9093 ",
            KAFKA_TOPICS="orders, ^game-.*-v2 ,clicks",
            KAFKA_GROUP_ID="team-a",
            KAFKA_DLQ_TOPIC="dead.letters",
            GR_BASE_URL="http://localhost:8081/",
            GR_ALLOW_INSECURE_HTTP="true",
            GR_BATCH_MAX_EVENTS="50",
            GR_BATCH_MAX_BYTES="2048",
            GR_EVENT_MAX_BYTES="2000",
            GR_BATCH_LINGER_MS="0",
            GR_STRICT_EVENT_TYPES="yes",
            GR_RATE_LIMIT_PER_MINUTE=" 60 ",
            GR_HTTP_PORT="0",
            GR_HTTP_TIMEOUT_S="2.5",
            GR_MAX_IN_FLIGHT="16",
            GR_MAX_BUFFERED_BYTES="4096",
            GR_RETRY_INITIAL_S="0.5",
            GR_RETRY_MAX_S="0.5",
            GR_SHUTDOWN_TIMEOUT_S="0",
            GR_LOG_LEVEL="debug",
            GR_LOG_FORMAT="TEXT",
        )
    )
    assert s.bootstrap_servers == "b1:9092, b2:9093"
    assert s.topics == ("orders", "^game-.*-v2", "clicks")
    assert s.topic_patterns == ["orders", "^game-.*-v2", "clicks"]
    assert s.group_id == "team-a"
    assert s.dlq_topic == "dead.letters"
    assert s.base_url == "http://localhost:8081"
    assert s.batch_max_events == 50
    assert s.batch_max_bytes == 2048
    assert s.event_max_bytes == 2000
    assert s.batch_linger_ms == 0
    assert s.strict_event_types is True
    assert s.rate_limit_per_minute == 60
    assert s.http_port == 0
    assert s.http_timeout_s == 2.5
    assert s.max_in_flight == 16
    assert s.max_buffered_bytes == 4096
    assert s.retry_initial_s == 0.5
    assert s.retry_max_s == 0.5
    assert s.shutdown_timeout_s == 0.0
    assert s.log_level == "DEBUG"
    assert s.log_format == "text"


def test_event_max_bytes_default_leaves_room_for_the_wrapper() -> None:
    s = load(env(GR_BATCH_MAX_BYTES="1024"))
    assert s.event_max_bytes == 1008


def test_event_max_bytes_may_fill_the_request_but_the_wrapper() -> None:
    assert load(env(GR_BATCH_MAX_BYTES="1024", GR_EVENT_MAX_BYTES="1008")).event_max_bytes == 1008
    assert_refused(env(GR_BATCH_MAX_BYTES="1024", GR_EVENT_MAX_BYTES="1009"), "GR_EVENT_MAX_BYTES")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert load(env(GR_STRICT_EVENT_TYPES=raw)).strict_event_types is expected


# ---- KAFKA_BOOTSTRAP_SERVERS ----


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_bootstrap_servers_required(missing: str | None) -> None:
    environ = {"GR_API_KEY": API_KEY}
    if missing is not None:
        environ["KAFKA_BOOTSTRAP_SERVERS"] = missing
    exc = assert_refused(environ, "KAFKA_BOOTSTRAP_SERVERS")
    assert "is required" in exc.problem


@pytest.mark.parametrize(
    "servers", ["localhost:9092", "a:1,b:65535", "PLAINTEXT://broker:9092", "[::1]:9092"]
)
def test_bootstrap_servers_good(servers: str) -> None:
    assert load(env(KAFKA_BOOTSTRAP_SERVERS=servers)).bootstrap_servers == servers


@pytest.mark.parametrize(
    "servers",
    ["broker", "broker:", ":9092", "broker:0", "broker:65536", "broker:http", "a:1,", "a:1,,b:2"],
)
def test_bootstrap_servers_bad(servers: str) -> None:
    exc = assert_refused(env(KAFKA_BOOTSTRAP_SERVERS=servers), "KAFKA_BOOTSTRAP_SERVERS")
    assert "is not host:port" in exc.problem


@pytest.mark.parametrize("servers", ["broker:²", "broker:9²"])
def test_bootstrap_servers_with_non_decimal_digits(servers: str) -> None:
    assert_refused(env(KAFKA_BOOTSTRAP_SERVERS=servers), "KAFKA_BOOTSTRAP_SERVERS")


# ---- KAFKA_TOPICS and KAFKA_DLQ_TOPIC ----


@pytest.mark.parametrize(
    "topics", ["bad topic", "a" * 250, "ok,bad/name", "^(unclosed", ",", " , ", "é"]
)
def test_topics_bad(topics: str) -> None:
    assert_refused(env(KAFKA_TOPICS=topics), "KAFKA_TOPICS")


def test_topics_limits_and_regex() -> None:
    assert load(env(KAFKA_TOPICS="a" * 249)).topics == ("a" * 249,)
    assert load(env(KAFKA_TOPICS="^x[0-9]+$,y")).topics == ("^x[0-9]+$", "y")


@pytest.mark.parametrize(("variable", "name"), [("KAFKA_TOPICS", "."), ("KAFKA_DLQ_TOPIC", "..")])
def test_dot_topic_names_are_refused(variable: str, name: str) -> None:
    assert_refused(env(**{variable: name}), variable)


@pytest.mark.parametrize("dlq", ["bad topic", "a" * 250, "^dlq", "x/y"])
def test_dlq_topic_bad(dlq: str) -> None:
    assert_refused(env(KAFKA_DLQ_TOPIC=dlq), "KAFKA_DLQ_TOPIC")


def test_dlq_topic_must_not_be_consumed() -> None:
    exc = assert_refused(env(KAFKA_TOPICS="a,b", KAFKA_DLQ_TOPIC="b"), "KAFKA_DLQ_TOPIC")
    assert "KAFKA_TOPICS" in exc.problem
    assert_refused(env(KAFKA_TOPICS="game-events.dlq"), "KAFKA_DLQ_TOPIC")


def test_dlq_topic_must_not_match_a_topic_regex() -> None:
    assert_refused(env(KAFKA_TOPICS="^game-events.*"), "KAFKA_DLQ_TOPIC")


# ---- KAFKA_* pass-through ----


def test_kafka_pass_through_mapping() -> None:
    s = load(
        env(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            KAFKA_SASL_USERNAME="svc-consumer",
            KAFKA_SASL_PASSWORD=SASL_PASSWORD,
            KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM="https",
            KAFKA_FETCH_MIN_BYTES="1",
            PATH="/usr/bin",
            kafka_lower_case="ignored",
            GR_OTHER="ignored",
        )
    )
    assert dict(s.kafka_extra) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-consumer",
        "sasl.password": Secret(SASL_PASSWORD),
        "ssl.endpoint.identification.algorithm": "https",
        "fetch.min.bytes": "1",
    }
    assert isinstance(s.kafka_extra["sasl.password"], Secret)
    assert s.librdkafka_secrets() == {"sasl.password": SASL_PASSWORD}
    common = s.kafka_common()
    assert common["sasl.password"] == SASL_PASSWORD
    assert common["bootstrap.servers"] == "broker:9092"
    assert common["security.protocol"] == "SASL_SSL"
    assert len(common) == 7


def test_service_own_kafka_variables_are_not_passed_through() -> None:
    s = load(env(KAFKA_TOPICS="t", KAFKA_GROUP_ID="g", KAFKA_DLQ_TOPIC="d", KAFKA_="nothing"))
    assert s.kafka_extra == {}


# What a kubelet injects for Services named `kafka` (port 9092, named `tcp-client`)
# and `kafka-ui` (port 8080, named `http`) in the pod's namespace.
KUBELET_SERVICE_LINKS = {
    "KAFKA_SERVICE_HOST": "10.96.12.7",
    "KAFKA_SERVICE_PORT": "9092",
    "KAFKA_SERVICE_PORT_TCP_CLIENT": "9092",
    "KAFKA_PORT": "tcp://10.96.12.7:9092",
    "KAFKA_PORT_9092_TCP": "tcp://10.96.12.7:9092",
    "KAFKA_PORT_9092_TCP_PROTO": "tcp",
    "KAFKA_PORT_9092_TCP_PORT": "9092",
    "KAFKA_PORT_9092_TCP_ADDR": "10.96.12.7",
    "KAFKA_UI_SERVICE_HOST": "10.96.40.2",
    "KAFKA_UI_SERVICE_PORT": "8080",
    "KAFKA_UI_SERVICE_PORT_HTTP": "8080",
    "KAFKA_UI_PORT": "tcp://10.96.40.2:8080",
    "KAFKA_UI_PORT_8080_TCP": "tcp://10.96.40.2:8080",
    "KAFKA_UI_PORT_8080_TCP_PROTO": "tcp",
    "KAFKA_UI_PORT_8080_TCP_PORT": "8080",
    "KAFKA_UI_PORT_8080_TCP_ADDR": "10.96.40.2",
    "KAFKA_BROKER_1_PORT_9093_UDP_ADDR": "10.96.40.3",
}


def test_kubelet_service_links_are_not_passed_to_librdkafka() -> None:
    s = load(env(**KUBELET_SERVICE_LINKS, KAFKA_SECURITY_PROTOCOL="SSL"))
    assert dict(s.kafka_extra) == {"security.protocol": "SSL"}
    assert s.ignored_variables == tuple(sorted(KUBELET_SERVICE_LINKS))
    assert s.redacted()["ignored_variables"] == sorted(KUBELET_SERVICE_LINKS)


def test_librdkafka_accepts_a_pod_environment_with_service_links() -> None:
    """Before they were ignored, librdkafka refused `port`: start-up exited 2."""
    from consumer.kafka_config import validate_librdkafka

    validate_librdkafka(load(env(**KUBELET_SERVICE_LINKS)))


@pytest.mark.parametrize(
    "variable",
    [
        "KAFKA_SASL_KERBEROS_SERVICE_NAME",  # sasl.kerberos.service.name: a real property
        "KAFKA_SOCKET_TIMEOUT_MS",
        "KAFKA_PORTS",
        "KAFKA_SERVICE_HOSTNAME",
        "KAFKA_PORT_9092_TCP_HOST",
        "KAFKA_PORT_TCP",
    ],
)
def test_only_service_link_shapes_are_ignored(variable: str) -> None:
    s = load(env(**{variable: "x"}))
    assert s.ignored_variables == ()
    assert len(s.kafka_extra) == 1


def test_no_service_links_nothing_ignored() -> None:
    assert load(BASE).ignored_variables == ()


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
        "some.token",
    ],
)
def test_secret_kafka_keys(key: str) -> None:
    assert is_secret_kafka_key(key)
    variable = "KAFKA_" + key.upper().replace(".", "_")
    s = load(env(**{variable: "hush-" + key}))
    assert s.kafka_extra[key] == Secret("hush-" + key)
    assert s.redacted()["kafka_extra"] == {key: "***"}


@pytest.mark.parametrize(
    "key",
    ["sasl.username", "security.protocol", "ssl.ca.location", "client.id", "ssl.key.location"],
)
def test_plain_kafka_keys(key: str) -> None:
    assert not is_secret_kafka_key(key)


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("KAFKA_ENABLE_AUTO_COMMIT", "the service manages commits itself"),
        ("KAFKA_ENABLE_AUTO_OFFSET_STORE", "the service manages commits itself"),
        ("KAFKA_ENABLE_PARTITION_EOF", "the service manages commits itself"),
        ("KAFKA_group_id", "use KAFKA_GROUP_ID"),
        ("KAFKA_Bootstrap_Servers", "use KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_owned_kafka_keys_are_refused(variable: str, hint: str) -> None:
    exc = assert_refused(env(**{variable: "true"}), variable)
    assert hint in exc.problem
    assert "cannot be set" in exc.problem


# ---- the API key ----


def test_api_key_from_the_environment() -> None:
    source = load(BASE).api_key
    assert source == ApiKeySource(value=Secret(API_KEY))
    assert source.read().reveal() == API_KEY
    assert source.describe() == "GR_API_KEY (set)"


def test_api_key_required() -> None:
    exc = assert_refused({"KAFKA_BOOTSTRAP_SERVERS": "b:1"}, "GR_API_KEY")
    assert "GR_API_KEY_FILE" in exc.problem
    assert_refused({"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY": ""}, "GR_API_KEY")
    assert_refused(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY": "", "GR_API_KEY_FILE": "  "}, "GR_API_KEY"
    )


def test_api_key_and_key_file_together_are_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file", encoding="utf-8")
    exc = assert_refused(env(GR_API_KEY_FILE=str(key_file)), "GR_API_KEY")
    assert "not both" in exc.problem


@pytest.mark.parametrize(
    "bad", [f" {API_KEY}", f"{API_KEY} ", f"{API_KEY}\n", f"{API_KEY}\r\nX: y", f"a{API_KEY}\0"]
)
def test_api_key_with_blanks_or_control_characters(bad: str) -> None:
    exc = assert_refused(env(GR_API_KEY=bad), "GR_API_KEY")
    assert bad.strip() not in str(exc)


def test_api_key_must_be_sendable_as_a_header() -> None:
    assert_refused(env(GR_API_KEY="gr-live-Zq8xK3vN7pT2-€"), "GR_API_KEY")


def test_api_key_file_is_read_stripped_and_re_read(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(f"  {API_KEY}\n", encoding="utf-8")
    s = load({"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": f" {key_file} "})
    assert s.api_key == ApiKeySource(file=key_file)
    assert s.api_key.read() == Secret(API_KEY)
    assert s.api_key.describe() == f"file {key_file}"
    key_file.write_text("rotated-key-777\n", encoding="utf-8")  # the Secret was rotated
    assert s.api_key.read().reveal() == "rotated-key-777"


def test_api_key_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    exc = assert_refused(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(missing)}, "GR_API_KEY_FILE"
    )
    assert str(missing) in exc.problem
    assert "No such file" in exc.problem


def test_api_key_file_is_a_directory(tmp_path: Path) -> None:
    assert_refused(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(tmp_path)}, "GR_API_KEY_FILE"
    )


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_api_key_file_empty(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content, encoding="utf-8")
    exc = assert_refused(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(key_file)}, "GR_API_KEY_FILE"
    )
    assert "is empty" in exc.problem


def test_api_key_file_emptied_after_start_raises_config_error(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY, encoding="utf-8")
    s = load({"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(key_file)})
    key_file.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        s.api_key.read()
    assert info.value.variable == "GR_API_KEY_FILE"
    key_file.unlink()
    with pytest.raises(ConfigError):
        s.api_key.read()


def test_api_key_file_not_utf8(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff\xfekey-\x80\x81")
    assert_refused(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(key_file)}, "GR_API_KEY_FILE"
    )


@pytest.mark.parametrize("content", ["gr-live-abc\ngr-live-def\n", "gr-live-abc\r\nX-Evil: 1"])
def test_api_key_file_with_control_characters(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content, encoding="utf-8")
    exc = assert_refused(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(key_file)}, "GR_API_KEY_FILE"
    )
    assert "gr-live-abc" not in str(exc)


# ---- Secret and redaction ----


def test_secret_never_shows_itself() -> None:
    secret = Secret(API_KEY)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "Secret('***')"
    assert f"{secret}" == "Secret('***')"
    assert f"{secret!r}" == "Secret('***')"
    assert "%s %r" % (secret, secret) == "Secret('***') Secret('***')"  # noqa: UP031
    assert API_KEY not in repr([secret, {"k": secret}])
    assert secret.reveal() == API_KEY


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


def test_settings_repr_and_str_hide_every_secret() -> None:
    s = load(env(KAFKA_SASL_PASSWORD=SASL_PASSWORD, KAFKA_SSL_KEY_PEM="-----BEGIN PEM-xyz"))
    for text in (repr(s), str(s), f"{s}", repr(s.api_key), repr(s.kafka_extra)):
        assert API_KEY not in text
        assert SASL_PASSWORD not in text
        assert "BEGIN PEM-xyz" not in text


def test_redacted_shows_everything_but_secrets() -> None:
    s = load(
        env(
            KAFKA_SASL_PASSWORD=SASL_PASSWORD,
            KAFKA_SASL_USERNAME="svc",
            KAFKA_TOPICS="a,b",
        )
    )
    red = s.redacted()
    assert red["api_key"] == "***"
    assert red["kafka_extra"] == {"sasl.password": "***", "sasl.username": "svc"}
    assert red["topics"] == ["a", "b"]
    assert red["bootstrap_servers"] == "broker:9092"
    assert red["batch_max_events"] == 100
    assert set(red) == set(Settings.__dataclass_fields__)
    dumped = orjson.dumps(red)  # what check-config prints
    assert API_KEY.encode() not in dumped
    assert SASL_PASSWORD.encode() not in dumped


def test_redacted_names_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY, encoding="utf-8")
    s = load({"KAFKA_BOOTSTRAP_SERVERS": "b:1", "GR_API_KEY_FILE": str(key_file)})
    red = s.redacted()
    assert red["api_key"] == f"file {key_file}"
    assert API_KEY.encode() not in orjson.dumps(red)


# ---- each variable, each kind of wrong value ----

BAD_VALUES: list[tuple[str, str]] = [
    ("GR_BATCH_MAX_EVENTS", "0"),
    ("GR_BATCH_MAX_EVENTS", "101"),
    ("GR_BATCH_MAX_EVENTS", "-1"),
    ("GR_BATCH_MAX_EVENTS", "ten"),
    ("GR_BATCH_MAX_EVENTS", "1.5"),
    ("GR_BATCH_MAX_BYTES", "1023"),
    ("GR_BATCH_MAX_BYTES", str(64 * 1024 * 1024 + 1)),
    ("GR_BATCH_MAX_BYTES", "1MB"),
    ("GR_EVENT_MAX_BYTES", "63"),
    ("GR_EVENT_MAX_BYTES", "1048561"),
    ("GR_BATCH_LINGER_MS", "-1"),
    ("GR_BATCH_LINGER_MS", "600001"),
    ("GR_BATCH_LINGER_MS", "0.5"),
    ("GR_RATE_LIMIT_PER_MINUTE", "0"),
    ("GR_RATE_LIMIT_PER_MINUTE", "-60"),
    ("GR_RATE_LIMIT_PER_MINUTE", "lots"),
    ("GR_HTTP_PORT", "65536"),
    ("GR_HTTP_PORT", "-1"),
    ("GR_HTTP_PORT", "http"),
    ("GR_HTTP_TIMEOUT_S", "0"),
    ("GR_HTTP_TIMEOUT_S", "0.05"),
    ("GR_HTTP_TIMEOUT_S", "301"),
    ("GR_HTTP_TIMEOUT_S", "nan"),
    ("GR_HTTP_TIMEOUT_S", "inf"),
    ("GR_HTTP_TIMEOUT_S", "10s"),
    ("GR_MAX_IN_FLIGHT", "0"),
    ("GR_MAX_IN_FLIGHT", "257"),
    ("GR_MAX_BUFFERED_BYTES", "1048575"),
    ("GR_RETRY_INITIAL_S", "0"),
    ("GR_RETRY_INITIAL_S", "61"),
    ("GR_RETRY_MAX_S", "0.1"),
    ("GR_RETRY_MAX_S", "3601"),
    ("GR_SHUTDOWN_TIMEOUT_S", "-1"),
    ("GR_SHUTDOWN_TIMEOUT_S", "3601"),
    ("GR_SHUTDOWN_TIMEOUT_S", "NaN"),
    ("GR_SHUTDOWN_TIMEOUT_S", "soon"),
    ("GR_STRICT_EVENT_TYPES", "maybe"),
    ("GR_STRICT_RULES", "session_ids"),
    ("GR_STRICT_RULES", "currency_format,strict"),
    ("GR_LOG_LEVEL", "verbose"),
    ("GR_LOG_LEVEL", "warn"),
    ("GR_LOG_FORMAT", "xml"),
    ("GR_BASE_URL", "ftp://sdk-api.gamerebellion.com"),
    ("GR_BASE_URL", "sdk-api.gamerebellion.com"),
    ("GR_BASE_URL", "https://"),
    ("GR_BASE_URL", "https://user@host"),
    ("GR_BASE_URL", f"https://user:{API_KEY}@host"),
    ("GR_BASE_URL", "https://host/?debug=1"),
    ("GR_BASE_URL", "https://host/#top"),
    ("KAFKA_TOPICS", "a b"),
    ("KAFKA_DLQ_TOPIC", "a b"),
    ("KAFKA_BOOTSTRAP_SERVERS", "nohostport"),
    ("KAFKA_ENABLE_AUTO_COMMIT", "false"),
    ("GR_API_KEY", f"{API_KEY}\n"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_wrong_value_names_its_variable_and_hides_secrets(variable: str, value: str) -> None:
    environ = env(KAFKA_SASL_PASSWORD=SASL_PASSWORD, **{variable: value})
    assert_refused(environ, variable)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GR_BATCH_MAX_EVENTS", "1"),
        ("GR_BATCH_MAX_EVENTS", "100"),
        ("GR_BATCH_MAX_BYTES", "1024"),
        ("GR_BATCH_MAX_BYTES", str(64 * 1024 * 1024)),
        ("GR_EVENT_MAX_BYTES", "64"),
        ("GR_BATCH_LINGER_MS", "600000"),
        ("GR_RATE_LIMIT_PER_MINUTE", "1"),
        ("GR_HTTP_PORT", "65535"),
        ("GR_HTTP_TIMEOUT_S", "0.1"),
        ("GR_HTTP_TIMEOUT_S", "300"),
        ("GR_MAX_IN_FLIGHT", "256"),
        ("GR_MAX_BUFFERED_BYTES", "1048576"),
        ("GR_RETRY_INITIAL_S", "60"),
        ("GR_RETRY_MAX_S", "3600"),
        ("GR_SHUTDOWN_TIMEOUT_S", "3600"),
        ("GR_LOG_LEVEL", "warning"),
        ("GR_BASE_URL", "https://sdk-api.gamerebellion.com/"),
    ],
)
def test_boundary_values_are_accepted(variable: str, value: str) -> None:
    load(env(**{variable: value}))


@pytest.mark.parametrize("url", ["https://host:99999", "https://host:abc", "http://host:-1"])
def test_base_url_with_a_bad_port(url: str) -> None:
    assert_refused(env(GR_BASE_URL=url), "GR_BASE_URL")


@pytest.mark.parametrize(
    "url", [f"ftp://user:{API_KEY}@host", f"https://user:{API_KEY}@", f"user:{API_KEY}@host"]
)
def test_base_url_error_never_echoes_a_password(url: str) -> None:
    assert_refused(env(GR_BASE_URL=url), "GR_BASE_URL")


def test_config_error_shape() -> None:
    exc = load_error(env(GR_HTTP_PORT="x"))
    assert isinstance(exc, GrError)
    assert exc.variable == "GR_HTTP_PORT"
    assert exc.problem == "must be a whole number from 0 to 65535 (got 'x')"
    assert str(exc) == "GR_HTTP_PORT must be a whole number from 0 to 65535 (got 'x')"


# ---- properties: any text in any variable either loads or names that variable ----

_NUMERIC_VARIABLES = [
    "GR_BATCH_MAX_EVENTS",
    "GR_BATCH_MAX_BYTES",
    "GR_EVENT_MAX_BYTES",
    "GR_BATCH_LINGER_MS",
    "GR_RATE_LIMIT_PER_MINUTE",
    "GR_HTTP_PORT",
    "GR_HTTP_TIMEOUT_S",
    "GR_MAX_IN_FLIGHT",
    "GR_MAX_BUFFERED_BYTES",
    "GR_RETRY_INITIAL_S",
    "GR_RETRY_MAX_S",
    "GR_SHUTDOWN_TIMEOUT_S",
    "GR_STRICT_EVENT_TYPES",
    "GR_STRICT_RULES",
    "GR_LOG_LEVEL",
    "GR_LOG_FORMAT",
    "KAFKA_TOPICS",
    "KAFKA_DLQ_TOPIC",
    "KAFKA_GROUP_ID",
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_NUMERIC_VARIABLES),
    st.one_of(
        st.text(max_size=12),
        st.integers(min_value=-(10**12), max_value=10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ),
)
def test_property_any_value_loads_or_names_its_variable(variable: str, value: str) -> None:
    error: ConfigError | None = None
    try:
        load(env(**{variable: value}))
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.variable == variable
        assert API_KEY not in str(error)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=40))
def test_property_api_key_never_appears_in_an_error(key: str) -> None:
    secret = "Zq" + key + "Zq"
    # refused either for the key itself (blanks, control characters) or for the port
    with pytest.raises(ConfigError) as info:
        load(env(GR_API_KEY=secret, GR_HTTP_PORT="bad"))
    assert info.value.variable in ("GR_API_KEY", "GR_HTTP_PORT")
    assert secret not in str(info.value)
    assert secret.strip() not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "strict_types", "expected"),
    [
        ("", "", ()),
        ("  ", "false", ()),
        ("session_id", "", ("session_id",)),
        ("currency_format, transaction_fields", "", ("currency_format", "transaction_fields")),
        ("feature_name", "true", ("feature_name", "unknown_types")),
        ("", "true", ("unknown_types",)),
        ("all", "", tuple(sorted(STRICT_RULES))),
    ],
)
def test_strict_rules(raw: str, strict_types: str, expected: tuple[str, ...]) -> None:
    settings = load(env(GR_STRICT_RULES=raw, GR_STRICT_EVENT_TYPES=strict_types))
    assert settings.strict_rules == expected


def test_an_unknown_strict_rule_names_the_variable_and_the_rules() -> None:
    with pytest.raises(ConfigError) as info:
        load(env(GR_STRICT_RULES="currency_format,currency"))
    assert info.value.variable == "GR_STRICT_RULES"
    assert "'currency'" in str(info.value)
    assert "session_id" in str(info.value)  # the known rules are listed


@pytest.mark.parametrize(
    "url", ["http://sdk-api.gamerebellion.com", "http://127.0.0.1:9999", "HTTP://x"]
)
def test_http_is_refused_unless_explicitly_allowed(url: str) -> None:
    error = assert_refused(env(GR_BASE_URL=url), "GR_BASE_URL")
    assert "https" in str(error)
    assert "GR_ALLOW_INSECURE_HTTP" in str(error)
    assert_refused(env(GR_BASE_URL=url, GR_ALLOW_INSECURE_HTTP="false"), "GR_BASE_URL")
    s = load(env(GR_BASE_URL=url, GR_ALLOW_INSECURE_HTTP="true"))
    assert s.allow_insecure_http is True
    assert s.base_url.lower().startswith("http://")


def test_api_ca_file(tmp_path: Path) -> None:
    assert load(env()).api_ca_file is None
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert load(env(GR_API_CA_FILE=str(pem))).api_ca_file == pem
    assert load(env(GR_API_CA_FILE=str(pem))).redacted()["api_ca_file"] == str(pem)
    assert_refused(env(GR_API_CA_FILE=str(tmp_path / "missing.pem")), "GR_API_CA_FILE")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert_refused(env(GR_API_CA_FILE=str(junk)), "GR_API_CA_FILE")
