"""The chaos run: three workers, poison and API rejections, 500s, 429s, latency,
SIGKILLs with restarts, a rolling restart, and a broker restart, all at once.

At the end it prints, and checks: valid events lost (0), poison or rejected
events missing from the DLQ or with a wrong reason or source (0), valid events
wrongly dead-lettered (0), duplicates delivered (reported), per-partition
per-key order breaks at the API (reported; none at a first delivery), final group lag (0), exit codes of the
gracefully stopped workers (0). `GR_FAULT_SCALE=full` runs it at 200,000 events.
"""

from __future__ import annotations

import random
import re
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from gr_devtools import samples
from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.fault.conftest import FULL
from tests.support.kafka_io import committed, end_offsets, produce, read_all
from tests.support.procs import WorkerProc, spawn_worker

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(1800)]

API_KEY = "chaos-key-7d41b9e2c"
PARTITIONS = 12


def _lag(bootstrap: str, group: str, topic: str, ends: list[int]) -> int:
    try:
        marks = committed(bootstrap, group, topic, PARTITIONS)
    except Exception:  # noqa: BLE001  # the broker may be restarting
        return -1
    return sum(end - max(mark, 0) for end, mark in zip(ends, marks, strict=True))


def _diagnose(
    bootstrap: str, group: str, standing: dict[int, tuple[int, int]], workers: list[WorkerProc]
) -> str:
    """Who the group says owns each partition short of its end, and what each live
    worker's metrics say of it: enough to tell a partition never fetched from one whose
    commits are lost or one no member owns."""
    lines = []
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        desc = admin.describe_consumer_groups([group])[group].result(15)
        for m in desc.members:
            owned = sorted(tp.partition for tp in m.assignment.topic_partitions)
            lines.append(f"member {m.client_id} {m.member_id[-8:]}: partitions {owned}")
    except Exception as exc:  # noqa: BLE001  # a diagnosis only
        lines.append(f"group description failed: {exc}")
    wanted = [f'partition="{p}"' for p in standing]
    for i, w in enumerate(workers):
        port = re.search(r'"ops endpoints listening","port":(\d+)', w.log())
        if port is None:
            continue
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError as exc:
            lines.append(f"worker {i}: metrics unread: {exc}")
            continue
        picked = [
            line for line in text.splitlines()
            if not line.startswith("#") and (
                any(want in line for want in wanted)
                or line.startswith(("gr_partitions_", "gr_fetch_restarts", "gr_commits",
                                    "gr_rebalances"))
            )
        ]  # fmt: skip
        lines.append(f"worker {i} (pid {w.proc.pid}):\n  " + "\n  ".join(picked))
    return "\n".join(lines)


def test_chaos(fault_broker: LocalKafka, tmp_path: Path) -> None:
    n = 200_000 if FULL else 30_000
    rng = random.Random(2026)
    bootstrap = fault_broker.bootstrap
    topic = f"chaos-{uuid.uuid4().hex[:6]}"
    group = f"chaos-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 3)
    items = list(samples.generate(n, poison_share=0.01, reject_share=0.002, seed=99))
    produce(bootstrap, topic, (s.value for s in items), partitions=PARTITIONS,
            keys=(s.key for s in items))  # fmt: skip
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    assert sum(ends) == n

    sim = Simulator(keys=[API_KEY], limit_per_window=None, seed=5)
    sim.start()
    sim.set_error_rate(0.05)
    sim.set_rate_limit_429_rate(0.02)
    sim.set_latency((0.0, 0.05))
    sim.set_reject_rule({"payload.description": "reject-me"})
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_SESSION_TIMEOUT_MS": "8000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": sim.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "100",
        # smaller batches: the run lasts long enough for the whole schedule
        "GR_BATCH_MAX_EVENTS": "40",
        "GR_HTTP_PORT": "0",
        "GR_HTTP_TIMEOUT_S": "2",
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "2",
        "GR_SHUTDOWN_TIMEOUT_S": "20",
        # GR_MAX_UNCOMMITTED_EVENTS is left at its default: what a user runs
    }
    counter = 0

    def spawn() -> WorkerProc:
        nonlocal counter
        counter += 1
        return spawn_worker(env, tmp_path, f"w{counter}")

    started = time.monotonic()
    workers = [spawn() for _ in range(3)]
    retired: list[WorkerProc] = []
    kills = rolling = broker_restarts = 0
    steps: list[tuple[float, str]] = []  # (time, what): duplicates are put down to the last one
    graceful_codes: list[int] = []
    # The schedule: each step fires once the group's progress passes its mark
    # (one step per turn, so a fast stretch cannot skip one), plus random
    # SIGKILLs every 5-12 s until 80%.
    schedule = [(0.10, "kill"), (0.25, "rolling"), (0.35, "kill"), (0.45, "broker"), (0.60, "kill")]
    next_kill = time.monotonic() + rng.uniform(5, 12)
    progress = 0.0
    deadline = time.monotonic() + (1500 if FULL else 420)

    def kill_one() -> None:
        nonlocal kills
        victim = rng.randrange(len(workers))
        steps.append((time.time(), f"kill w{victim}"))
        workers[victim].kill()
        retired.append(workers[victim])
        workers[victim] = spawn()
        kills += 1

    while time.monotonic() < deadline:
        time.sleep(0.5)
        lag = _lag(bootstrap, group, topic, ends)
        if lag == 0 and not schedule:
            break
        if lag >= 0:
            progress = 1 - lag / n
        now = time.monotonic()
        if schedule and progress >= schedule[0][0]:
            _, step = schedule.pop(0)
            if step == "kill":
                kill_one()
            elif step == "rolling":
                steps.append((time.time(), "rolling"))
                w = workers.pop(0)
                graceful_codes.append(w.terminate(60))  # a rolling restart: stop, then replace
                retired.append(w)
                workers.append(spawn())
                rolling += 1
            else:
                steps.append((time.time(), "broker"))
                fault_broker.stop()
                time.sleep(3)
                fault_broker.start()
                broker_restarts += 1
        elif progress < 0.8 and now >= next_kill:
            kill_one()
            next_kill = now + rng.uniform(5, 12)
    wall = time.monotonic() - started
    final_lag = _lag(bootstrap, group, topic, ends)
    # which partitions stood still, should any: the group's offset against each end
    standing = {
        p: (mark, end)
        for p, (mark, end) in enumerate(
            zip(committed(bootstrap, group, topic, PARTITIONS), ends, strict=True)
        )
        if mark != end
    }
    diagnosis = _diagnose(bootstrap, group, standing, workers) if standing else ""
    for w in workers:
        graceful_codes.append(w.terminate(60))

    accepted = sim.records()
    sim.stop()
    valid = {s.seq for s in items if s.expect == "valid"}
    expected_dlq = {
        (s.seq % PARTITIONS, s.seq // PARTITIONS): s.expect for s in items if s.expect != "valid"
    }
    seen: Counter[int] = Counter()
    dupes_after: Counter[str] = Counter()
    order_breaks = fresh_breaks = 0
    # the order kept (GR_ORDERING=key, the default) is each key's within its partition
    key_of = {s.seq: s.key for s in items}
    last_per_key: dict[tuple[int, bytes], int] = defaultdict(lambda: -1)
    for record in accepted:
        for event in record.events:
            seq = int(event["payload"]["seq"])
            seen[seq] += 1
            if seen[seq] > 1:
                before = [f"{what} (+{record.time - at:.0f}s)" for at, what in steps
                          if at <= record.time]  # fmt: skip
                dupes_after[before[-1] if before else "start"] += 1
            mark = (seq % PARTITIONS, key_of[seq])
            if seq < last_per_key[mark]:
                order_breaks += 1
                # a redelivery restarts from the commit: explained. A first
                # delivery behind a later event of its key is not.
                fresh_breaks += seen[seq] == 1
            last_per_key[mark] = seq
    # everything (duplicates too): stop only when the topic has been idle for a while
    dlq = read_all(bootstrap, f"{topic}.dlq", expect=None, timeout_s=120)
    dlq_reasons: dict[tuple[int, int], set[str]] = defaultdict(set)
    wrong_source = 0
    for r in dlq:
        if r.headers.get("gr.dlq.source.topic") != topic.encode():
            wrong_source += 1
            continue
        key = (int(r.headers["gr.dlq.source.partition"]), int(r.headers["gr.dlq.source.offset"]))
        dlq_reasons[key].add(r.headers["gr.dlq.reason"].decode())
    lost = len(valid - set(seen))
    missing_or_wrong = sum(
        1 for k, reason in expected_dlq.items() if dlq_reasons.get(k) != {reason}
    )
    valid_in_dlq = sum(1 for k in dlq_reasons if k not in expected_dlq)
    delivered_not_valid = len(set(seen) - valid)
    dupes = sum(c - 1 for c in seen.values())
    by_reason = Counter(expected_dlq.values())
    print(
        f"\nchaos: {n:,} events ({len(valid):,} valid, "
        + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items()))
        + f") in {wall:.0f}s\n"
        f"  kills {kills}, rolling restarts {rolling}, broker restarts {broker_restarts}\n"
        f"  lost {lost}, DLQ missing/wrong {missing_or_wrong}, valid in DLQ {valid_in_dlq}, "
        f"wrong source {wrong_source}, delivered-but-not-valid {delivered_not_valid}\n"
        f"  duplicates {dupes} ({dupes / len(valid):.2%}), DLQ records {len(dlq)} for "
        f"{len(expected_dlq)} expected, order breaks {order_breaks} "
        f"({fresh_breaks} not at a redelivery)\n"
        f"  final lag {final_lag}, graceful exit codes {graceful_codes}\n"
        f"  API answers {dict(sorted(sim.status_counts().items()))}\n"
        f"  duplicates by the last step before them: {dict(dupes_after.most_common(12))}"
    )
    logs = "\n".join(w.log()[-3000:] for w in retired + workers)
    assert final_lag == 0, f"partition: (committed, end) {standing}\n{diagnosis}\n{logs}"
    assert lost == 0
    assert missing_or_wrong == 0
    assert valid_in_dlq == 0
    assert wrong_source == 0
    assert delivered_not_valid == 0
    assert fresh_breaks == 0
    assert graceful_codes
    assert all(code == 0 for code in graceful_codes), graceful_codes
    assert kills >= 3
    assert rolling == 1
    assert broker_restarts == 1
    assert API_KEY not in logs
