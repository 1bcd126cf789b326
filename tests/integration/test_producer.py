"""The producer library against the real broker, and the consumer on the other side."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest

from consumer.events import EventDecoder, Route, Valid
from consumer.producer import DeliveryError, DeliveryFuture, DeliveryReport, GameRebellionKafka
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.kafka_io import read_all

pytestmark = pytest.mark.integration

IDS = {"player_id": "player-12345", "device_id": "device-uuid"}
UTM = {"source": "facebook", "medium": "cpc", "campaign": "summer_2026"}


def send_one_of_each(client: GameRebellionKafka, player: str) -> list[DeliveryFuture]:
    """The vendor client's calls, as a backend makes them."""
    ids = {"player_id": player, "device_id": None}
    return [
        client.track_event(
            "transaction",
            {"amount": 4.99, "currency": "USD", "type": "iap", "usd_value": 4.99},
            identifiers=ids,
            utm=UTM,
        ),
        client.track_impression("summer_2026", placement="main_menu", identifiers=ids),
        client.track_click("summer_2026", creative_id="banner_a", identifiers=ids),
        client.track_conversion("summer_2026", "purchase", value=4.99, identifiers=ids),
        client.start_session("s-1", identifiers=ids),
        client.stop_session("s-1", identifiers=ids),
        client.end_session("s-1", reason="normal", identifiers=ids),
        *client.track_batch(
            [
                {"event_type": "feature_use", "payload": {"feature_name": "inventory"},
                 "identifiers": ids},
                {"event_type": "level_up", "payload": {"level": 7}, "identifiers": ids,
                 "utm": None},
            ]
        ),
    ]  # fmt: skip


def test_produces_valid_events_keyed_by_player_the_consumer_accepts(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = make_topic(partitions=3)
    players = [f"player-{i}" for i in range(6)]
    with GameRebellionKafka(bootstrap, topic) as client:
        futures = [f for p in players for f in send_one_of_each(client, p)]
        reports = [f.result(timeout=30) for f in futures]
    assert len(reports) == 54
    assert all(r.ok and r.topic == topic and r.offset is not None for r in reports)

    records = read_all(bootstrap, topic, expect=54)
    assert len(records) == 54
    decoder = EventDecoder()
    routes: list[Route] = []
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        assert record.value is not None
        verdict = decoder.decode(record.value)
        assert isinstance(verdict, Valid), verdict
        routes.append(verdict.route)
        event = orjson.loads(record.value)
        assert record.key is not None
        assert record.key == event["identifiers"]["player_id"].encode()
        assert event["identifiers"] == {
            "player_id": record.key.decode()
        }  # device_id None: left out
        assert b"null" not in record.value
        partitions.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values())  # a player's events on one partition
    assert len({p for ps in partitions.values() for p in ps}) > 1  # players spread over partitions
    assert routes.count(Route.BATCH) == 36
    assert routes.count(Route.SESSION_START) == routes.count(Route.SESSION_END) == 6
    first = [orjson.loads(r.value or b"") for r in records if r.key == b"player-0"]
    assert [e["event_type"] for e in first][:4] == [
        "transaction",
        "impression",
        "click",
        "conversion",
    ]
    assert first[0]["utm"] == UTM
    assert first[1]["payload"] == {"placement": "main_menu", "campaign_id": "summer_2026"}
    assert first[6]["payload"] == {"reason": "normal", "session_id": "s-1"}
    assert "utm" not in first[8]


def test_context_manager_flushes_on_exit(bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic()
    # A long linger: without the flush on exit, nothing would be sent for 10 s.
    with GameRebellionKafka(bootstrap, topic, config={"linger.ms": 10_000}) as client:
        started = time.monotonic()
        futures = [client.track_click(f"c{i}", identifiers={"player_id": "p"}) for i in range(200)]
        assert not any(f.done() for f in futures)
        assert client.pending == 200
    assert time.monotonic() - started < 8
    assert all(f.done() and f.exception() is None for f in futures)
    assert client.pending == 0
    records = read_all(bootstrap, topic, expect=200)
    assert [orjson.loads(r.value or b"")["payload"]["campaign_id"] for r in records] == [
        f"c{i}" for i in range(200)
    ]


def test_delivery_failure_is_reported_to_future_and_callback(bootstrap: str) -> None:
    reports: list[DeliveryReport] = []
    client = GameRebellionKafka(
        bootstrap,
        "no-such-topic-anywhere",  # auto-create is off on the test broker
        config={"message.timeout.ms": 2000},
        on_delivery=reports.append,
    )
    try:
        assert client.topic_exists() is False
        future = client.track_click("c", identifiers={"player_id": "p-9"})
        error = future.exception(timeout=30)
        assert isinstance(error, DeliveryError)
        assert error.code == "_MSG_TIMED_OUT"
        assert error.topic == "no-such-topic-anywhere"
        assert error.key == b"p-9"
        with pytest.raises(DeliveryError, match="no-such-topic-anywhere"):
            future.result()
        wait_for(lambda: len(reports) == 1, 5, "the callback")
        assert reports[0].ok is False
        assert reports[0].error is error
    finally:
        assert client.close(5) == 0


def test_from_env_and_a_custom_key(bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=2)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": f"^other-.*,{topic}",
           "KAFKA_DLQ_TOPIC": f"{topic}.dlq", "KAFKA_CLIENT_RACK": "rack-a"}  # fmt: skip

    def by_device(event: object) -> str | None:
        assert isinstance(event, dict)
        device: str = event["identifiers"]["device_id"]
        return device

    with GameRebellionKafka.from_env(env, key=by_device) as client:
        assert client.topic == topic
        assert client.topic_exists()
        client.track_event("login", {"method": "sso"}, identifiers=IDS).result(30)
    (record,) = read_all(bootstrap, topic, expect=1)
    assert record.key == b"device-uuid"
    assert orjson.loads(record.value or b"") == {
        "event_type": "login",
        "identifiers": IDS,
        "payload": {"method": "sso"},
    }


def test_what_the_library_produces_reaches_the_api_through_the_worker(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=2)
    with GameRebellionKafka(bootstrap, topic) as client:
        futures = [f for p in ("player-a", "player-b") for f in send_one_of_each(client, p)]
    assert all(f.exception() is None for f in futures)
    rw = start_worker(make_settings(topic))
    wait_for(lambda: len(simulator.accepted_events()) >= 18, 60, "all events at the API")
    assert rw.stop() == 0
    assert rw.worker.stats["dead_lettered"] == 0
    paths = {record.path for record in simulator.records()}
    assert paths == {"/api/v1/events", "/api/v1/sessions/start", "/api/v1/sessions/stop",
                     "/api/v1/sessions/end"}  # fmt: skip
