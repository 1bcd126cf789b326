"""The DLQ tools against a DLQ written by someone hostile, with the real broker.

Whoever can write to the dead-letter topic chooses every header of what is
in it. Two things must not follow from that: the operator's replay writing
into a topic of the attacker's choosing (only topics the service consumes
are targets, unless the operator names one), and the operator's terminal
receiving control sequences from a header, key or value.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from consumer.dlq import Source, dlq_headers
from tests.conftest import TopicFactory
from tests.integration.test_dlq_tools import dlq_cmd
from tests.support.kafka_io import committed, end_offsets, read_all

pytestmark = pytest.mark.integration

# A window title change, a screen clear, a carriage return that overwrites the
# line, a bidirectional override, a bell: what a terminal would act on.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\u202eevil\x9b31m"


def _produce(
    bootstrap: str, dlq: str, records: list[tuple[str, list[tuple[str, bytes | None]]]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, headers in records:
        sent: list[tuple[str, str | bytes | None]] = list(headers)
        producer.produce(
            dlq, key=key.encode(), value=b'{"event_type":"x","payload":{}}', headers=sent
        )
    assert producer.flush(30) == 0


def _headers(source: str, offset: int) -> list[tuple[str, bytes | None]]:
    return dlq_headers(
        [("trace-id", b"t")],
        reason="schema_violation",
        detail="d",
        source=Source(source, 0, offset, None),
        group="g",
    )


def test_a_header_cannot_steer_the_replay_into_a_topic_the_service_does_not_consume(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    source = make_topic()
    by_regex = make_topic(prefix="regex-src")
    victim = make_topic(prefix="payments")  # exists, and the service never reads it
    dlq = make_topic(prefix=f"{source[:40]}.dlq")
    records = [
        ("a", _headers(source, 0)),
        ("b", _headers(victim, 1)),
        ("c", _headers(by_regex, 2)),
        ("d", _headers(dlq, 3)),  # the DLQ itself: a loop
        ("e", _headers(victim, 4)),
        ("f", _headers("no such topic, or \x1b[2J", 5)),
    ]
    _produce(bootstrap, dlq, records)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": f"{source},^regex-src-.*",
        "KAFKA_DLQ_TOPIC": dlq,
        "KAFKA_GROUP_ID": f"grp-{dlq[-8:]}",
    }
    proc = dlq_cmd(env, "replay")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert end_offsets(bootstrap, victim, 1) == [0], "the replay wrote into a topic a header named"
    assert [r.key for r in read_all(bootstrap, source, expect=1)] == [b"a"]
    assert [r.key for r in read_all(bootstrap, by_regex, expect=1)] == [b"c"]
    out = proc.stdout
    assert "skipped    4 records (not a consumed topic 4)" in out
    assert f"{victim} 2" in out
    assert f"{dlq} 1" in out
    assert "\x1b" not in out
    assert "no such topic, or \\x1b[2J 1" in out
    # skipped records are committed past: a second run reads nothing
    assert committed(bootstrap, f"{env['KAFKA_GROUP_ID']}.dlq-replay", dlq, 1) == [6]

    # The operator, and only the operator, names another target.
    proc = dlq_cmd(env, "replay", "--group", "by-hand", "--to-topic", victim)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(read_all(bootstrap, victim, expect=6)) == 6
    # ...but never the DLQ itself
    proc = dlq_cmd(env, "replay", "--group", "loop", "--to-topic", dlq)
    assert proc.returncode == 2
    assert "--to-topic names the DLQ itself" in proc.stderr


def _unprintable(text: str) -> list[str]:
    return sorted({repr(c) for c in text if c != "\n" and not c.isprintable()})


def test_inspect_and_replay_print_no_control_sequence_a_record_carries(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    source = make_topic()
    dlq = make_topic(prefix=f"{source[:40]}.dlq")
    names = [
        "gr.dlq.reason",
        "gr.dlq.detail",
        "gr.dlq.source.topic",
        "gr.dlq.source.partition",
        "gr.dlq.source.offset",
        "gr.dlq.failed.at",
        "gr.dlq.http.status",
        "gr.dlq.consumer.group",
    ]
    hostile: list[tuple[str, bytes | None]] = [(name, HOSTILE.encode()) for name in names]
    sane = _headers(source, 0)
    _produce(
        bootstrap,
        dlq,
        [(HOSTILE, hostile), (HOSTILE, [*sane, ("gr.dlq.reason", HOSTILE.encode())])],
    )
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_DLQ_TOPIC": dlq,
        "KAFKA_GROUP_ID": f"grp-{dlq[-8:]}",
    }
    inspect = dlq_cmd(env, "inspect", "--samples", "5")
    assert inspect.returncode == 0, inspect.stderr
    assert _unprintable(inspect.stdout) == []
    assert "\\x1b]0;owned\\x07\\x1b[2J\\r\\u202eevil\\x9b31m" in inspect.stdout
    dry = dlq_cmd(env, "replay", "--dry-run")
    assert _unprintable(dry.stdout) == []
    assert _unprintable(dry.stderr) == []
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would send" in dry.stdout  # the record with a sane source topic
