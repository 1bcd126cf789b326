"""The happy path and poison records, against the real broker and the simulator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import committed, produce

pytestmark = pytest.mark.integration


def test_delivers_every_event_in_partition_order_and_commits(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=3)
    n = 900
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=3)
    settings = make_settings(topic)
    rw = start_worker(settings)
    wait_for(lambda: len(simulator.accepted_events()) >= n, 60, "all events")
    assert rw.stop() == 0

    events = simulator.accepted_events()
    seqs = [seq_of(e) for e in events]
    assert sorted(seqs) == list(range(n))
    for p in range(3):  # per-partition order as produced
        part = [s for s in seqs if s % 3 == p]
        assert part == sorted(part)
    assert all(size <= 100 for size in simulator.batches())
    assert committed(bootstrap, settings.group_id, topic, 3) == [300, 300, 300]
    assert rw.worker.stats["delivered"] == n
