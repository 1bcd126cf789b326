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
    out = split(fetch, EventDecoder().decode, 1.0, lambda t, p: True)
    runs = out.runs
    assert out.errors == []
    assert out.ends == []
    assert [(r.partition, r.offsets) for r in runs] == [(0, [0, 1]), (1, [5]), (0, [2])]
    first = runs[0]
    assert [i.route for i in first.items] == [Route.BATCH, Route.SESSION_START]
    assert first.sessions == 1
    assert first.nbytes == len(GOOD) + len(SESSION)
    assert first.items[0].ref is fetch[0]
    assert [i.key for i in first.items] == [b"player-0", b"player-1"]  # what key order keeps


def test_poison_keeps_its_offset_in_the_run_and_its_place_in_read_order() -> None:
    fetch = [msg(0, 0, GOOD), msg(0, 1, None), msg(0, 2, b"{nope"), msg(0, 3, GOOD)]
    (run,) = split(fetch, EventDecoder().decode, 1.0, lambda t, p: True).runs
    assert run.offsets == [0, 1, 2, 3]
    assert [i.offset for i in run.items] == [0, 3]
    assert [i.key for i in run.items] == [b"player-0", b"player-0"]
    assert [(o, p.reason) for o, _, p in run.poison] == [(1, "empty_value"), (2, "invalid_json")]


def eof(p: int, o: int, topic: str = "t") -> Message:
    return Message(topic=topic, partition=p, offset=o, error=KafkaError(KafkaError._PARTITION_EOF))


def test_errors_are_handed_back_and_stragglers_dropped() -> None:
    lost = Message(topic="t", partition=0, error=KafkaError(KafkaError._TRANSPORT))
    fetch = [msg(0, 0, GOOD), lost, msg(3, 9, GOOD), msg(0, 1, GOOD, topic="u")]
    out = split(fetch, EventDecoder().decode, 1.0, lambda t, p: p != 3)
    assert [e.code() for e in out.errors] == [KafkaError._TRANSPORT]
    assert [(r.topic, r.partition, r.offsets) for r in out.runs] == [("t", 0, [0]), ("u", 0, [1])]


def test_a_partitions_end_is_told_apart_from_errors_and_keeps_its_run_clean() -> None:
    fetch = [msg(0, 0, GOOD), msg(0, 1, GOOD), eof(0, 2), msg(1, 5, GOOD), eof(1, 6), eof(3, 4)]
    out = split(fetch, EventDecoder().decode, 1.0, lambda t, p: p != 3)
    assert out.errors == []
    assert out.ends == [("t", 0, 2), ("t", 1, 6)]  # partition 3 is not ours
    assert [(r.partition, r.offsets) for r in out.runs] == [(0, [0, 1]), (1, [5])]
    # an end between a partition's records, poison beside it: the run still has them all
    fetch = [msg(0, 0, GOOD), eof(0, 1), msg(0, 1, None), msg(0, 2, GOOD), eof(0, 3)]
    out = split(fetch, EventDecoder().decode, 1.0, lambda t, p: True)
    assert out.errors == []
    assert out.ends == [("t", 0, 1), ("t", 0, 3)]
    (run,) = out.runs
    assert run.offsets == [0, 1, 2]
    assert [o for o, _, _ in run.poison] == [1]
