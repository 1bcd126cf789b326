"""Settings from the environment: parsed once, validated, secrets kept out of sight.

Every problem is a `ConfigError` that names the variable, so a bad deployment
stops at start-up with a message an operator can act on. Values that are
secrets live in `Secret`, whose repr never shows them; `redacted()` is the only
way settings are ever printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from consumer import redaction
from consumer.errors import ConfigError
from consumer.events import parse_strict_rules

DEFAULT_BASE_URL = "https://sdk-api.gamerebellion.com"
API_MAX_EVENTS = 100

# librdkafka settings the service owns: letting a user set them would break
# the commit bookkeeping or the group identity.
_OWNED_KAFKA_KEYS = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
    "group.id": "KAFKA_GROUP_ID",
    "enable.auto.commit": None,
    "enable.auto.offset.store": None,
    "enable.partition.eof": None,
}
# Our own KAFKA_* names that are not librdkafka pass-through.
_OWN_KAFKA_VARS = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPICS", "KAFKA_GROUP_ID", "KAFKA_DLQ_TOPIC"}
_SECRET_WORDS = ("password", "secret", "token", "private.key", "key.pem", "sasl.jaas")
# What a kubelet injects into every container for each Service of the pod's
# namespace (unless the pod sets enableServiceLinks: false): a Service named
# `kafka` or `kafka-ui` yields KAFKA_SERVICE_HOST, KAFKA_PORT,
# KAFKA_PORT_9092_TCP_ADDR, KAFKA_UI_SERVICE_PORT_HTTP... No librdkafka
# property is spelt like these, so they are left out of the pass-through.
_SERVICE_LINK = re.compile(
    r"^KAFKA(?:_[A-Z0-9_]+)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)$"
)


class Secret:
    """A string that never shows itself in repr, str or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redaction.remember(value)  # from now on, scrubbed from every log line and answer

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def key_problem(key: str) -> str | None:
    """Why a key cannot go in an HTTP header, without ever quoting it."""
    if key != key.strip():
        return "has surrounding blanks"
    if not all(0x21 <= ord(c) <= 0x7E for c in key):
        return "has characters an HTTP header cannot carry (printable ASCII only)"
    return None


def is_secret_kafka_key(key: str) -> bool:
    return any(word in key for word in _SECRET_WORDS)


@dataclass(frozen=True)
class ApiKeySource:
    """Where the API key comes from; a file is re-read so a rotated Secret is picked up."""

    value: Secret | None = None
    file: Path | None = None

    def read(self) -> Secret:
        if self.value is not None:
            return self.value
        assert self.file is not None
        try:
            text = self.file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError("GR_API_KEY_FILE", f"{self.file} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(
                "GR_API_KEY_FILE", f"cannot read {self.file}: {exc.strerror}"
            ) from None
        if not text:
            raise ConfigError("GR_API_KEY_FILE", f"{self.file} is empty")
        problem = key_problem(text)
        if problem:
            raise ConfigError("GR_API_KEY_FILE", f"the key in {self.file} {problem}")
        return Secret(text)

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else "GR_API_KEY (set)"


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str
    api_key: ApiKeySource
    topics: tuple[str, ...] = ("game-events",)
    group_id: str = "gr-s2s-consumer"
    dlq_topic: str = "game-events.dlq"
    kafka_extra: Mapping[str, str | Secret] = field(default_factory=dict)
    base_url: str = DEFAULT_BASE_URL
    api_ca_file: Path | None = None
    allow_insecure_http: bool = False
    batch_max_events: int = API_MAX_EVENTS
    batch_max_bytes: int = 1_048_576
    batch_linger_ms: int = 500
    event_max_bytes: int = 262_144
    strict_event_types: bool = False
    strict_rules: tuple[str, ...] = ()
    rate_limit_per_minute: int | None = None
    http_port: int = 8080
    http_timeout_s: float = 10.0
    max_in_flight: int = 8
    max_buffered_bytes: int = 64 * 1024 * 1024
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0
    shutdown_timeout_s: float = 30.0
    max_uncommitted_events: int = 5_000
    stall_timeout_s: float = 900.0
    log_level: str = "INFO"
    log_format: str = "json"
    # KAFKA_* variables left out of the pass-through: a kubelet's service links
    ignored_variables: tuple[str, ...] = ()

    @property
    def topic_patterns(self) -> list[str]:
        """Topic list for `subscribe`: librdkafka treats a leading ^ as a regex."""
        return list(self.topics)

    def librdkafka_secrets(self) -> dict[str, str]:
        return {k: v.reveal() for k, v in self.kafka_extra.items() if isinstance(v, Secret)}

    def kafka_common(self) -> dict[str, str]:
        """Pass-through settings (secrets revealed) for any client of the cluster."""
        conf = {
            k: (v.reveal() if isinstance(v, Secret) else v) for k, v in self.kafka_extra.items()
        }
        conf["bootstrap.servers"] = self.bootstrap_servers
        return conf

    def redacted(self) -> dict[str, Any]:
        """Everything, printable: secrets replaced by '***'."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                value = value.describe() if value.value is None else "***"
            elif f.name == "kafka_extra":
                value = {k: ("***" if isinstance(v, Secret) else v) for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


# ---- parsing helpers: each names the variable in its error ----


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number from {lo} to {hi} (got {raw!r})") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be a whole number from {lo} to {hi} (got {value})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number from {lo:g} to {hi:g} (got {raw!r})") from None
    if not lo <= value <= hi:  # also rejects nan
        raise ConfigError(name, f"must be a number from {lo:g} to {hi:g} (got {raw})")
    return value


def _strict_rules(env: Mapping[str, str], strict_types: bool) -> tuple[str, ...]:
    """GR_STRICT_RULES, plus `unknown_types` when GR_STRICT_EVENT_TYPES is true."""
    try:
        rules = set(parse_strict_rules(env.get("GR_STRICT_RULES", "")))
    except ValueError as exc:
        raise ConfigError("GR_STRICT_RULES", str(exc)) from None
    if strict_types:
        rules.add("unknown_types")
    return tuple(sorted(rules))


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false (got {raw!r})")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(name, f"must be one of {', '.join(choices)} (got {raw!r})")


_TOPIC_NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,249}$")  # Kafka forbids . and ..


def _topics(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("KAFKA_TOPICS", "").strip() or "game-events"
    topics = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not topics:
        raise ConfigError("KAFKA_TOPICS", "names no topic")
    for topic in topics:
        if topic.startswith("^"):
            try:
                re.compile(topic)
            except re.error as exc:
                raise ConfigError(
                    "KAFKA_TOPICS", f"{topic!r} is not a valid regex: {exc}"
                ) from None
        elif not _TOPIC_NAME.match(topic):
            raise ConfigError("KAFKA_TOPICS", f"{topic!r} is not a valid topic name")
    return topics


def service_links(env: Mapping[str, str]) -> tuple[str, ...]:
    """The KAFKA_* variables a kubelet injected for Services, not meant for librdkafka."""
    return tuple(sorted(name for name in env if _SERVICE_LINK.match(name)))


def _kafka_extra(env: Mapping[str, str]) -> dict[str, str | Secret]:
    extra: dict[str, str | Secret] = {}
    links = set(service_links(env))
    for name, value in env.items():
        if not name.startswith("KAFKA_") or name in _OWN_KAFKA_VARS or name in links:
            continue
        key = name[len("KAFKA_") :].lower().replace("_", ".")
        if not key:
            continue
        if key in _OWNED_KAFKA_KEYS:
            owner = _OWNED_KAFKA_KEYS[key]
            hint = f"use {owner}" if owner else "the service manages commits itself"
            raise ConfigError(name, f"cannot be set ({key}): {hint}")
        extra[key] = Secret(value) if is_secret_kafka_key(key) else value
    return extra


def _api_key(env: Mapping[str, str]) -> ApiKeySource:
    key = env.get("GR_API_KEY", "")
    key_file = env.get("GR_API_KEY_FILE", "").strip()
    if key and key_file:
        raise ConfigError("GR_API_KEY", "set either GR_API_KEY or GR_API_KEY_FILE, not both")
    if key:
        problem = key_problem(key)
        if problem:
            raise ConfigError("GR_API_KEY", problem)
        return ApiKeySource(value=Secret(key))
    if key_file:
        source = ApiKeySource(file=Path(key_file))
        source.read()  # fail now, not at the first request
        return source
    raise ConfigError("GR_API_KEY", "is required (or GR_API_KEY_FILE naming a file holding it)")


def _base_url(env: Mapping[str, str], allow_http: bool) -> str:
    raw = env.get("GR_BASE_URL", "").strip() or DEFAULT_BASE_URL
    parts = urlsplit(raw)
    if "@" in raw or parts.username or parts.password:
        # checked first: the value may hold a password, so it is never echoed
        raise ConfigError("GR_BASE_URL", "must not carry credentials; use GR_API_KEY")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("GR_BASE_URL", f"must be an https URL (got {raw!r})")
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(
            "GR_BASE_URL",
            f"must be https: over http the API key travels in clear text (got {raw!r}; "
            "GR_ALLOW_INSECURE_HTTP=true allows http, for a local test server only)",
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ConfigError("GR_BASE_URL", f"has an invalid port (got {raw!r})")
    if parts.query or parts.fragment:
        raise ConfigError("GR_BASE_URL", "must not have a query or fragment")
    return raw.rstrip("/")


def _ca_file(env: Mapping[str, str]) -> Path | None:
    """GR_API_CA_FILE: a PEM bundle the API's certificate is verified against."""
    raw = env.get("GR_API_CA_FILE", "").strip()
    if not raw:
        return None
    path = Path(raw)
    try:
        head = path.read_bytes()[:65536]
    except OSError as exc:
        raise ConfigError("GR_API_CA_FILE", f"cannot read {raw}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError("GR_API_CA_FILE", f"{raw} holds no PEM certificate")
    return path


def load(env: Mapping[str, str]) -> Settings:
    """Parse and validate; raises ConfigError naming the first bad variable."""
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", "is required (host:port[,host:port...])")
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", f"{server.strip()!r} is not host:port")
    group = env.get("KAFKA_GROUP_ID", "").strip() or "gr-s2s-consumer"
    if len(group) > 255 or not group.isprintable():
        raise ConfigError("KAFKA_GROUP_ID", "must be at most 255 printable characters")
    dlq = env.get("KAFKA_DLQ_TOPIC", "").strip() or "game-events.dlq"
    if not _TOPIC_NAME.match(dlq):
        raise ConfigError("KAFKA_DLQ_TOPIC", f"{dlq!r} is not a valid topic name")
    topics = _topics(env)
    for topic in topics:
        if dlq == topic or (topic.startswith("^") and re.match(topic, dlq)):
            raise ConfigError(
                "KAFKA_DLQ_TOPIC", f"{dlq!r} is matched by KAFKA_TOPICS: the worker would read it"
            )
    batch_max_bytes = _int(env, "GR_BATCH_MAX_BYTES", 1_048_576, 1024, 64 * 1024 * 1024)
    event_max = _int(env, "GR_EVENT_MAX_BYTES", min(262_144, batch_max_bytes - 16), 64, 16 << 20)
    if event_max + 16 > batch_max_bytes:
        raise ConfigError(
            "GR_EVENT_MAX_BYTES",
            f"must leave room for the request wrapper: at most GR_BATCH_MAX_BYTES - 16 "
            f"({batch_max_bytes - 16})",
        )
    rate = env.get("GR_RATE_LIMIT_PER_MINUTE", "").strip()
    strict_types = _bool(env, "GR_STRICT_EVENT_TYPES", False)
    allow_http = _bool(env, "GR_ALLOW_INSECURE_HTTP", False)
    retry_initial = _float(env, "GR_RETRY_INITIAL_S", 0.2, 0.001, 60)
    return Settings(
        bootstrap_servers=bootstrap,
        api_key=_api_key(env),
        topics=topics,
        group_id=group,
        dlq_topic=dlq,
        kafka_extra=_kafka_extra(env),
        base_url=_base_url(env, allow_http),
        api_ca_file=_ca_file(env),
        allow_insecure_http=allow_http,
        batch_max_events=_int(env, "GR_BATCH_MAX_EVENTS", API_MAX_EVENTS, 1, API_MAX_EVENTS),
        batch_max_bytes=batch_max_bytes,
        batch_linger_ms=_int(env, "GR_BATCH_LINGER_MS", 500, 0, 600_000),
        event_max_bytes=event_max,
        strict_event_types=strict_types,
        strict_rules=_strict_rules(env, strict_types),
        rate_limit_per_minute=(
            _int(env, "GR_RATE_LIMIT_PER_MINUTE", 0, 1, 10_000_000) if rate else None
        ),
        http_port=_int(env, "GR_HTTP_PORT", 8080, 0, 65535),
        http_timeout_s=_float(env, "GR_HTTP_TIMEOUT_S", 10.0, 0.1, 300),
        max_in_flight=_int(env, "GR_MAX_IN_FLIGHT", 8, 1, 256),
        max_buffered_bytes=_int(
            env, "GR_MAX_BUFFERED_BYTES", 64 * 1024 * 1024, batch_max_bytes, 8 << 30
        ),
        retry_initial_s=retry_initial,
        retry_max_s=_float(env, "GR_RETRY_MAX_S", 30.0, retry_initial, 3600),
        shutdown_timeout_s=_float(env, "GR_SHUTDOWN_TIMEOUT_S", 30.0, 0.0, 3600),
        max_uncommitted_events=_int(env, "GR_MAX_UNCOMMITTED_EVENTS", 5_000, 1, 10_000_000),
        stall_timeout_s=_float(env, "GR_STALL_TIMEOUT_S", 900.0, 0.0, 86_400),
        log_level=_choice(env, "GR_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        log_format=_choice(env, "GR_LOG_FORMAT", "json", ("json", "text")),
        ignored_variables=service_links(env),
    )
