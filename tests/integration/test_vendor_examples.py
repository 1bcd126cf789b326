"""The API documentation's own bodies, through the real broker, the worker and the simulator.

Every body the documentation shows or implies (schemas/examples/vendor-examples.json)
must reach the API byte for byte and never the DLQ. One record of real poison
follows them, so the test also sees the DLQ working and the offsets committed past it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from consumer.events import ROUTES, Route
from gr_devtools.kafka_local import create_topic
from gr_devtools.samples import vendor_examples
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.kafka_io import committed, produce, read_all

pytestmark = pytest.mark.integration

POISON = b'{"event_type": "transaction", "payload": {"amount": "4.99"}}'


def test_documented_bodies_arrive_unchanged_and_none_is_dead_lettered(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    examples = vendor_examples()
    assert len(examples) >= 10
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    produce(bootstrap, topic, [*(e.body for e in examples), POISON], partition=0)
    settings = make_settings(topic)
    rw = start_worker(settings)
    wait_for(
        lambda: committed(bootstrap, settings.group_id, topic, 1) == [len(examples) + 1],
        60,
        "every record committed",
    )
    assert rw.stop() == 0

    records = simulator.records()
    # In partition order, each body exactly once, byte for byte as the API reads it:
    # a batch body is the records' own bytes, spliced.
    expected = [e.body for e in examples]
    i = 0
    for record in records:
        if record.path == Route.BATCH.value:
            n = len(record.events)
            assert record.body == b'{"events":[' + b",".join(expected[i : i + n]) + b"]}"
            i += n
        else:
            assert record.body == expected[i]
            i += 1
    assert i == len(expected)
    for example in examples:
        route = ROUTES.get(json.loads(example.body)["event_type"], Route.BATCH)
        if route is not Route.BATCH:
            assert any(r.path == route.value and r.body == example.body for r in records)

    dlq = read_all(bootstrap, f"{topic}.dlq", expect=1, timeout_s=10)
    assert [r.value for r in dlq] == [POISON]  # the real poison, and nothing documented
    assert dlq[0].headers["gr.dlq.reason"] == b"schema_violation"
    assert rw.worker.stats["delivered"] == len(examples)


def test_strict_rules_are_opt_in_and_name_themselves_in_the_dlq(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    """With every strict rule on, the documented bodies those rules refuse go to the DLQ,
    each naming its rule; the rest are still delivered."""
    examples = vendor_examples()
    topic = make_topic(partitions=1)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    produce(bootstrap, topic, [e.body for e in examples], partition=0)
    settings = make_settings(topic, GR_STRICT_RULES="all")
    rw = start_worker(settings)
    wait_for(
        lambda: committed(bootstrap, settings.group_id, topic, 1) == [len(examples)],
        60,
        "every record committed",
    )
    assert rw.stop() == 0
    dlq = {r.value: r.headers for r in read_all(bootstrap, f"{topic}.dlq", expect=5)}
    fired = {
        e.name: dlq[e.body]["gr.dlq.detail"].decode().split("strict rule ")[1].split(":")[0]
        for e in examples
        if e.body in dlq
    }
    assert fired == {
        "curl-feature-use": "feature_name",
        "session-start": "session_id",
        "session-stop": "session_id",
        "session-end": "session_id",
        "unknown-event-type": "unknown_types",
    }
    assert all(h["gr.dlq.reason"] == b"schema_violation" for h in dlq.values())
    delivered = [r.body for r in simulator.records()]
    assert len(delivered) >= 1
    assert rw.worker.stats["delivered"] == len(examples) - len(fired)
