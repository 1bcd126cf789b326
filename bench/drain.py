"""Scenario 5: drain a realistic backlog at the API key's limit, 1 worker and 3 sharing it.

The key carries `limit` requests per `window_s` (60 per 10 s at full scale).
The backlog, in 12 partitions, is the sample mix with 1% poison of every kind,
events the API itself refuses (400) and a session event every few hundred
records; the simulator's 400 does not say which event it refused, so the
worker has to find it. Each run is timed from the workers' start until the
group has committed every offset, and set beside the stream's physical
limit: the fewest requests any forwarder keeping the delivery rules could
make (full batches of 100 between session events, one request per session
event, 7 failing requests per refused event, log2 of 100), sent at the key's
rate. Also reported: requests made against requests the key allowed over the
run, the share answered 429, the requests answered 400, requests spent per
refused event, and the distribution of events per accepted batch request.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from bench.harness import (
    Children,
    Context,
    SimProcess,
    committed,
    end_offsets,
    new_topic,
    produce_values,
    runner_args,
    wait_until,
    worker_env,
)
from gr_devtools import samples

NAME = "drain"
PARTITIONS = 12
FAILS_PER_REFUSED = 7  # log2(100), rounded up: what any search must spend


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.scale
    count, limit, window = s.drain_events, s.drain_limit, s.drain_window_s
    stream = list(
        samples.generate(count, poison_share=0.01, reject_share=s.drain_refused / count, seed=16)
    )
    values = [x.value for x in stream]
    refused = sum(1 for x in stream if x.expect == "api_rejected")
    poison = sum(1 for x in stream if x.expect not in ("valid", "api_rejected"))
    sessions = sum(1 for v in values if v is not None and b'"event_type":"session_' in v)
    physical = physical_requests(values, PARTITIONS, refused)
    ideal_s = physical / (limit / window)
    ctx.log(
        f"  backlog {count:,}: {poison} poison, {refused} refused by the API, {sessions} session "
        f"events; key {limit} requests per {window:g} s; physical limit {physical} requests, "
        f"{ideal_s:.0f} s"
    )
    workdir = ctx.workdir / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    runs: list[dict[str, Any]] = []
    try:
        sim = SimProcess(children, limit_per_window=limit, window_s=window)
        sim.configure(reject_rule={"payload.description": "reject-me"}, name_rejected=False)
        for workers in (1, 3):
            topic = new_topic(ctx.bootstrap, "drain", PARTITIONS)
            produce_values(ctx.bootstrap, topic, PARTITIONS, values)  # type: ignore[arg-type]
            r = _one(ctx, children, sim, topic, workers, ideal_s, physical, refused, limit, window)
            runs.append(r)
            ctx.log(
                f"  {workers} worker(s): drained in {r['drain_s']:.1f} s vs {ideal_s:.1f} s "
                f"({r['vs_physical']:.2f}x); {r['requests']} requests of {r['allowed']} allowed; "
                f"429s {r['share_429']:.2%}; 400s {r['answered_400']}; "
                f"{r['requests_per_refused']:.1f} requests per refused event; "
                f"{r['events_per_batch_request']:.1f} events per batch request"
            )
        sim.stop()
    finally:
        children.stop_all()
    return {
        "events": count,
        "partitions": PARTITIONS,
        "limit": limit,
        "window_s": window,
        "poison": poison,
        "refused": refused,
        "sessions": sessions,
        "physical_requests": physical,
        "physical_s": ideal_s,
        "runs": runs,
    }


def physical_requests(values: list[bytes | None], partitions: int, refused: int) -> int:
    """Full batches between session events per partition, one request per session event,
    and the failing requests a search for each refused event cannot avoid."""
    requests = 0
    runs = [0] * partitions
    for n, value in enumerate(values, 1):
        p = n % partitions  # as produce_values spreads them
        if value is None or not value.startswith(b"{") or len(value) > 262_144:
            continue  # poison: never sent
        if b'"event_type":"session_' in value:
            requests += math.ceil(runs[p] / 100) + 1
            runs[p] = 0
        elif b"reject-me" not in value:
            runs[p] += 1
    requests += sum(math.ceil(r / 100) for r in runs)
    return requests + FAILS_PER_REFUSED * refused


def _one(
    ctx: Context,
    children: Children,
    sim: SimProcess,
    topic: str,
    workers: int,
    ideal_s: float,
    physical: int,
    refused: int,
    limit: int,
    window: float,
) -> dict[str, Any]:
    group = f"bench-drain-{workers}w-{uuid.uuid4().hex[:6]}"
    # a fresh key window for the run, so runs do not inherit each other's budget
    _sleep_until((math.floor(time.time() / window) + 1) * window + 0.05)
    sim.reset()
    env = worker_env(ctx.bootstrap, topic, group, sim.url, GR_SHUTDOWN_TIMEOUT_S="5")
    ends = end_offsets(ctx.bootstrap, topic, PARTITIONS)
    started = time.time()
    procs = [
        children.spawn(f"drain-{workers}w-{k}", runner_args("worker"), env) for k in range(workers)
    ]
    wait_until(
        lambda: committed(ctx.bootstrap, group, topic, PARTITIONS) == ends,
        max(600.0, 6 * ideal_s),
        f"{workers} worker(s) drained the backlog",
        step=0.25,
    )
    drain_s = time.time() - started
    stats = sim.stats()
    for p in procs:
        p.terminate(60)
    worker_stats = [p.result()["stats"] for p in procs]
    requests = int(stats["requests"])
    counts = {int(k): int(v) for k, v in stats["status_counts"].items()}
    hist = {int(k): int(v) for k, v in stats["batches"]["histogram"].items()}
    batch_requests = sum(hist.values())
    isolation = sum(int(w.get("isolation_requests", 0)) for w in worker_stats)
    windows = drain_s / window
    return {
        "workers": workers,
        "drain_s": round(drain_s, 1),
        "physical_s": round(ideal_s, 1),
        "vs_physical": drain_s / ideal_s,
        "requests": requests,
        "physical_requests": physical,
        "allowed": math.ceil(windows) * limit,
        "share_429": counts.get(429, 0) / requests if requests else 0.0,
        "answered_400": counts.get(400, 0),
        "isolation_requests": isolation,
        "requests_per_refused": isolation / refused if refused else 0.0,
        "events_per_batch_request": (
            sum(size * n for size, n in hist.items()) / batch_requests if batch_requests else 0.0
        ),
        "full_batch_share": hist.get(100, 0) / batch_requests if batch_requests else 0.0,
        "batch_sizes": _buckets(hist),
        "status_counts": counts,
        "worker_stats": worker_stats,
    }


def _buckets(hist: dict[int, int]) -> dict[str, int]:
    """Accepted batch requests by size: 100, 90-99, 50-89, 10-49, 2-9, 1."""
    edges = [(100, 100), (90, 99), (50, 89), (10, 49), (2, 9), (1, 1)]
    return {
        (f"{lo}" if lo == hi else f"{lo}-{hi}"): sum(
            n for size, n in hist.items() if lo <= size <= hi
        )
        for lo, hi in edges
    }


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))
