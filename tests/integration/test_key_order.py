"""The order kept, against the real broker, through kills and rebalances.

In key order (the default) each player's events reach the API in the order of
their partition (first arrivals: a re-read after a crash resends, and those are
the only events that may arrive again behind later ones); in partition order
the whole partition's do. A stream with 10% session events, players interleaved.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY
from tests.support.kafka_io import committed, end_offsets, produce
from tests.support.procs import WorkerProc, spawn_worker, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6
PLAYERS = 60
SESSIONS = ("session_start", "session_stop", "session_end")


def _event(i: int, player: str, rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(SESSIONS) if rng.random() < 0.1 else "feature_use"
    return {"event_type": kind, "identifiers": {"player_id": player}, "payload": {"seq": i}}


@pytest.mark.parametrize("ordering", ["key", "partition"])
def test_order_of_first_arrivals_holds_through_kills_and_rebalances(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator, tmp_path: Path, ordering: str
) -> None:
    n = 12_000
    rng = random.Random(11)
    topic = make_topic(partitions=PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    players = [f"player-{rng.randrange(PLAYERS)}" for _ in range(n)]
    produce(
        bootstrap,
        topic,
        (orjson.dumps(_event(i, players[i], rng)) for i in range(n)),
        partitions=PARTITIONS,
        keys=(p.encode() for p in players),
    )
    simulator.set_latency((0.005, 0.03))
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": simulator.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_HTTP_PORT": "0",
        "GR_ORDERING": ordering,
        "GR_BATCH_MAX_EVENTS": "20",  # the stream lasts through the kills
        "GR_MAX_IN_FLIGHT": "3",
    }
    names = iter(f"w{i}" for i in range(100))
    workers: list[WorkerProc] = [spawn_worker(env, tmp_path, next(names)) for _ in range(2)]

    def delivered() -> int:
        return simulator.events_accepted()

    wait_until(lambda: delivered() >= n // 5, 90, "a fifth delivered")
    workers[0].kill()  # a crash: its uncommitted events are read again by the next owner
    workers[0] = spawn_worker(env, tmp_path, next(names))
    wait_until(lambda: delivered() >= n // 2, 90, "half delivered")
    workers.append(spawn_worker(env, tmp_path, next(names)))  # a scale-out
    wait_until(lambda: delivered() >= 3 * n // 4, 90, "three quarters delivered")
    assert workers.pop(1).terminate() == 0  # a scale-in
    wait_until(
        lambda: (
            committed(bootstrap, group, topic, PARTITIONS)
            == end_offsets(bootstrap, topic, PARTITIONS)
        ),
        120,
        "everything committed",
    )
    assert all(w.terminate() == 0 for w in workers)

    seen: set[int] = set()
    high: dict[Any, int] = defaultdict(lambda: -1)
    breaks = []
    for record in simulator.records():
        for event in record.events:
            seq = event["payload"]["seq"]
            if seq in seen:
                continue  # sent again after the crash: not a first arrival
            seen.add(seq)
            p = seq % PARTITIONS
            key = (p, players[seq]) if ordering == "key" else p
            if seq < high[key]:
                breaks.append((key, seq, high[key]))
            high[key] = max(high[key], seq)
    assert seen == set(range(n))
    assert not breaks, f"{len(breaks)} first arrivals out of order, e.g. {breaks[:5]}"
