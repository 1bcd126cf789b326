"""Settings from the environment: parsed once, validated, secrets kept out of sight.

Every problem is a `ConfigError` that names the variable, so a bad deployment
stops at start-up with a message an operator can act on. Values that are
secrets live in `Secret`, whose repr never shows them; `redacted()` is the only
way settings are ever printed.
"""

from __future__ import annotations

import ipaddress
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
_OWN_KAFKA_VARS = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPICS",
    "KAFKA_GROUP_ID",
    "KAFKA_DLQ_TOPIC",
    "KAFKA_SASL_PASSWORD_FILE",
}
# A key containing one of these is a secret. `sasl.oauthbearer.config` carries
# a client secret among its fields (clientSecret=...), whatever its name says.
_SECRET_WORDS = (
    "password",
    "secret",
    "token",
    "private.key",
    "key.pem",
    "sasl.jaas",
    "sasl.oauthbearer.config",
)
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


def read_secret_file(variable: str, path: Path) -> str:
    """A secret kept in a file (a mounted Secret): UTF-8, without the line end a file
    usually has, not empty. Errors name `variable` and never quote the content."""
    try:
        text = path.read_bytes().decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(variable, f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(variable, f"{path} is empty")
    return text


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
        if self.file is None:  # settings loaded for Kafka only (`load_kafka`)
            raise ConfigError("GR_API_KEY", "was not read: these settings are for Kafka only")
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
        if self.file is not None:
            return f"file {self.file}"
        return "GR_API_KEY (set)" if self.value is not None else "not read (Kafka only)"


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str
    api_key: ApiKeySource
    topics: tuple[str, ...] = ("game-events",)
    group_id: str = "gr-s2s-consumer"
    dlq_topic: str = "game-events.dlq"
    kafka_extra: Mapping[str, str | Secret] = field(default_factory=dict)
    # where kafka_extra's sasl.password was read from (a file watched for rotation)
    sasl_password_file: Path | None = None
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
    max_uncommitted_events: int = 200
    stall_timeout_s: float = 900.0
    log_level: str = "INFO"
    log_format: str = "json"
    ordering: str = "key"
    # KAFKA_* variables left out of the pass-through: a kubelet's service links
    ignored_variables: tuple[str, ...] = ()

    def consumes(self, topic: str) -> bool:
        """Whether the service reads `topic`: named in KAFKA_TOPICS, or matched by one of
        its ^regexes (never the DLQ, which load() refuses to let them match)."""
        return topic != self.dlq_topic and topic_matches(self.topics, topic)

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


def topic_matches(topics: tuple[str, ...], name: str) -> bool:
    """`name` is a valid topic name that one of `topics` names or (^regex) matches."""
    if not _TOPIC_NAME.match(name):
        return False
    return any(t == name or (t.startswith("^") and re.search(t, name)) for t in topics)


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


def _sasl_password_file(env: Mapping[str, str], extra: dict[str, str | Secret]) -> Path | None:
    """KAFKA_SASL_PASSWORD_FILE: the SASL password read from a file into `extra`."""
    raw = env.get("KAFKA_SASL_PASSWORD_FILE", "").strip()
    if not raw:
        return None
    if "sasl.password" in extra:
        raise ConfigError(
            "KAFKA_SASL_PASSWORD_FILE",
            "set either KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both",
        )
    path = Path(raw)
    extra["sasl.password"] = Secret(read_secret_file("KAFKA_SASL_PASSWORD_FILE", path))
    return path


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


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _host_problem(host: str) -> str | None:
    """Why `host` (as urlsplit gives it: lower-cased, no brackets) is no host name."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return "is not an IPv6 address"
        return None
    if not host.isascii():
        return "is not ASCII: write an international name in its xn-- (punycode) form"
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return "is not a host name (letters, digits and hyphens, in dot-separated labels)"
    return None


def _base_url(env: Mapping[str, str], allow_http: bool) -> str:
    raw = env.get("GR_BASE_URL", "").strip() or DEFAULT_BASE_URL
    if "@" in raw:
        # checked first: the value may hold a password, so it is never echoed
        raise ConfigError("GR_BASE_URL", "must not carry credentials; use GR_API_KEY")
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise ConfigError(
            "GR_BASE_URL", f"must not contain blanks or control characters (got {raw!r})"
        )
    try:
        parts = urlsplit(raw)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:  # an unclosed or stray [ ], a port that is no number
        raise ConfigError("GR_BASE_URL", f"is not a valid URL: {exc} (got {raw!r})") from None
    if parts.username or parts.password:
        raise ConfigError("GR_BASE_URL", "must not carry credentials; use GR_API_KEY")
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("GR_BASE_URL", f"must be an https URL (got {raw!r})")
    problem = _host_problem(host)
    if problem is not None:
        raise ConfigError("GR_BASE_URL", f"host {host!r} {problem} (got {raw!r})")
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(
            "GR_BASE_URL",
            f"must be https: over http the API key travels in clear text (got {raw!r}; "
            "GR_ALLOW_INSECURE_HTTP=true allows http, for a local test server only)",
        )
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


# Paths Python opens itself: a file name need not be UTF-8 on Linux.
_PATH_VARIABLES = frozenset({"GR_API_KEY_FILE", "KAFKA_SASL_PASSWORD_FILE"})


def _check_utf8(env: Mapping[str, str]) -> None:
    """Every KAFKA_* and GR_* name and value must be UTF-8 text.

    The environment is bytes; Python keeps a byte that is not UTF-8 (a Latin-1
    `é` in a password, say) as a lone surrogate, which librdkafka's client
    cannot take and an HTTP header cannot carry. Refused here, by name, and
    never echoed: the value may be a secret.
    """
    for name, value in env.items():
        if not name.startswith(("KAFKA_", "GR_")):
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise ConfigError(shown, "is a variable name that is not UTF-8 text") from None
        if name in _PATH_VARIABLES:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                name,
                "holds a byte that is not UTF-8 (a value saved in Latin-1 or another 8-bit "
                "encoding?); the service and librdkafka read UTF-8 text: re-encode it",
            ) from None


# What a Kafka-only tool reads besides KAFKA_*: the limits its events are checked by.
_KAFKA_TOOL_VARIABLES = frozenset(
    {"GR_EVENT_MAX_BYTES", "GR_BATCH_MAX_BYTES", "GR_STRICT_EVENT_TYPES", "GR_STRICT_RULES"}
)


def load_kafka(env: Mapping[str, str]) -> Settings:
    """`load` for tools that talk only to Kafka (the producer library, publish, dlq).

    Reads the `KAFKA_*` variables, with the same pass-through and the same
    errors as the service, and the event limits (`GR_EVENT_MAX_BYTES`,
    `GR_BATCH_MAX_BYTES`, `GR_STRICT_EVENT_TYPES`, `GR_STRICT_RULES`). The API
    key is neither needed nor read (`api_key.read()` refuses), and the other
    `GR_*` variables are not looked at.
    """
    scoped = {k: v for k, v in env.items() if k.startswith("KAFKA_") or k in _KAFKA_TOOL_VARIABLES}
    return _load(scoped, ApiKeySource())


def load(env: Mapping[str, str]) -> Settings:
    """Parse and validate; raises ConfigError naming the first bad variable."""
    return _load(env, None)


def _load(env: Mapping[str, str], api_key: ApiKeySource | None) -> Settings:
    _check_utf8(env)
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
    if topic_matches(topics, dlq):
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
    kafka_extra = _kafka_extra(env)
    password_file = _sasl_password_file(env, kafka_extra)
    return Settings(
        bootstrap_servers=bootstrap,
        api_key=_api_key(env) if api_key is None else api_key,
        topics=topics,
        group_id=group,
        dlq_topic=dlq,
        kafka_extra=kafka_extra,
        sasl_password_file=password_file,
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
        max_uncommitted_events=_int(env, "GR_MAX_UNCOMMITTED_EVENTS", 200, 1, 10_000_000),
        stall_timeout_s=_float(env, "GR_STALL_TIMEOUT_S", 900.0, 0.0, 86_400),
        log_level=_choice(env, "GR_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        log_format=_choice(env, "GR_LOG_FORMAT", "json", ("json", "text")),
        ordering=_choice(env, "GR_ORDERING", "key", ("key", "partition")),
        ignored_variables=service_links(env),
    )
