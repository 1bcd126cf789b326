"""Clean bounces: SIGTERM rolling restarts overlapping the replacement's join, and a scale-out.

Kafka's own client system tests demand it: after clean bounces nothing is
lost and nothing is delivered twice. The draining worker's commits meet a
rebalance in progress (the replacement joining); it must still commit what it
delivered before it leaves.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from gr_devtools import samples
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY
from tests.support.kafka_io import committed, end_offsets, produce
from tests.support.procs import WorkerProc, spawn_worker, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6


def _started(w: WorkerProc) -> bool:
    return '"msg":"consumer started"' in w.log()


def test_rolling_restarts_and_scale_out_deliver_nothing_twice(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator, tmp_path: Path
) -> None:
    n = 30_000
    topic = make_topic(partitions=PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    items = list(samples.generate(n, poison_share=0.0, seed=21))
    produce(bootstrap, topic, (s.value for s in items), partitions=PARTITIONS)
    simulator.set_latency((0.01, 0.04))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_SESSION_TIMEOUT_MS": "10000",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": simulator.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "100",
        "GR_BATCH_MAX_EVENTS": "50",
        "GR_HTTP_PORT": "0",
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "1",
        "GR_SHUTDOWN_TIMEOUT_S": "20",
        # a small prefetch: the stream lasts through the bounces
        "KAFKA_QUEUED_MAX_MESSAGES_KBYTES": "64",
        "KAFKA_MAX_PARTITION_FETCH_BYTES": "16384",
        "GR_MAX_BUFFERED_BYTES": "1048576",
    }
    names = iter(f"w{i}" for i in range(100))
    workers = [spawn_worker(env, tmp_path, next(names)) for _ in range(2)]
    retired: list[WorkerProc] = []

    def delivered() -> int:
        return len(simulator.accepted_events())

    wait_until(lambda: delivered() >= n // 10, 90, "delivery under way")
    codes = []
    for round_ in range(3):
        # a rolling update: the replacement starts, and while it joins the old one is stopped
        new = spawn_worker(env, tmp_path, next(names))
        wait_until(lambda new=new: _started(new), 60, "replacement started")
        old = workers.pop(0)
        codes.append(old.terminate(60))
        retired.append(old)
        workers.append(new)
        mark = delivered()
        if round_ < 2:
            wait_until(lambda mark=mark: delivered() >= min(n, mark + n // 8), 120, "progress")
    workers.append(spawn_worker(env, tmp_path, next(names)))  # and a scale-out
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    wait_until(lambda: committed(bootstrap, group, topic, PARTITIONS) == ends, 240, "lag 0")
    for w in workers:
        codes.append(w.terminate(60))
    seen = Counter(int(e["payload"]["seq"]) for e in simulator.accepted_events())
    dupes = sum(c - 1 for c in seen.values())
    print(f"\nclean bounces: {n:,} events, 3 rolling restarts and a scale-out: "
          f"{dupes} delivered twice, {n - len(seen)} missing")  # fmt: skip
    logs = "\n".join(w.log()[-4000:] for w in retired)
    assert codes == [0] * len(codes), "\n".join(w.log()[-6000:] for w in retired + workers)
    assert set(seen) == set(range(n))
    assert dupes == 0, logs
