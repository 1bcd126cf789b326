"""Publish game events to Kafka with the calls of the vendor's Python client.

A backend that called the S2S API directly switches to Kafka by changing the
line that builds the client::

    client = GameRebellionKafka(bootstrap_servers="kafka:9092", topic="game-events")
    client.track_event(
        "transaction",
        {"amount": 4.99, "currency": "USD", "type": "iap"},
        identifiers={"player_id": "player-12345"},
    )
    client.track_impression("summer_2026", placement="main_menu",
                            identifiers={"player_id": "player-12345"})
    client.close()  # or `with GameRebellionKafka(...) as client:`

Or from the service's own environment (`KAFKA_BOOTSTRAP_SERVERS`, the first
plain topic of `KAFKA_TOPICS`, every other `KAFKA_*` passed to librdkafka):
`GameRebellionKafka.from_env()`.

What it promises:

- Every event is checked by the consumer's own `EventDecoder` (same schemas,
  same size limit) before it is produced: a bad event raises
  `InvalidEventError` and nothing is sent. `track_batch` checks the whole
  batch first and sends none of it if one event is bad.
- `identifiers` and `utm` that are None are left out (smaller records; the
  schema would take `null` there too), and so are None fields inside them and None keyword arguments of
  the `track_*` shortcuts. A payload given to `track_event` is sent as given.
- The record key is `identifiers.player_id` (no key when there is none), so a
  player's events stay in order on one partition; `key=` takes another
  function of the event.
- An idempotent producer with `acks=all`: an acknowledged event is durable
  and a retry inside the producer never writes it twice.
- Every call returns a `DeliveryFuture` (the `concurrent.futures.Future`
  calls: `result`, `exception`, `done`, `add_done_callback`) that resolves
  to a `DeliveryReport` or fails with `DeliveryError`; `on_delivery=` is called
  with the report of each event, delivered or not. Both run on the client's
  background thread, which serves librdkafka's callbacks while it is open.
- `flush()` waits for what is in flight; `close()` (and leaving a `with`
  block) flushes, then fails whatever is still undelivered, so no future is
  left pending.

Errors::

    GrError
    ├── InvalidEventError (also a ValueError): the event fails the schema; nothing was sent
    └── DeliveryError: Kafka did not take the event (the future's exception, the
                       report's `error`, or raised at once when it cannot even be queued)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from consumer import config
from consumer.errors import ConfigError, DeliveryError, InvalidEventError
from consumer.events import DEFAULT_MAX_BYTES, EventDecoder, Poison
from consumer.kafka_config import producer_config

__all__ = [
    "DeliveryError",
    "DeliveryFuture",
    "DeliveryReport",
    "GameRebellionKafka",
    "InvalidEventError",
    "KeyFunc",
    "first_plain_topic",
    "kafka_settings",
    "player_id_key",
]

log = logging.getLogger("consumer.producer")

KeyFunc = Callable[[Mapping[str, Any]], str | bytes | None]

# Settings an idempotent, durable producer cannot do without; set after the caller's config.
_REQUIRED: Final[dict[str, Any]] = {"enable.idempotence": True, "acks": "all"}
_DEFAULTS: Final[dict[str, Any]] = {"linger.ms": 5}
_QUEUE_FULL_WAIT_S: Final = 0.05
_ENVELOPE_KEYS: Final = frozenset({"event_type", "payload", "identifiers", "utm"})


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Where an event landed, or why it did not (`error`)."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    error: DeliveryError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class DeliveryFuture:
    """The outcome of one event, known once Kafka acknowledged it or gave up.

    The calls of `concurrent.futures.Future` that make sense here: `done()`,
    `result(timeout)` (the `DeliveryReport`, or raises its `DeliveryError`),
    `exception(timeout)`, `add_done_callback(fn)`; no `cancel()`, since an
    event handed to librdkafka cannot be taken back. A timeout raises
    `TimeoutError`. Lighter than a `concurrent.futures.Future` (which builds
    a Condition per instance): the futures of one client share its condition.
    """

    __slots__ = ("_callbacks", "_cond", "_report")

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._report: DeliveryReport | None = None
        self._callbacks: list[Callable[[DeliveryFuture], None]] | None = None

    def done(self) -> bool:
        return self._report is not None

    def result(self, timeout: float | None = None) -> DeliveryReport:
        report = self._wait(timeout)
        if report.error is not None:
            raise report.error
        return report

    def exception(self, timeout: float | None = None) -> DeliveryError | None:
        return self._wait(timeout).error

    def add_done_callback(self, fn: Callable[[DeliveryFuture], None]) -> None:
        """`fn(future)` once the outcome is known: at once if it is, else on the client's
        delivery thread."""
        with self._cond:
            if self._report is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def _wait(self, timeout: float | None) -> DeliveryReport:
        with self._cond:
            if not self._cond.wait_for(self.done, timeout):
                raise TimeoutError(f"delivery not known after {timeout}s")
            assert self._report is not None
            return self._report

    def _resolve(self, report: DeliveryReport) -> None:
        with self._cond:
            self._report = report
            callbacks, self._callbacks = self._callbacks, None
            self._cond.notify_all()
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:  # one caller's callback must not stop the others
                log.exception("done callback raised")


def player_id_key(event: Mapping[str, Any]) -> str | None:
    """The default record key: `identifiers.player_id`, or no key."""
    identifiers = event.get("identifiers")
    if isinstance(identifiers, Mapping):
        player = identifiers.get("player_id")
        if isinstance(player, str):
            return player
    return None


def kafka_settings(env: Mapping[str, str]) -> config.Settings:
    """The settings of a Kafka-only tool: `config.load_kafka` (no API key needed or read)."""
    return config.load_kafka(env)


def first_plain_topic(settings: config.Settings) -> str:
    """The first `KAFKA_TOPICS` entry that is a name, not a `^regex`."""
    for topic in settings.topics:
        if not topic.startswith("^"):
            return topic
    raise ConfigError("KAFKA_TOPICS", "names no plain topic to produce to (only ^regexes)")


def _non_finite_at(obj: object, path: str) -> str | None:
    """The path of the first NaN or infinite float in `obj`, if any."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            found = _non_finite_at(value, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            found = _non_finite_at(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _without_none(fields: object) -> object:
    """None fields dropped, and an object left with none dropped too; a non-object is kept
    as it is, for the schema check to refuse with its path."""
    if not isinstance(fields, Mapping):
        return fields
    kept = {k: v for k, v in fields.items() if v is not None}
    return kept or None


def _envelope(
    event_type: object,
    payload: object,
    identifiers: object,
    utm: object,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"event_type": event_type}
    ids = _without_none(identifiers)
    if ids is not None:
        event["identifiers"] = ids
    campaign = _without_none(utm)
    if campaign is not None:
        event["utm"] = campaign
    event["payload"] = dict(payload) if isinstance(payload, Mapping) else payload
    if extra:
        event.update((k, v) for k, v in extra.items() if k not in event and v is not None)
    return event


class GameRebellionKafka:
    """The vendor client's calls, producing to a Kafka topic. Thread-safe; one per process."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        config: Mapping[str, Any] | None = None,
        key: KeyFunc = player_id_key,
        on_delivery: Callable[[DeliveryReport], None] | None = None,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
        strict_types: bool = False,
        strict_rules: Iterable[str] = (),
        queue_full_timeout_s: float = 30.0,
    ) -> None:
        """`config` is passed to librdkafka (`security.protocol`, `linger.ms`, ...);
        `enable.idempotence` and `acks` are always `true` and `all`.

        `max_event_bytes`, `strict_types` and `strict_rules` should match the
        consumer's `GR_EVENT_MAX_BYTES`, `GR_STRICT_EVENT_TYPES` and
        `GR_STRICT_RULES` (`from_env` does that): a producer then refuses exactly
        what the consumer would dead-letter, and nothing it would deliver.
        When librdkafka's queue is full a call waits up to `queue_full_timeout_s`
        for room, then raises `DeliveryError`.
        """
        from confluent_kafka import Producer

        if not topic or topic.startswith("^"):
            raise ValueError(f"topic must be a topic name, got {topic!r}")
        conf: dict[str, Any] = {**_DEFAULTS, **(config or {})}
        conf.update(_REQUIRED)
        conf["bootstrap.servers"] = bootstrap_servers
        self._producer: Any = Producer(conf)
        self._topic = topic
        self._key = key
        self._on_delivery = on_delivery
        self._decoder = EventDecoder(
            max_bytes=max_event_bytes, strict_types=strict_types, strict_rules=strict_rules
        )
        self._queue_full_timeout = queue_full_timeout_s
        self._lock = threading.Lock()
        self._cond = threading.Condition()  # shared by this client's futures
        self._pending = 0
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, name="gr-producer-poll", daemon=True
        )
        self._poller.start()

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        topic: str | None = None,
        **kwargs: Any,
    ) -> GameRebellionKafka:
        """Built from the service's environment (`kafka_settings`): the same brokers, the
        same `KAFKA_*` pass-through (SASL, TLS), the first plain topic of `KAFKA_TOPICS`
        unless `topic` is given, and the consumer's event size limit and strictness.
        Raises `ConfigError` naming the variable when the environment is wrong."""
        settings = kafka_settings(os.environ if env is None else env)
        return cls.from_settings(settings, topic=topic, **kwargs)

    @classmethod
    def from_settings(
        cls, settings: config.Settings, *, topic: str | None = None, **kwargs: Any
    ) -> GameRebellionKafka:
        """As `from_env`, from settings already loaded (`kafka_settings` or `config.load`)."""
        conf = producer_config(settings, **{"client.id": f"gr-producer-{os.getpid()}"})
        bootstrap = conf.pop("bootstrap.servers")
        kwargs.setdefault("max_event_bytes", settings.event_max_bytes)
        kwargs.setdefault("strict_rules", settings.strict_rules)
        return cls(bootstrap, topic or first_plain_topic(settings), config=conf, **kwargs)

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def pending(self) -> int:
        """Events produced whose delivery is not yet known (acknowledged or failed)."""
        with self._lock:
            return self._pending

    # ---- the vendor client's calls -------------------------------------------------

    def track_event(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
    ) -> DeliveryFuture:
        """One event. Raises `InvalidEventError` (nothing sent) when it fails the schema."""
        return self._send(self._encode(_envelope(event_type, payload, identifiers, utm)))

    def track_batch(self, events: Iterable[Mapping[str, Any]]) -> list[DeliveryFuture]:
        """Several events, each an envelope (`event_type`, `payload`, optional `identifiers`,
        `utm`). All are checked first: if one is bad, `InvalidEventError` names its index
        and none is sent. Each is its own Kafka record (the consumer batches them again)."""
        encoded: list[tuple[bytes, Mapping[str, Any]]] = []
        for i, event in enumerate(events):
            if not isinstance(event, Mapping):
                raise InvalidEventError(None, "schema_violation", f"batch item {i}: not a mapping")
            envelope = _envelope(
                event.get("event_type"),
                event.get("payload"),
                event.get("identifiers"),
                event.get("utm"),
                extra={k: v for k, v in event.items() if k not in _ENVELOPE_KEYS},
            )
            try:
                encoded.append(self._encode(envelope))
            except InvalidEventError as exc:
                raise InvalidEventError(
                    exc.event_type, exc.reason, f"batch item {i}: {exc.detail}"
                ) from None
        return [self._send(item) for item in encoded]

    def track_impression(
        self,
        campaign_id: str,
        *,
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> DeliveryFuture:
        """An `impression`; other keyword arguments (placement=, creative_id=) join the payload."""
        return self._shortcut("impression", {"campaign_id": campaign_id}, identifiers, utm, fields)

    def track_click(
        self,
        campaign_id: str,
        *,
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> DeliveryFuture:
        """A `click`; other keyword arguments join the payload."""
        return self._shortcut("click", {"campaign_id": campaign_id}, identifiers, utm, fields)

    def track_conversion(
        self,
        campaign_id: str,
        conversion_type: str,
        *,
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> DeliveryFuture:
        """A `conversion`; other keyword arguments (value=) join the payload."""
        required = {"campaign_id": campaign_id, "conversion_type": conversion_type}
        return self._shortcut("conversion", required, identifiers, utm, fields)

    def start_session(
        self,
        session_id: str,
        *,
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> DeliveryFuture:
        """A `session_start` (the consumer sends it to /api/v1/sessions/start)."""
        return self._session("session_start", session_id, identifiers, utm, fields)

    def stop_session(
        self,
        session_id: str,
        *,
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> DeliveryFuture:
        """A `session_stop` (to /api/v1/sessions/stop)."""
        return self._session("session_stop", session_id, identifiers, utm, fields)

    def end_session(
        self,
        session_id: str,
        *,
        identifiers: Mapping[str, Any] | None = None,
        utm: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> DeliveryFuture:
        """A `session_end` (to /api/v1/sessions/end); e.g. reason="normal" joins the payload."""
        return self._session("session_end", session_id, identifiers, utm, fields)

    # ---- already-encoded events ------------------------------------------------------

    def publish_json(self, value: bytes) -> DeliveryFuture:
        """One event already encoded as JSON: checked as is and produced byte for byte
        (what `gr-consumer publish` does with each line). Keyed by the same key function."""
        verdict = self._decoder.decode(value)
        if isinstance(verdict, Poison):
            raise InvalidEventError(None, verdict.reason, verdict.detail)
        return self._send((value, msgspec.json.decode(value)))

    # ---- lifecycle -------------------------------------------------------------------

    def topic_exists(self, timeout_s: float = 10.0) -> bool:
        """Whether the cluster has the topic (asks the brokers; raises `DeliveryError`
        if they cannot be reached in time). Producing to a missing topic fails only
        after librdkafka's `message.timeout.ms`, so tools check first."""
        from confluent_kafka import KafkaException

        try:
            metadata = self._producer.list_topics(self._topic, timeout=timeout_s)
        except KafkaException as exc:
            raise DeliveryError(
                f"cannot reach the Kafka cluster: {exc}", topic=self._topic
            ) from None
        found = metadata.topics.get(self._topic)
        return found is not None and found.error is None

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait until every event is acknowledged or failed; returns how many are still waiting."""
        left: int = self._producer.flush(-1 if timeout_s is None else timeout_s)
        return left

    def close(self, timeout_s: float = 30.0) -> int:
        """Flush (up to `timeout_s`), then fail what is left with `DeliveryError` (its
        futures and `on_delivery` see it) and stop. Returns how many events were not
        delivered. Calling it again does nothing."""
        if self._closed.is_set():
            return 0
        self._closed.set()
        self._poller.join()
        left = self.flush(timeout_s)
        if left:
            log.warning("closing with undelivered events", extra={"undelivered": left})
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(5.0)  # serves the purge's callbacks: the futures fail
        return left

    def __enter__(self) -> GameRebellionKafka:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------

    def _shortcut(
        self,
        event_type: str,
        required: dict[str, Any],
        identifiers: Mapping[str, Any] | None,
        utm: Mapping[str, Any] | None,
        fields: dict[str, Any],
    ) -> DeliveryFuture:
        payload = {**{k: v for k, v in fields.items() if v is not None}, **required}
        return self._send(self._encode(_envelope(event_type, payload, identifiers, utm)))

    def _session(
        self,
        event_type: str,
        session_id: str,
        identifiers: Mapping[str, Any] | None,
        utm: Mapping[str, Any] | None,
        fields: dict[str, Any],
    ) -> DeliveryFuture:
        return self._shortcut(event_type, {"session_id": session_id}, identifiers, utm, fields)

    def _encode(self, event: dict[str, Any]) -> tuple[bytes, Mapping[str, Any]]:
        try:
            value = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:
            raise InvalidEventError(event.get("event_type"), "not_serializable", str(exc)) from None
        where = _non_finite_at(event, "$")
        if where is not None:
            # orjson would write null; the vendor's client (json, allow_nan=False) refuses.
            detail = f"NaN and Infinity are not JSON - at `{where}`"
            raise InvalidEventError(event.get("event_type"), "not_serializable", detail)
        verdict = self._decoder.decode(value)
        if isinstance(verdict, Poison):
            raise InvalidEventError(event.get("event_type"), verdict.reason, verdict.detail)
        return value, event

    def _send(self, item: tuple[bytes, Mapping[str, Any]]) -> DeliveryFuture:
        from confluent_kafka import KafkaException

        value, event = item
        raw_key = self._key(event)
        key = raw_key.encode("utf-8") if isinstance(raw_key, str) else raw_key
        future = DeliveryFuture(self._cond)
        callback = self._callback(future, key)
        deadline: float | None = None
        while True:
            if self._closed.is_set():
                raise DeliveryError("the client is closed", topic=self._topic, key=key)
            with self._lock:
                self._pending += 1  # before produce: its callback may run at once
            try:
                self._producer.produce(self._topic, value=value, key=key, on_delivery=callback)
                return future
            except BufferError:
                self._settled()
                now = time.monotonic()
                deadline = deadline or now + self._queue_full_timeout
                if now >= deadline:
                    raise DeliveryError(
                        f"librdkafka's queue stayed full for {self._queue_full_timeout:g}s",
                        code="_QUEUE_FULL",
                        retriable=True,
                        topic=self._topic,
                        key=key,
                    ) from None
                self._producer.poll(_QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                self._settled()
                raise DeliveryError.from_kafka(exc.args[0], self._topic, key) from None

    def _settled(self) -> None:
        with self._lock:
            self._pending -= 1

    def _callback(self, future: DeliveryFuture, key: bytes | None) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            self._settled()
            if err is None:
                report = DeliveryReport(msg.topic(), msg.partition(), msg.offset(), key)
            else:
                error = DeliveryError.from_kafka(err, self._topic, key)
                report = DeliveryReport(self._topic, None, None, key, error)
            future._resolve(report)
            if self._on_delivery is not None:
                try:
                    self._on_delivery(report)
                except Exception:  # a user's callback must not stop delivery reports
                    log.exception("on_delivery callback raised")

        return done

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)
