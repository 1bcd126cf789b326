"""Scenario 5: drain a backlog at the API key's limit, 1 worker and 3 sharing it.

The key carries `limit` requests per `window_s` (60 per 10 s at full scale).
The backlog, in 12 partitions, is the sample mix with 1% poison of every kind,
events the API itself refuses (400) and a session event every few hundred
records; the simulator's 400 does not say which event it refused, so the
worker has to find it. Each run is timed from the workers' start until the
group has committed every offset, and set beside the stream's physical
limit: the fewest requests any forwarder keeping the delivery rules could
make in key order (one request per session event, full batches of 100 of the
rest, per partition, and 7 failing requests per refused event, log2 of 100),
sent at the key's rate. Also reported: the window floor, the earliest those requests
can all be sent when the key's budget comes in whole windows (each run starts as a
window does; the last window's part can go at once, so a drain can beat the
rate-based limit by up to one window), requests made against requests the key
allowed over the run, the share answered 429, the requests answered 400,
requests spent per refused event, and the distribution of events per accepted
batch request.

Then two session-heavy streams (5% and 10% session events, players interleaved
and keyed, each player in one partition), drained in each order the service
can keep (`GR_ORDERING=key` and `partition`), each beside the fewest requests
that can carry the stream in that order: in partition order every session
event cuts its partition's batch; in key order it is one request of its own
and the other events fill full batches.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from typing import Any

import orjson

from bench.harness import (
    Children,
    Context,
    SimProcess,
    committed,
    end_offsets,
    fast_producer,
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
    mix = [
        (n % PARTITIONS, v, b'"event_type":"session_' in v)  # as produce_values spreads them
        for n, v in enumerate(values, 1)
        if v is not None and v.startswith(b"{") and len(v) <= 262_144 and b"reject-me" not in v
    ]
    # the default order (each key's), and what any search must spend per refused event
    physical = fewest_requests(mix, "key") + FAILS_PER_REFUSED * refused
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
    session_runs: list[dict[str, Any]] = []
    streams: dict[str, dict[str, Any]] = {}
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
        for share in (0.05, 0.10):
            records = session_stream(s.drain_session_events, share, seed=int(share * 100))
            label = f"{share:.0%}"
            sessions_n = sum(1 for _, _, session in records if session)
            fewest = {m: fewest_requests(records, m) for m in ("key", "partition")}
            streams[label] = {
                "events": len(records),
                "sessions": sessions_n,
                "fewest_requests": fewest,
                "physical_s": {m: n / (limit / window) for m, n in fewest.items()},
            }
            ctx.log(
                f"  {label} session events: {len(records):,} events, {sessions_n} session "
                f"events; fewest requests {fewest['key']} in key order, "
                f"{fewest['partition']} in partition order"
            )
            for mode in ("key", "partition"):
                for workers in (1, 3):
                    topic = new_topic(ctx.bootstrap, f"drain-sessions-{mode}", PARTITIONS)
                    _produce_keyed(ctx.bootstrap, topic, records)
                    phys_s = streams[label]["physical_s"][mode]
                    r = _one(
                        ctx, children, sim, topic, workers, phys_s, fewest[mode], 0, limit,
                        window, ordering=mode,
                    )  # fmt: skip
                    r.update(stream=label, ordering=mode)
                    session_runs.append(r)
                    ctx.log(
                        f"  {label}, {mode} order, {workers} worker(s): drained in "
                        f"{r['drain_s']:.1f} s vs {phys_s:.1f} s ({r['vs_physical']:.2f}x); "
                        f"{r['requests']} requests, fewest {fewest[mode]}; 429s "
                        f"{r['share_429']:.2%}; {r['events_per_batch_request']:.1f} events per "
                        "batch request"
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
        "session_streams": streams,
        "session_runs": session_runs,
    }


def session_stream(count: int, share: float, seed: int) -> list[tuple[int, bytes, bool]]:
    """(partition, value, is a session event) in production order: players interleaved,
    each player's events in its own partition (keyed by player_id, as the producer library
    keys them), a share of them session events."""
    rng = random.Random(seed)
    players = 25 * PARTITIONS
    out: list[tuple[int, bytes, bool]] = []
    for i in range(count):
        player = rng.randrange(players)
        session = rng.random() < share
        kind = rng.choice(("session_start", "session_stop", "session_end")) if session else (
            rng.choice(("transaction", "feature_use", "level_complete"))
        )  # fmt: skip
        event = {
            "event_type": kind,
            "identifiers": {"player_id": f"player-{player}"},
            "payload": {"seq": i, "amount": 1.0} if kind == "transaction" else {"seq": i},
        }
        out.append((player % PARTITIONS, orjson.dumps(event), session))
    return out


def fewest_requests(records: list[tuple[int, bytes, bool]], ordering: str) -> int:
    """The fewest requests that carry the stream in that order: in partition order full
    batches between session events and one per session event; in key order one per
    session event and full batches of all the rest, per partition."""
    batches = [0] * PARTITIONS
    requests = 0
    for partition, _, session in records:
        if session:
            if ordering == "partition":
                requests += math.ceil(batches[partition] / 100)
                batches[partition] = 0
            requests += 1
        else:
            batches[partition] += 1
    return requests + sum(math.ceil(b / 100) for b in batches)


def window_floor(requests: int, limit: int, window: float) -> float:
    """The earliest `requests` can all be sent from a window's start: every whole window
    of the key's budget used, the last part at the start of the last one."""
    return (math.ceil(requests / limit) - 1) * window


def _produce_keyed(bootstrap: str, topic: str, records: list[tuple[int, bytes, bool]]) -> None:
    producer = fast_producer(bootstrap)
    for partition, value, _ in records:
        player = orjson.loads(value)["identifiers"]["player_id"]
        while True:
            try:
                producer.produce(topic, value=value, key=player.encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("records not acknowledged")


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
    ordering: str = "key",
) -> dict[str, Any]:
    group = f"bench-drain-{workers}w-{uuid.uuid4().hex[:6]}"
    # a fresh key window for the run, so runs do not inherit each other's budget
    _sleep_until((math.floor(time.time() / window) + 1) * window + 0.05)
    sim.reset()
    env = worker_env(
        ctx.bootstrap, topic, group, sim.url, GR_SHUTDOWN_TIMEOUT_S="5", GR_ORDERING=ordering
    )
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
    floor_s = window_floor(physical, limit, window)
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
        "window_floor_s": floor_s,
        "vs_window_floor": drain_s / floor_s if floor_s else 0.0,
        "requests": requests,
        "physical_requests": physical,
        "allowed": math.ceil(windows) * limit,
        "share_429": counts.get(429, 0) / requests if requests else 0.0,
        "answered_400": counts.get(400, 0),
        "isolation_requests": isolation,
        "requests_per_refused": isolation / refused if refused else 0.0,
        "events_per_request": int(stats.get("events_accepted", 0)) / requests if requests else 0.0,
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
