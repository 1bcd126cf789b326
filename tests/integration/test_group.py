"""Workers as processes in one group: graceful SIGTERM, SIGKILL mid-stream, scale-out.

Judged the way Kafka's own client system tests judge consumers: after a
clean bounce nothing is lost and nothing is delivered twice; after a hard
kill duplicates are allowed, loss never is.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from gr_devtools import samples
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY
from tests.support.kafka_io import committed, end_offsets, produce, read_all
from tests.support.procs import group_members, spawn_worker, wait_until

pytestmark = pytest.mark.integration


def _env(bootstrap: str, topic: str, group: str, sim: Simulator, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": sim.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "100",
        "GR_HTTP_PORT": "0",
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "1",
        "GR_SHUTDOWN_TIMEOUT_S": "20",
        "GR_LOG_LEVEL": "INFO",
        **extra,
    }


def _seqs(sim: Simulator) -> list[int]:
    return [int(e["payload"]["seq"]) for e in sim.accepted_events()]


def test_sigterm_drains_commits_and_leaves_the_group(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator, tmp_path: Path
) -> None:
    topic = make_topic(partitions=4)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    n = 12_000
    items = list(samples.generate(n, poison_share=0.0, seed=3))
    produce(bootstrap, topic, (s.value for s in items), partitions=4)
    simulator.set_latency((0.05, 0.15))
    # a small prefetch and a 1 MiB buffer (about 4,000 of these events), so that
    # the first worker cannot hold the whole topic when it is told to stop
    env = _env(bootstrap, topic, group, simulator, KAFKA_QUEUED_MAX_MESSAGES_KBYTES="64",
               KAFKA_MAX_PARTITION_FETCH_BYTES="32768",
               GR_MAX_BUFFERED_BYTES="1048576")  # fmt: skip
    first = spawn_worker(env, tmp_path, "first")
    wait_until(lambda: len(simulator.accepted_events()) >= 1000, 90, "delivery under way")
    assert first.terminate(60) == 0, first.log()
    assert group_members(bootstrap, group) == 0  # it left; nobody waits for a session timeout
    after_first = Counter(_seqs(simulator))
    marks = [max(m, 0) for m in committed(bootstrap, group, topic, 4)]  # -1001: none yet
    # every record below each committed offset reached the API: offsets are per
    # partition, seq i went to partition i % 4 at offset i // 4
    assert sum(marks) >= 1000, marks  # what it delivered, it committed
    for p, mark in enumerate(marks):
        assert all(after_first[i * 4 + p] >= 1 for i in range(mark))
    assert sum(marks) < n, "the first worker should have left work for the second"

    second = spawn_worker(env, tmp_path, "second")
    wait_until(lambda: group_members(bootstrap, group) == 1, 60, "second joined")
    wait_until(lambda: committed(bootstrap, group, topic, 4) == [n // 4] * 4, 120, "drained")
    assert second.terminate(60) == 0, second.log()
    seen = Counter(_seqs(simulator))
    assert set(seen) == set(range(n))
    assert max(seen.values()) == 1, "a clean bounce must not deliver anything twice"


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_three_workers_one_killed_one_added(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator, tmp_path: Path, protocol: str
) -> None:
    partitions, n = 12, 20_000
    topic = make_topic(partitions=partitions)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    items = list(samples.generate(n, poison_share=0.01, seed=11))
    produce(bootstrap, topic, (s.value for s in items), partitions=partitions,
            keys=(s.key for s in items))  # fmt: skip
    # small batches and some latency: the stream lasts long enough for a kill mid-stream
    simulator.set_latency((0.02, 0.06))
    # the classic protocol's session timeout is the client's; KIP-848's is the broker's (45 s)
    timeout = {"KAFKA_SESSION_TIMEOUT_MS": "10000"} if protocol == "classic" else {}
    env = _env(bootstrap, topic, group, simulator, KAFKA_GROUP_PROTOCOL=protocol,
               GR_BATCH_MAX_EVENTS="20", **timeout)  # fmt: skip
    workers = [spawn_worker(env, tmp_path, f"w{i}") for i in range(3)]
    started = time.monotonic()
    wait_until(lambda: group_members(bootstrap, group) == 3, 60, "three members")
    wait_until(lambda: all(w.owns_partitions() for w in workers), 60, "each owns partitions")
    wait_until(lambda: len(simulator.accepted_events()) >= n // 4, 120, "a quarter delivered")
    workers[1].kill()  # SIGKILL mid-stream
    workers.append(spawn_worker(env, tmp_path, "w3"))  # and one added
    wait_until(lambda: group_members(bootstrap, group) == 3, 90, "killed one gone, new one in")
    ends = end_offsets(bootstrap, topic, partitions)
    wait_until(lambda: committed(bootstrap, group, topic, partitions) == ends, 240, "lag 0")
    for i, w in enumerate(workers):
        if i != 1:
            assert w.terminate(60) == 0, w.log()

    valid = {s.seq for s in items if s.expect == "valid"}
    poison = {s.seq: s.expect for s in items if s.expect != "valid"}
    seen = Counter(_seqs(simulator))
    assert valid - set(seen) == set(), "valid events lost"
    assert set(seen) - valid == set(), "something not valid was delivered"
    dlq = read_all(bootstrap, f"{topic}.dlq", expect=None, timeout_s=60)  # duplicates too
    by_source: dict[tuple[int, int], bytes] = {}
    for r in dlq:
        part = int(r.headers["gr.dlq.source.partition"])
        off = int(r.headers["gr.dlq.source.offset"])
        assert r.headers["gr.dlq.source.topic"] == topic.encode()
        by_source[(part, off)] = r.headers["gr.dlq.reason"]
    expected_dlq = {(seq % partitions, seq // partitions): reason for seq, reason in poison.items()}
    assert {k: v.decode() for k, v in by_source.items()} == expected_dlq
    dupes = sum(c - 1 for c in seen.values())
    elapsed = time.monotonic() - started
    print(f"\n[{protocol}] delivered {len(seen)} distinct, {dupes} duplicates "
          f"({dupes / len(valid):.2%}); DLQ {len(dlq)} records for {len(poison)} poison; "
          f"{len(valid) / elapsed:,.0f} events/s for the group, "
          f"mean batch {sum(simulator.batches()) / len(simulator.batches()):.1f}")  # fmt: skip
