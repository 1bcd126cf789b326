"""Consumer lag per partition, as a running worker exports it against the real broker.

`gr_partition_consumer_lag` is the log-end offset minus the group's committed
offset (consumer/lag.py, from librdkafka's statistics): what is left to do,
whether it was read or not. It must grow while the API is down, fall to 0
once everything is committed, and belong only to the partition's owner.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.events import encode, transaction
from tests.support.kafka_io import committed, produce

pytestmark = pytest.mark.integration


def _lag(rw: RunningWorker, topic: str) -> dict[int, float]:
    registry = rw.metrics.registry
    out: dict[int, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "gr_partition_consumer_lag" and s.labels["topic"] == topic:
                out[int(s.labels["partition"])] = s.value
    return out


@pytest.mark.timeout(180)
def test_lag_grows_while_the_api_is_down_and_moves_with_the_partition(
    make_topic: TopicFactory,
    bootstrap: str,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=4)
    settings = make_settings(topic, KAFKA_STATISTICS_INTERVAL_MS="300")
    simulator.set_outage(True)
    first = start_worker(settings)
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(400)), partitions=4)

    # Nothing delivered, nothing committed: all 100 of each partition are left to do.
    wait_for(lambda: _lag(first, topic) == dict.fromkeys(range(4), 100.0), 60, "lag 100 each")
    produce(bootstrap, topic, (encode(transaction(400 + i)) for i in range(40)), partitions=4)
    wait_for(lambda: _lag(first, topic) == dict.fromkeys(range(4), 110.0), 60, "lag 110 each")

    simulator.set_outage(False)
    wait_for(lambda: sum(committed(bootstrap, settings.group_id, topic, 4)) == 440, 60, "commits")
    wait_for(lambda: _lag(first, topic) == dict.fromkeys(range(4), 0.0), 30, "lag 0")

    # A second member takes half the partitions: each is reported by its owner only.
    second = start_worker(settings)
    wait_for(lambda: len(_lag(second, topic)) == 2 and len(_lag(first, topic)) == 2, 60, "split")
    assert set(_lag(first, topic)).isdisjoint(_lag(second, topic))
    assert first.stop() == 0
    wait_for(lambda: set(_lag(second, topic)) == set(range(4)), 60, "all on the second")
    assert _lag(first, topic) == {}
