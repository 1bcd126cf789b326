"""Scenario 3: produce-to-arrival latency under a steady trickle, for two linger settings.

One topic, one trickle (about 50 events/s of the contract's mix, each with
its produce time in `payload.t_produce`), read at the same time by a worker
per linger setting (each with a simulator of its own that records arrival
times) and by the bare consume loop, whose produce-to-fetch time is the
floor Kafka itself sets. All three see the same events on the same machine
at the same moment.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient

from bench.harness import (
    Children,
    Context,
    SimProcess,
    child_env,
    describe_group,
    fast_producer,
    new_topic,
    percentile,
    runner_args,
    sample_values,
    wait_until,
    worker_env,
)

PARTITIONS = 12
NAME = "latency"
BUDGET_MS = 250


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.scale
    topic = new_topic(ctx.bootstrap, "latency", PARTITIONS)
    workdir = ctx.workdir / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    admin = AdminClient({"bootstrap.servers": ctx.bootstrap})
    try:
        sims: dict[int, SimProcess] = {}
        groups: list[tuple[str, int]] = []
        for linger in s.latency_lingers_ms:
            sim = sims[linger] = SimProcess(children, f"simulator-{linger}ms", record=True)
            group = f"bench-lat-{linger}-{uuid.uuid4().hex[:6]}"
            env = worker_env(ctx.bootstrap, topic, group, sim.url, GR_BATCH_LINGER_MS=str(linger))
            children.spawn(f"worker-{linger}ms", runner_args("worker"), env)
            groups.append((group, 1))
        bare_group = f"bench-lat-bare-{uuid.uuid4().hex[:6]}"
        bare = children.spawn(
            "bare",
            runner_args(
                "bare", "--bootstrap", ctx.bootstrap, "--topic", topic, "--group", bare_group,
                "--latency",
            ),
            child_env({}),
        )  # fmt: skip
        groups.append((bare_group, 1))
        for group, members in groups:
            _wait_stable(admin, group, members)
        time.sleep(1.0)
        sent = _trickle(ctx, topic)
        ctx.log(f"  trickle: {sent:,} events at {s.latency_rate:g}/s over {s.latency_s:g}s")
        time.sleep(max(s.latency_lingers_ms) / 1000 + (3 if s.name == "full" else 1))
        out: dict[str, Any] = {"events": sent, "rate_per_s": s.latency_rate, "runs": []}
        for linger, sim in sims.items():
            lat = [
                1000 * (e["time"] - e["event"]["payload"]["t_produce"])
                for e in sim.events()["events"]
            ]
            out["runs"].append(_figures(f"worker, linger {linger} ms", lat, sent, linger))
        bare.terminate(30)
        lat = [1000 * x for x in bare.result()["latencies"]]
        out["runs"].append(_figures("bare consume (Kafka's floor)", lat, sent, None))
        for r in out["runs"]:
            ctx.log(
                f"  {r['runner']:<30} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                f"({r['count']:,} events)"
            )
        return out
    finally:
        children.stop_all()


def _wait_stable(admin: AdminClient, group: str, members: int) -> None:
    def stable() -> bool:
        g = describe_group(admin, group)
        return g.members == members and g.assigned == PARTITIONS and g.state == "STABLE"

    wait_until(stable, 90, f"group {group} formed")


def _trickle(ctx: Context, topic: str) -> int:
    """Produce at a steady rate, each event stamped as it is handed to the producer."""
    s = ctx.scale
    count = int(s.latency_rate * s.latency_s)
    producer = fast_producer(ctx.bootstrap, **{"linger.ms": 0, "acks": 1})
    start = time.time()
    for i, raw in enumerate(sample_values(count, seed=17)):
        due = start + i / s.latency_rate
        while (left := due - time.time()) > 0:
            time.sleep(left)
        event = orjson.loads(raw)
        event["payload"]["t_produce"] = time.time()
        producer.produce(topic, value=orjson.dumps(event), partition=i % PARTITIONS)
        producer.poll(0)
    producer.flush(30)
    return count


def _figures(runner: str, lat_ms: list[float], sent: int, linger: int | None) -> dict[str, Any]:
    if not lat_ms:
        raise RuntimeError(f"{runner}: no events arrived")
    p99 = percentile(lat_ms, 99)
    out: dict[str, Any] = {
        "runner": runner,
        "linger_ms": linger,
        "count": len(lat_ms),
        "complete": len(lat_ms) >= sent,
        "p50_ms": percentile(lat_ms, 50),
        "p90_ms": percentile(lat_ms, 90),
        "p99_ms": p99,
        "max_ms": max(lat_ms),
    }
    if linger is not None:
        out["target_ms"] = linger + BUDGET_MS
        out["met"] = p99 <= linger + BUDGET_MS
    return out
