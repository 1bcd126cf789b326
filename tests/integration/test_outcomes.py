"""docs/contract.md section 4, row by row, against the real broker and the simulator.

Each test checks the three things that matter: what arrived at the API, what
is in the DLQ (with its headers), and the committed offsets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import committed, produce, read_all

pytestmark = pytest.mark.integration

Start = Callable[..., RunningWorker]


def _dlq_by_offset(bootstrap: str, topic: str, expect: int) -> dict[int, dict[str, bytes]]:
    records = read_all(bootstrap, f"{topic}.dlq", expect=expect, timeout_s=30)
    return {
        int(r.headers["gr.dlq.source.offset"]): {
            **r.headers,
            "__value": r.value or b"",
            "__key": r.key or b"",
        }
        for r in records
    }


def test_poison_records_go_to_the_dlq_with_reason_and_source(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start,
) -> None:  # fmt: skip
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    values: list[bytes | None] = [
        encode(transaction(0)),
        b"\xff\xfe not utf-8",  # 1 invalid_json
        b'{"event_type": "transaction", "payload":',  # 2 invalid_json (truncated)
        encode(transaction(3)),
        orjson.dumps(
            {"event_type": "transaction", "payload": {"amount": "1", "currency": "USD"}}
        ),  # 4 schema_violation: amount is a string
        None,  # 5 tombstone
        b"x" * 5000,  # 6 too_large (cap 4096 below)
        encode(transaction(7)),
    ]
    produce(bootstrap, topic, values, partition=0, keys=[f"k{i}".encode() for i in range(8)],
            headers=[("trace-id", b"abc")])  # fmt: skip
    settings = make_settings(topic, GR_EVENT_MAX_BYTES="4096", GR_BATCH_MAX_BYTES="65536")
    rw = start_worker(settings)
    wait_for(lambda: len(simulator.accepted_events()) >= 3, 60, "valid events delivered")
    dlq = _dlq_by_offset(bootstrap, topic, expect=5)
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 1) == [8], 30, "commit")
    assert rw.stop() == 0

    assert [seq_of(e) for e in simulator.accepted_events()] == [0, 3, 7]
    assert sorted(dlq) == [1, 2, 4, 5, 6]
    expected = {
        1: "invalid_json",
        2: "invalid_json",
        4: "schema_violation",
        5: "empty_value",
        6: "too_large",
    }
    for offset, reason in expected.items():
        h = dlq[offset]
        assert h["gr.dlq.reason"] == reason.encode()
        assert h["gr.dlq.source.topic"] == topic.encode()
        assert h["gr.dlq.source.partition"] == b"0"
        assert int(h["gr.dlq.source.timestamp"]) > 0
        assert h["gr.dlq.consumer.group"] == settings.group_id.encode()
        assert h["gr.dlq.failed.at"].endswith(b"Z")
        assert 0 < len(h["gr.dlq.detail"]) <= 1024
        assert h["trace-id"] == b"abc"  # original headers kept
        assert h["__key"] == f"k{offset}".encode()  # same key
        assert h["__value"] == (values[offset] or b"")  # value unchanged
        assert "gr.dlq.http.status" not in h
    assert b"$.payload.amount" in dlq[4]["gr.dlq.detail"]


def test_400_splits_the_batch_and_dead_letters_only_the_rejected(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start,
) -> None:  # fmt: skip
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    bad = {13, 14, 77}
    events = [
        transaction(i, description="reject-me" if i in bad else f"item-{i}") for i in range(100)
    ]
    simulator.set_reject_rule({"payload.description": "reject-me"})
    produce(bootstrap, topic, (encode(e) for e in events), partition=0)
    settings = make_settings(topic, GR_BATCH_LINGER_MS="2000")
    rw = start_worker(settings)
    wait_for(lambda: len(simulator.accepted_events()) >= 97, 60, "the good events")
    dlq = _dlq_by_offset(bootstrap, topic, expect=3)
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 1) == [100], 30, "commit")
    assert rw.stop() == 0

    assert [seq_of(e) for e in simulator.accepted_events()] == [
        i for i in range(100) if i not in bad
    ]
    assert sorted(dlq) == sorted(bad)
    for h in dlq.values():
        assert h["gr.dlq.reason"] == b"api_rejected"
        assert h["gr.dlq.http.status"] == b"400"
        assert b"rejected" in h["gr.dlq.detail"] or b"reject" in h["gr.dlq.detail"]
    assert simulator.status_counts().get(400, 0) >= 3


def test_401_403_halt_readiness_then_resume_when_the_key_works(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start, tmp_path: Path,
) -> None:  # fmt: skip
    topic = make_topic(partitions=2)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    key_file = tmp_path / "api-key"
    key_file.write_text("rotated-key-1\n")
    simulator.add_key("rotated-key-1")
    simulator.revoke_key("rotated-key-1")  # 403 from the start
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(200)), partitions=2)
    env = {"GR_API_KEY_FILE": str(key_file), "GR_API_KEY": ""}
    settings = make_settings(topic, **env)
    rw = start_worker(settings)
    wait_for(lambda: rw.health.halted, 30, "halt on 403")
    ready, reason = rw.health.ready()
    assert not ready
    assert "403" in reason
    time.sleep(2)
    assert simulator.accepted_events() == []
    assert committed(bootstrap, settings.group_id, topic, 2) == [-1001, -1001]

    # the key is rotated in the mounted file: 401 for the old one is gone
    simulator.add_key("rotated-key-2")
    key_file.write_text("rotated-key-2\n")
    wait_for(lambda: len(simulator.accepted_events()) >= 200, 60, "resume with the new key")
    wait_for(lambda: rw.health.ready()[0], 10, "ready again")
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 2) == [100, 100], 30, "commit")
    assert rw.stop() == 0
    assert sorted(seq_of(e) for e in simulator.accepted_events()) == list(range(200))
    assert read_all(bootstrap, f"{topic}.dlq", expect=None, timeout_s=5) == []


def test_429_waits_for_the_window_and_pacing_keeps_them_rare(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start,
) -> None:  # fmt: skip
    topic = make_topic(partitions=4)
    simulator.set_default_limit(10)
    simulator.set_window(2.0)
    simulator.set_rate_limit_429_rate(0.3)  # and spurious 429s with Retry-After: 1
    n = 1600
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=4)
    settings = make_settings(topic, GR_BATCH_LINGER_MS="50")
    rw = start_worker(settings)
    wait_for(lambda: len(simulator.accepted_events()) >= n, 120, "all events")
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 4) == [400] * 4, 30, "commit")
    assert rw.stop() == 0
    assert sorted(seq_of(e) for e in simulator.accepted_events()) == list(range(n))
    counts = simulator.status_counts()
    assert counts.get(429, 0) >= 1  # the spurious ones were met and survived
    sizes = simulator.batches()
    assert sum(sizes) / len(sizes) > 90  # a tight budget fills batches


def test_5xx_and_connection_errors_are_retried_until_delivered(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start,
) -> None:  # fmt: skip
    topic = make_topic(partitions=3)
    simulator.set_error_rate(0.5)
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(600)), partitions=3)
    settings = make_settings(topic, GR_HTTP_TIMEOUT_S="1")
    rw = start_worker(settings)
    # some 500s met and some events through (a fast worker can send all of it
    # before the test looks, so wait for the 500 itself, not for a count)
    wait_for(
        lambda: (
            simulator.status_counts().get(500, 0) >= 1 and len(simulator.accepted_events()) >= 100
        ),
        60,
        "a 500 and some events",
    )
    simulator.set_error_rate(0.0)
    simulator.set_outage(True)  # connection refused
    time.sleep(2)
    simulator.set_outage(False)
    simulator.set_latency(2.0)  # timeouts (1 s) for a while
    time.sleep(2.5)
    simulator.set_latency(None)
    wait_for(lambda: len({seq_of(e) for e in simulator.accepted_events()}) >= 600, 60, "all")
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 3) == [200] * 3, 30, "commit")
    assert rw.stop() == 0
    counts = simulator.status_counts()
    assert counts.get(500, 0) > 0
    assert rw.metrics.retries.labels("transport")._value.get() > 0
    seqs = [seq_of(e) for e in simulator.accepted_events()]
    assert set(seqs) == set(range(600))  # timeouts may duplicate: at least once


def test_dlq_write_failure_holds_the_partition_offsets(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start,
) -> None:  # fmt: skip
    topic = make_topic(partitions=1)
    # no DLQ topic yet (auto-create is off): DLQ writes fail
    values = [encode(transaction(0)), b"not json", encode(transaction(2))]
    produce(bootstrap, topic, values, partition=0)
    settings = make_settings(topic)
    rw = start_worker(settings)
    wait_for(lambda: len(simulator.accepted_events()) >= 2, 60, "valid events")
    time.sleep(3)
    assert committed(bootstrap, settings.group_id, topic, 1) in ([-1001], [1])
    create_topic(bootstrap, f"{topic}.dlq", 1)
    wait_for(
        lambda: committed(bootstrap, settings.group_id, topic, 1) == [3],
        90,
        "commit past the DLQ record",
    )
    assert rw.stop() == 0
    dlq = _dlq_by_offset(bootstrap, topic, expect=1)
    assert list(dlq) == [1]
    assert dlq[1]["gr.dlq.reason"] == b"invalid_json"


def test_revoked_partitions_are_committed_only_by_their_owner(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator,
    make_settings: SettingsFactory, start_worker: Start,
) -> None:  # fmt: skip
    topic = make_topic(partitions=6)
    simulator.set_latency(0.05)
    n = 6000
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=6)
    settings = make_settings(topic)
    first = start_worker(settings)
    wait_for(lambda: len(simulator.accepted_events()) >= 500, 60, "first worker going")
    second = start_worker(settings)  # the same group: a rebalance moves partitions
    wait_for(lambda: second.metrics.partitions_assigned._value.get() > 0, 60, "second assigned")
    wait_for(lambda: len({seq_of(e) for e in simulator.accepted_events()}) >= n, 120, "all")
    wait_for(lambda: committed(bootstrap, settings.group_id, topic, 6) == [1000] * 6, 30, "commit")
    assert first.stop() == 0
    assert second.stop() == 0
    assert first.metrics.rebalances.labels("revoke")._value.get() >= 1
    seqs = [seq_of(e) for e in simulator.accepted_events()]
    assert set(seqs) == set(range(n))
    for p in range(6):  # order per partition holds across the hand-over (duplicates aside)
        part = [s for s in seqs if s % 6 == p]
        firsts = list(dict.fromkeys(part))
        assert firsts == sorted(firsts)
