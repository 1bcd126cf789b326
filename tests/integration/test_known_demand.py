"""A backlog read to its end on a rate-limited key: librdkafka's end-of-partition events
tell the worker that what it holds is all there is, and it sends that as fast as its
request slots go instead of over the rest of the key's window."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, backlog_settings, wait_for
from tests.support.kafka_io import committed, end_offsets

pytestmark = pytest.mark.integration

PARTITIONS = 12


def test_a_backlog_read_to_its_end_goes_without_the_pacers_spacing(
    bootstrap: str,
    make_topic: TopicFactory,
    limited: Simulator,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    n = 150 * PARTITIONS  # 24 requests: a full batch and a half one per partition
    settings = backlog_settings(bootstrap, topic, PARTITIONS, limited.url, n)
    rw = start_worker(settings)
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    wait_for(
        lambda: committed(bootstrap, settings.group_id, topic, PARTITIONS) == ends,
        60,
        "the backlog committed",
    )
    assert rw.stop() == 0
    times = sorted(r.time for r in limited.records())
    assert len(times) == 24
    assert limited.status_counts().get(429, 0) == 0
    # The share is told by the 8th of the key's requests; spread at the key's pace (one
    # per 10 s / 60) the 16 after it would take 2.5 s, sent at once a few milliseconds.
    assert times[-1] - times[8] < 1.0, [round(t - times[0], 3) for t in times]
