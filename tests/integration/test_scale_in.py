"""Three workers share a rate-limited key; two stop cleanly 30 s in (a scale-in). The one
left must take the whole key within two windows: the drain stays within 1.15x of the key's
physical limit (a share learnt beside the others once stuck small until a restart)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest

from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import LIMIT, WINDOW_S, worker_env
from tests.support.events import encode, transaction
from tests.support.kafka_io import committed, end_offsets, produce
from tests.support.procs import spawn_worker, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 12


def test_after_a_scale_in_the_last_worker_takes_the_whole_key(
    bootstrap: str, make_topic: TopicFactory, limited: Simulator, tmp_path: Path
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    n = 36_000  # 360 full requests: six windows of the key
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(n)), partitions=PARTITIONS)
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = worker_env(bootstrap, topic, group, limited.url, GR_SHUTDOWN_TIMEOUT_S="10")
    workers = [spawn_worker(env, tmp_path, f"w{i}") for i in range(3)]
    wait_until(lambda: limited.events_accepted() > 0, 60, "delivery under way")
    start = min(r.time for r in limited.records())
    wait_until(lambda: max(r.time for r in limited.records()) >= start + 30, 90, "30 s in")
    assert [w.terminate() for w in workers[1:]] == [0, 0]
    wait_until(
        lambda: (
            committed(bootstrap, group, topic, PARTITIONS)
            == end_offsets(bootstrap, topic, PARTITIONS)
        ),
        240,
        "drained",
    )
    assert workers[0].terminate() == 0
    records = limited.records()
    assert sum(len(r.events) for r in records) >= n
    took = max(r.time for r in records) - start
    requests = len(records)
    # the physical limit: the requests the stream needs at the key's rate (the first
    # window counts whole whatever part of it is left when delivery starts)
    physical = math.ceil(requests / LIMIT) * WINDOW_S
    print(f"\n{requests} requests drained in {took:.1f}s; physical limit {physical:.0f}s")
    assert took <= 1.15 * physical, f"{took:.1f}s for a physical limit of {physical:.0f}s"
    statuses = limited.status_counts()
    assert statuses.get(429, 0) <= 0.01 * requests
