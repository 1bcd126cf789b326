"""The producer library refuses bad events before anything is produced (no broker).

The client points at a port where no broker listens: a valid event then waits
in librdkafka's queue (`pending` counts it), so `pending == 0` after a refusal
shows that nothing was produced, and closing fails the waiting ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.errors import ConfigError, GrError
from consumer.producer import (
    DeliveryError,
    DeliveryReport,
    GameRebellionKafka,
    InvalidEventError,
    player_id_key,
)
from gr_devtools.samples import vendor_examples

NO_BROKER = "127.0.0.1:1"
QUIET = {"logger": logging.getLogger("test.librdkafka"), "reconnect.backoff.max.ms": 1000}
IDS = {"player_id": "player-1", "device_id": "device-1"}


@pytest.fixture
def client() -> Iterator[GameRebellionKafka]:
    c = GameRebellionKafka(NO_BROKER, "game-events", config=QUIET)
    yield c
    c.close(0)


def refused(call: Any, *args: Any, **kwargs: Any) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("event_type", "payload", "reason", "where"),
    [
        (
            "transaction",
            {"amount": "4.99", "currency": "USD"},
            "schema_violation",
            "$.payload.amount",
        ),
        ("transaction", {"amount": 4.99, "currency": 840}, "schema_violation", "currency"),
        (
            "transaction",
            {"amount": float("nan"), "currency": "USD"},
            "not_serializable",
            "$.payload.amount",
        ),
        ("custom", {"scores": [1.0, float("inf")]}, "not_serializable", "$.payload.scores[1]"),
        ("impression", {}, "schema_violation", "campaign_id"),
        ("conversion", {"campaign_id": "c"}, "schema_violation", "conversion_type"),
        ("", {"x": 1}, "schema_violation", "$.event_type"),
        ("custom", [1, 2], "schema_violation", "$.payload"),
        ("custom", {"when": {1, 2}}, "not_serializable", "set"),
    ],
)
def test_track_event_refuses_bad_events_before_producing(
    client: GameRebellionKafka, event_type: str, payload: Any, reason: str, where: str
) -> None:
    error = refused(client.track_event, event_type, payload, IDS)
    assert error.reason == reason
    assert where in error.detail
    assert client.pending == 0
    assert isinstance(error, GrError)
    assert isinstance(error, ValueError)


def test_envelope_fields_of_the_wrong_type_are_refused(client: GameRebellionKafka) -> None:
    payload = {"campaign_id": "c"}
    assert (
        "$.identifiers.player_id"
        in refused(client.track_event, "click", payload, {"player_id": 12345}).detail
    )
    assert (
        "$.utm.source" in refused(client.track_event, "click", payload, None, {"source": 1}).detail
    )
    assert "$.identifiers" in refused(client.track_event, "click", payload, "player-1").detail
    assert client.pending == 0


def test_none_identifiers_and_utm_are_left_out_not_sent_as_null(
    client: GameRebellionKafka,
) -> None:
    # Sent as null, each of these would fail the schema (null is not a string or an object).
    client.track_event("click", {"campaign_id": "c"}, identifiers=None, utm=None)
    client.track_event("click", {"campaign_id": "c"}, {"player_id": "p", "device_id": None})
    client.track_event("click", {"campaign_id": "c"}, {"player_id": None}, {"source": None})
    client.track_impression("c", placement=None, identifiers=None)
    assert client.pending == 4


def test_error_message_names_type_reason_and_path(client: GameRebellionKafka) -> None:
    error = refused(client.track_event, "transaction", {"amount": "x", "currency": "USD"})
    assert str(error) == (
        "invalid 'transaction' event (schema_violation): "
        "Expected `float | null`, got `str` - at `$.payload.amount`"
    )
    assert error.event_type == "transaction"


def test_too_large_and_strict_types_follow_the_consumer_settings() -> None:
    small = GameRebellionKafka(NO_BROKER, "t", config=QUIET, max_event_bytes=200)
    strict = GameRebellionKafka(NO_BROKER, "t", config=QUIET, strict_types=True)
    try:
        assert refused(small.track_event, "custom", {"blob": "x" * 300}).reason == "too_large"
        small.track_event("custom", {"blob": "x" * 10})
        assert small.pending == 1
        error = refused(strict.track_event, "level_up", {"level": 2})
        assert error.reason == "schema_violation"
        assert "strict" in error.detail
        strict.track_event("feature_use", {"feature_name": "inventory"})
        assert strict.pending == 1
    finally:
        small.close(0)
        strict.close(0)


def test_the_documentations_bodies_are_never_refused(client: GameRebellionKafka) -> None:
    for n, example in enumerate(vendor_examples(), start=1):
        client.publish_json(example.body)
        assert client.pending == n, example.name
    # The vendor client's calls, made with this library's shortcuts.
    client.track_event(
        "transaction",
        {"amount": 4.99, "currency": "USD", "type": "iap", "status": "success"},
        identifiers={"player_id": "player-12345"},
    )
    client.track_impression("summer_2026", platform="facebook", creative_id="video_v3")
    client.track_click("summer_2026", creative_id="video_v3")
    client.track_conversion("summer_2026", "install")
    client.track_event("feature_use", {"type": "test", "name": "first_event", "category": "setup"})
    client.track_event("session_start", {})
    assert client.pending == len(vendor_examples()) + 6


def test_shortcuts_check_their_payloads(client: GameRebellionKafka) -> None:
    assert refused(client.track_impression, 7).reason == "schema_violation"
    assert refused(client.track_click, None).reason == "schema_violation"
    assert "conversion_type" in refused(client.track_conversion, "c", 1).detail
    for call in (client.start_session, client.stop_session, client.end_session):
        assert refused(call, "s", score=float("nan")).reason == "not_serializable"
    # keyword arguments join the payload, and a bad known field there is refused too
    assert refused(client.track_click, "c", campaign_extra={1, 2}).reason == "not_serializable"
    assert client.pending == 0
    client.track_impression("summer_2026", placement="main_menu", identifiers=IDS)
    client.track_click("summer_2026", creative_id="banner_a")
    client.track_conversion("summer_2026", "purchase", value=4.99, utm={"source": "fb"})
    client.start_session("s-1", identifiers=IDS)
    client.stop_session("s-1")
    client.end_session("s-1", reason="normal")
    assert client.pending == 6


def test_a_bad_event_in_a_batch_sends_none_of_it(client: GameRebellionKafka) -> None:
    good = {"event_type": "click", "payload": {"campaign_id": "c"}, "identifiers": IDS}
    bad = {"event_type": "transaction", "payload": {"amount": 1, "currency": ["EUR"]}}
    error = refused(client.track_batch, [good, good, bad, good])
    assert error.detail.startswith("batch item 2: ")
    assert "currency" in error.detail
    assert "batch item 1: " in refused(client.track_batch, [good, "not a mapping"]).detail
    assert client.pending == 0
    futures = client.track_batch([good, {**good, "utm": None}, good])
    assert len(futures) == 3
    assert client.pending == 3


def test_default_key_is_the_player_id() -> None:
    assert player_id_key({"identifiers": {"player_id": "p-1"}}) == "p-1"
    assert player_id_key({"identifiers": {"device_id": "d"}}) is None
    assert player_id_key({"identifiers": {"player_id": 5}}) is None
    assert player_id_key({"payload": {}}) is None


def test_close_fails_what_was_not_delivered_and_refuses_new_events() -> None:
    reports: list[DeliveryReport] = []
    client = GameRebellionKafka(NO_BROKER, "t", config=QUIET, on_delivery=reports.append)
    future = client.track_click("c", identifiers=IDS)
    seen: list[object] = []
    future.add_done_callback(seen.append)
    assert not future.done()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    assert client.close(0) == 1
    assert future.done()
    assert seen == [future]
    future.add_done_callback(seen.append)  # already done: called at once
    assert seen == [future, future]
    assert isinstance(future.exception(0), DeliveryError)
    with pytest.raises(DeliveryError, match="Purged"):
        future.result()
    assert [r.ok for r in reports] == [False]
    assert reports[0].key == b"player-1"
    assert reports[0].error is not None
    assert reports[0].error.code.startswith("_PURGE")
    with pytest.raises(DeliveryError, match="closed"):
        client.track_click("c")
    assert client.close() == 0  # a second close does nothing


def test_topic_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="topic"):
        GameRebellionKafka(NO_BROKER, "^game-.*")


def test_from_env_needs_no_api_key_and_names_bad_variables() -> None:
    with pytest.raises(ConfigError) as info:
        GameRebellionKafka.from_env({})
    assert info.value.variable == "KAFKA_BOOTSTRAP_SERVERS"
    with pytest.raises(ConfigError) as info:
        GameRebellionKafka.from_env({"KAFKA_BOOTSTRAP_SERVERS": NO_BROKER, "KAFKA_TOPICS": "^x.*"})
    assert info.value.variable == "KAFKA_TOPICS"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": NO_BROKER,
        "KAFKA_TOPICS": "^other-.*,events-a,events-b",
        "GR_EVENT_MAX_BYTES": "128",
        "GR_STRICT_EVENT_TYPES": "true",
        "GR_BASE_URL": "not a url",  # not a producer's business: ignored
    }
    client = GameRebellionKafka.from_env(env)
    try:
        assert client.topic == "events-a"
        assert refused(client.track_event, "custom", {"n": 1}).reason == "schema_violation"
        assert refused(client.track_click, "c" * 200).reason == "too_large"
    finally:
        client.close(0)
    named = GameRebellionKafka.from_env(env, topic="events-b")
    assert named.topic == "events-b"
    named.close(0)
