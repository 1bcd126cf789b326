"""One worker owning more partitions than request slots, on a rate-limited key: every
partition is served from the start (the chart's recommended set-up: one worker, 12
partitions, 8 slots). Partitions once waited for the first eight to drain."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import WINDOW_S, RunningWorker, backlog_settings, wait_for
from tests.support.events import seq_of

pytestmark = pytest.mark.integration

PARTITIONS = 12


def test_every_partition_is_served_within_the_first_two_rate_limit_windows(
    bootstrap: str,
    make_topic: TopicFactory,
    limited: Simulator,
    start_worker: Callable[..., RunningWorker],
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    n = 2000 * PARTITIONS  # 240 full requests: four windows of the key's budget
    settings = backlog_settings(bootstrap, topic, PARTITIONS, limited.url, n)
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
