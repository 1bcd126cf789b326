"""One worker owning more partitions than request slots, on a rate-limited key: every
partition is served from the start (the chart's recommended set-up: one worker, 12
partitions, 8 slots). Partitions once waited for the first eight to drain."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator

import pytest

from consumer import config
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY, RunningWorker, wait_for
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import produce

pytestmark = pytest.mark.integration

PARTITIONS = 12
WINDOW_S = 10.0


@pytest.fixture
def limited() -> Iterator[Simulator]:
    with Simulator(keys=[API_KEY], limit_per_window=60, window_s=WINDOW_S) as sim:
        yield sim


def test_every_partition_is_served_within_the_first_two_rate_limit_windows(
    bootstrap: str,
    make_topic: TopicFactory,
    limited: Simulator,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    n = 2000 * PARTITIONS  # 240 full requests: four windows of the key's budget
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=PARTITIONS)
    settings = config.load(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "GR_API_KEY": API_KEY,
            "GR_BASE_URL": limited.url,
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_HTTP_PORT": "0",
            "GR_SHUTDOWN_TIMEOUT_S": "5",
        }
    )
    rw = start_worker(settings)
    first: dict[int, float] = {}

    def all_served() -> bool:
        for record in limited.records():
            for event in record.events:
                first.setdefault(seq_of(event) % PARTITIONS, record.time)
        return len(first) == PARTITIONS

    wait_for(all_served, 60, "every partition's first events delivered")
    assert rw.stop() == 0
    start = min(r.time for r in limited.records())
    windows_end = math.floor(start / WINDOW_S) * WINDOW_S + 2 * WINDOW_S
    late = {p: round(t - start, 1) for p, t in first.items() if t >= windows_end}
    assert not late, f"partitions first served after the first two windows: {late}"
