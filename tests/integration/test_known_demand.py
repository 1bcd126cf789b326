"""A backlog read to its end on a rate-limited key: librdkafka's end-of-partition events
tell the worker that what it holds is all there is, and it sends that as fast as its
request slots go instead of over the rest of the key's window."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from consumer import config
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY, RunningWorker, wait_for
from tests.support.events import encode, transaction
from tests.support.kafka_io import committed, end_offsets, produce

pytestmark = pytest.mark.integration

PARTITIONS = 12


@pytest.fixture
def limited() -> Iterator[Simulator]:
    with Simulator(keys=[API_KEY], limit_per_window=60, window_s=10.0) as sim:
        yield sim


def test_a_backlog_read_to_its_end_goes_without_the_pacers_spacing(
    bootstrap: str,
    make_topic: TopicFactory,
    limited: Simulator,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    n = 150 * PARTITIONS  # 24 requests: a full batch and a half one per partition
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=PARTITIONS)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = config.load(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "GR_API_KEY": API_KEY,
            "GR_BASE_URL": limited.url,
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_HTTP_PORT": "0",
            "GR_SHUTDOWN_TIMEOUT_S": "5",
        }
    )
    rw = start_worker(settings)
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    wait_for(
        lambda: committed(bootstrap, group, topic, PARTITIONS) == ends, 60, "the backlog committed"
    )
    assert rw.stop() == 0
    times = sorted(r.time for r in limited.records())
    assert len(times) == 24
    assert limited.status_counts().get(429, 0) == 0
    # The share is told by the 8th of the key's requests; spread at the key's pace (one
    # per 10 s / 60) the 16 after it would take 2.5 s, sent at once a few milliseconds.
    assert times[-1] - times[8] < 1.0, [round(t - times[0], 3) for t in times]
