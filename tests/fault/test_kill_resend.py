"""What a hard kill makes the next owner send again, on a quiet machine and on a loaded one.

Three workers on 12 partitions with the default settings, the API answering 5% of
requests 500 and 2% 429; a worker is killed (SIGKILL) and replaced each time another 15% of the topic is
committed (five kills). What a
kill resends is what the victim had delivered and not yet seen committed: at most
GR_MAX_UNCOMMITTED_EVENTS plus one batch per partition it owned, whatever the load
(the bound holds delivery, not only fetching). On a loaded machine commits lag
behind delivery, so without a tight bound the resends grew with the load.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from consumer import config
from gr_devtools import samples
from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.fault.conftest import FULL
from tests.integration.conftest import API_KEY
from tests.support.kafka_io import committed, end_offsets, produce
from tests.support.procs import WorkerProc, spawn_worker

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(1200)]

PARTITIONS = 12


def _burn(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


@contextmanager
def _load(cores: int) -> Iterator[None]:
    """Keep `cores` cores busy, as another build on the same machine (or a CPU limit) would."""
    stop = multiprocessing.Event()
    burners = [
        multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(cores)
    ]
    for p in burners:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in burners:
            p.join(10)


@pytest.mark.parametrize("machine", ["quiet", "loaded"])
def test_what_a_kill_resends_is_bounded_whatever_the_load(
    fault_broker: LocalKafka, tmp_path: Path, machine: str
) -> None:
    n = 120_000 if FULL else 40_000
    rng = random.Random(7)
    bootstrap = fault_broker.bootstrap
    topic = f"kills-{uuid.uuid4().hex[:6]}"
    group = f"kills-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    items = list(samples.generate(n, poison_share=0.0, seed=17))
    produce(bootstrap, topic, (s.value for s in items), partitions=PARTITIONS)
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    defaults = config.Settings(bootstrap_servers="x:1", api_key=config.ApiKeySource())
    with Simulator(keys=[API_KEY], limit_per_window=None, seed=3) as sim:
        sim.set_error_rate(0.05)
        sim.set_rate_limit_429_rate(0.02)
        sim.set_latency((0.0, 0.05))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "KAFKA_SESSION_TIMEOUT_MS": "8000",
            "GR_API_KEY": API_KEY,
            "GR_BASE_URL": sim.url,
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_HTTP_PORT": "0",
        }
        names = iter(f"w{i}" for i in range(1000))
        workers: list[WorkerProc] = [spawn_worker(env, tmp_path, next(names)) for _ in range(3)]
        kills = 0
        # Kills follow progress, not the clock: one each time the committed count passes
        # a mark (and no sooner than 2 s after the last), so a fast machine that drains
        # the topic in seconds still sees every kill, and a slow one is not killed idle.
        marks = [0.1, 0.25, 0.4, 0.55, 0.7]
        with _load(2 if machine == "loaded" else 0):
            deadline = time.monotonic() + 600
            next_kill = time.monotonic() + 2
            while time.monotonic() < deadline:
                time.sleep(0.25)
                done = sum(max(0, c) for c in committed(bootstrap, group, topic, PARTITIONS))
                if done >= n:
                    break
                if marks and done >= marks[0] * n and time.monotonic() >= next_kill:
                    marks.pop(0)
                    victim = rng.randrange(3)
                    workers[victim].kill()
                    workers[victim] = spawn_worker(env, tmp_path, next(names))
                    kills += 1
                    next_kill = time.monotonic() + 2
        for w in workers:
            assert w.terminate(60) == 0
        assert committed(bootstrap, group, topic, PARTITIONS) == ends
        seen: Counter[int] = Counter(
            int(e["payload"]["seq"]) for r in sim.records() for e in r.events
        )
    assert set(seen) == {s.seq for s in items}  # nothing lost
    dupes = sum(c - 1 for c in seen.values())
    per_kill = dupes / max(1, kills)
    # a victim owns about a third of the partitions (a little more while the others join)
    owned = PARTITIONS // 3 + 2
    bound = owned * (defaults.max_uncommitted_events + defaults.batch_max_events)
    print(
        f"\n{machine} machine: {n:,} events, {kills} kills, {dupes} sent again "
        f"({dupes / n:.2%}): {per_kill:.0f} per kill; the bound is {bound} per kill "
        f"(GR_MAX_UNCOMMITTED_EVENTS {defaults.max_uncommitted_events} + one batch, "
        f"for {owned} partitions)"
    )
    assert kills >= 4, f"the topic drained after {kills} kills"
    assert per_kill <= bound
