"""A fetch into runs, without a consumer: real `Message` objects in, runs out."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from consumer.events import EventDecoder, Route
from consumer.intake import split

GOOD = b'{"event_type":"transaction","payload":{"amount":1}}'
SESSION = b'{"event_type":"session_start","payload":{}}'


def msg(p: int, o: int, value: bytes | None, topic: str = "t") -> Message:
    key = None if o % 3 == 2 else f"player-{o % 3}".encode()
    return Message(topic=topic, partition=p, offset=o, key=key, value=value, headers=[("h", None)])


def test_a_clean_fetch_becomes_one_run_per_partition_with_every_offset() -> None:
    fetch = [msg(0, 0, GOOD), msg(0, 1, SESSION), msg(1, 5, GOOD), msg(0, 2, GOOD)]
    runs, errors = split(fetch, EventDecoder().decode, 1.0, lambda t, p: True)
    assert errors == []
    assert [(r.partition, r.offsets) for r in runs] == [(0, [0, 1]), (1, [5]), (0, [2])]
    first = runs[0]
    assert [i.route for i in first.items] == [Route.BATCH, Route.SESSION_START]
    assert first.sessions == 1
    assert first.nbytes == len(GOOD) + len(SESSION)
    assert first.items[0].ref is fetch[0]
    assert [i.key for i in first.items] == [b"player-0", b"player-1"]  # what key order keeps


def test_poison_keeps_its_offset_in_the_run_and_its_place_in_read_order() -> None:
    fetch = [msg(0, 0, GOOD), msg(0, 1, None), msg(0, 2, b"{nope"), msg(0, 3, GOOD)]
    (run,), _ = split(fetch, EventDecoder().decode, 1.0, lambda t, p: True)
    assert run.offsets == [0, 1, 2, 3]
    assert [i.offset for i in run.items] == [0, 3]
    assert [i.key for i in run.items] == [b"player-0", b"player-0"]
    assert [(o, p.reason) for o, _, p in run.poison] == [(1, "empty_value"), (2, "invalid_json")]


def test_errors_are_handed_back_and_stragglers_dropped() -> None:
    eof = Message(topic="t", partition=0, error=KafkaError(KafkaError._PARTITION_EOF))
    fetch = [msg(0, 0, GOOD), eof, msg(3, 9, GOOD), msg(0, 1, GOOD, topic="u")]
    runs, errors = split(fetch, EventDecoder().decode, 1.0, lambda t, p: p != 3)
    assert [e.code() for e in errors] == [KafkaError._PARTITION_EOF]
    assert [(r.topic, r.partition, r.offsets) for r in runs] == [("t", 0, [0]), ("u", 0, [1])]
