"""Scenario 2: a rate-limited key, 1 worker and 3 workers sharing it.

The simulator enforces `limit` requests per key per window, the window scaled
down (100 per 6 s at full scale: the Free tier's 100/minute, ten times
faster) so the run takes minutes. A backlog waits in a 12-partition topic;
workers (each its own process, one group) drain it. After the group has
formed and a few warm-up windows, whole windows of the simulator's clock
are measured from its counters, read just after each window boundary:
the share of the budget used, the share of requests answered 429, events
per request. The same figures over the whole run (start-up included) are
reported too.

The backlog holds batchable events only: a session event is sent alone and
cuts the batch before it (the contract's per-partition order), which caps
the events per request below 100 whatever the worker does. A run on the
contract's mix, with the best possible events per request for that stream
computed from the records themselves, shows what that costs.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from confluent_kafka.admin import AdminClient

from bench.harness import (
    Children,
    Context,
    SimProcess,
    describe_group,
    new_topic,
    produce_values,
    runner_args,
    sample_values,
    wait_until,
    worker_env,
)

PARTITIONS = 12
NAME = "rate_limited"


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.scale
    topic = new_topic(ctx.bootstrap, "ratelimit", PARTITIONS)
    produce_values(
        ctx.bootstrap, topic, PARTITIONS, sample_values(s.rate_backlog, batchable_only=True)
    )
    plan = [(1, topic, "batchable"), (3, topic, "batchable")]
    mixed_values: list[bytes] = []
    if s.rate_mix:
        mixed_topic = new_topic(ctx.bootstrap, "ratelimit-mix", PARTITIONS)
        mixed_values = list(sample_values(s.rate_backlog // 2, seed=13))
        produce_values(ctx.bootstrap, mixed_topic, PARTITIONS, mixed_values)
        plan.append((1, mixed_topic, "mix"))
    ctx.log(
        f"  backlog: {s.rate_backlog:,} batchable events"
        + (f"; {len(mixed_values):,} of the contract's mix" if mixed_values else "")
    )
    workdir = ctx.workdir / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    admin = AdminClient({"bootstrap.servers": ctx.bootstrap})
    runs: list[dict[str, Any]] = []
    try:
        sim = SimProcess(children, limit_per_window=s.rate_limit, window_s=s.rate_window_s)
        for i, (workers, t, stream) in enumerate(plan):
            windows = s.rate_measure_windows
            if stream == "mix":
                windows = max(2, windows // 2)
            r = _one(ctx, children, admin, sim, t, workers, windows, f"{stream}-{workers}w-{i}")
            r["stream"] = stream
            if stream == "mix":
                r["best_events_per_request"] = best_events_per_request(mixed_values, PARTITIONS)
            runs.append(r)
            m = r["measured"]
            ctx.log(
                f"  {workers} worker(s), {stream:<9}: budget used {m['budget_used']:.1%}, "
                f"429s {m['share_429']:.2%} (whole run {r['whole_run']['share_429']:.2%}), "
                f"{m['events_per_request']:.1f} events/request"
            )
        sim.stop()
    finally:
        children.stop_all()
    return {
        "limit": s.rate_limit,
        "window_s": s.rate_window_s,
        "backlog": s.rate_backlog,
        "partitions": PARTITIONS,
        "runs": runs,
    }


def _one(
    ctx: Context,
    children: Children,
    admin: AdminClient,
    sim: SimProcess,
    topic: str,
    workers: int,
    windows: int,
    label: str,
) -> dict[str, Any]:
    s = ctx.scale
    group = f"bench-rl-{label}-{uuid.uuid4().hex[:6]}"
    sim.reset()
    env = worker_env(ctx.bootstrap, topic, group, sim.url, GR_SHUTDOWN_TIMEOUT_S="1")
    procs = [
        children.spawn(f"worker-{label}-{k}", runner_args("worker"), env) for k in range(workers)
    ]
    started = time.time()

    def formed() -> bool:
        g = describe_group(admin, group)
        return g.members == workers and g.assigned == PARTITIONS and g.state == "STABLE"

    wait_until(formed, 90, f"{workers} worker(s) in the group")
    wait_until(lambda: sim.stats()["accepted_requests"] > 0, 60, "first delivery")
    window = s.rate_window_s
    first = (math.floor(time.time() / window) + 1 + s.rate_warmup_windows) * window
    last = first + windows * window
    _sleep_until(first + 0.02)
    a = sim.stats()
    _sleep_until(last + 0.02)
    b = sim.stats()
    for p in procs:
        p.terminate(60)
    end = sim.stats()
    for p in procs:
        if p.proc.returncode != 0:
            raise RuntimeError(f"{p.name} exited {p.proc.returncode}: {p.log_tail()}")
    requests = b["requests"] - a["requests"]
    accepted = b["accepted_requests"] - a["accepted_requests"]
    events = b["events_accepted"] - a["events_accepted"]
    n429 = _status(b, 429) - _status(a, 429)
    results = [p.result() for p in procs]
    return {
        "workers": workers,
        "windows_measured": windows,
        "seconds_measured": windows * window,
        "measured": {
            "requests": requests,
            "accepted_requests": accepted,
            "budget": windows * s.rate_limit,
            "budget_used": accepted / (windows * s.rate_limit),
            "share_429": n429 / requests if requests else 0.0,
            "events_per_request": events / requests if requests else 0.0,
            "events_per_accepted_request": events / accepted if accepted else 0.0,
            "events_accepted": events,
        },
        "whole_run": {
            "seconds": round(time.time() - started, 1),
            "requests": end["requests"],
            "share_429": _status(end, 429) / end["requests"] if end["requests"] else 0.0,
            "events_per_request": end["events_accepted"] / end["requests"]
            if end["requests"]
            else 0.0,
            "status_counts": end["status_counts"],
        },
        "worker_stats": [r["stats"] for r in results],
    }


def best_events_per_request(values: list[bytes], partitions: int) -> float:
    """The most events per request any forwarder keeping the contract could reach on a
    stream: per partition, a session event is a request of its own and cuts the run of
    batchable events before it; every run goes out in full batches of 100."""
    requests = 0
    runs = [0] * partitions
    for n, value in enumerate(values, 1):
        p = n % partitions  # as produce_values spreads them
        if b'"event_type":"session_' in value:
            requests += math.ceil(runs[p] / 100) + 1
            runs[p] = 0
        else:
            runs[p] += 1
    requests += sum(math.ceil(r / 100) for r in runs)
    return len(values) / requests


def _status(stats: dict[str, Any], code: int) -> int:
    return int(stats["status_counts"].get(str(code), 0))


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))
