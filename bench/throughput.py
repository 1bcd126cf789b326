"""Scenario 1: throughput and CPU, against the ceiling and the plain script.

A backlog of the contract's mix (no poison) in a 12-partition topic; each
runner reads all of it with its own consumer group, one after the other,
in its own process: (a) the bare consume loop, the worker, (b) the plain
script. The simulator runs in a process of its own with no latency and no
rate limit; its CPU is sampled all along, and at the end it is driven alone,
harder than the worker drove it, to show it was not the bottleneck.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench.harness import (
    API_KEY,
    Children,
    Context,
    ProcSampler,
    SimProcess,
    child_env,
    committed,
    end_offsets,
    new_topic,
    produce_values,
    runner_args,
    sample_values,
    worker_env,
)

PARTITIONS = 12
NAME = "throughput"


def run(ctx: Context) -> dict[str, Any]:
    n = ctx.scale.throughput_events
    topic = new_topic(ctx.bootstrap, "throughput", PARTITIONS)
    t0 = time.monotonic()
    produced = produce_values(ctx.bootstrap, topic, PARTITIONS, sample_values(n))
    produce_s = time.monotonic() - t0
    ctx.log(f"  produced {produced:,} events to {topic} in {produce_s:.1f}s")
    ends = end_offsets(ctx.bootstrap, topic, PARTITIONS)
    assert sum(ends) == n, ends
    workdir = ctx.workdir / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    runs: list[dict[str, Any]] = []
    try:
        sim = SimProcess(children)
        with ProcSampler(sim.pid) as sim_cpu:
            order = ["bare", "worker", "worker_default", "plain"] * ctx.scale.throughput_repeats
            for i, role in enumerate(order):
                r = _one(ctx, children, sim, sim_cpu, topic, role, i, n)
                runs.append(r)
                ctx.log(
                    f"  {role:<6} {r['events_per_s']:>9,.0f} events/s  "
                    f"{r['cpu_s_per_million']:>6.2f} CPU s/M  {r['peak_rss_mib']:>6.1f} MiB  "
                    f"(simulator {r['simulator']['cpu_pct']:.0f}% CPU)"
                )
            capacity = _drive_simulator(ctx, children, sim, sim_cpu)
            ctx.log(
                f"  simulator alone: {capacity['requests_per_s']:,.0f} requests/s "
                f"({capacity['events_per_s']:,.0f} events/s) at {capacity['cpu_pct']:.0f}% CPU"
            )
        sim.stop()
    finally:
        children.stop_all()
    return _summary(n, produce_s, runs, capacity)


def _one(
    ctx: Context,
    children: Children,
    sim: SimProcess,
    sim_cpu: ProcSampler,
    topic: str,
    role: str,
    i: int,
    n: int,
) -> dict[str, Any]:
    group = f"bench-{role}-{i}-{uuid.uuid4().hex[:6]}"
    sim.reset()
    common = ["--bootstrap", ctx.bootstrap, "--topic", topic, "--group", group]
    if role in ("worker", "worker_default"):
        # The key here is unlimited: "worker" raises the run-ahead bound (GR_MAX_UNCOMMITTED_EVENTS,
        # 200 by default: what a hard kill may make the next owner resend, per partition) to
        # 5,000, as a user of such a key would; "worker_default" keeps every default.
        extra = {"GR_MAX_UNCOMMITTED_EVENTS": "5000"} if role == "worker" else {}
        env = worker_env(ctx.bootstrap, topic, group, sim.url, **extra)
        child = children.spawn(f"{role}-{i}", runner_args("worker", "--expect", str(n)), env)
    elif role == "bare":
        args = runner_args("bare", *common, "--expect", str(n))
        child = children.spawn(f"bare-{i}", args, child_env({}))
    else:
        args = runner_args("plain", *common, "--url", sim.url, "--key", API_KEY, "--expect", str(n))
        child = children.spawn(f"plain-{i}", args, child_env({}))
    code = child.wait(3600)
    res = child.result()
    if code != 0:
        raise RuntimeError(f"{child.name} exited {code}: {child.log_tail()}")
    stats = sim.stats()
    t_first, t_end = float(res["t_first"]), float(res["t_end"])
    dur = t_end - t_first
    cpu = float(res["cpu_end"]) - float(res["cpu_first"])
    sim_cpu_s = sim_cpu.cpu_between(t_first, t_end)
    out: dict[str, Any] = {
        "role": role,
        "events": n,
        "seconds": round(dur, 3),
        "events_per_s": n / dur,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_million": cpu / n * 1e6,
        "cpu_pct": 100 * cpu / dur,
        "peak_rss_mib": res["maxrss_kib"] / 1024,
        "simulator": {
            "requests": stats["requests"],
            "events_accepted": stats["events_accepted"],
            "requests_per_s": stats["requests"] / dur,
            "cpu_pct": 100 * sim_cpu_s / dur,
            "peak_cpu_pct_1s": sim_cpu.peak_cpu_pct(t_first, t_end),
            "status_counts": stats["status_counts"],
            "mean_batch": stats["batches"]["mean"],
        },
    }
    split = res.get("cpu_split_end")
    if split:
        out["cpu_system_share"] = split["system"] / max(split["user"] + split["system"], 1e-9)
    if role.startswith("worker"):
        out["worker_stats"] = res["stats"]
        out["thread_cpu_s"] = res.get("thread_cpu_s")
        out["startup_s"] = round(t_first - float(res["t_start"]), 2)
    if role == "plain":
        out["http_client"] = res["http_client"]
    if role != "bare":
        marks = committed(ctx.bootstrap, group, topic, PARTITIONS)
        out["committed_all"] = marks == end_offsets(ctx.bootstrap, topic, PARTITIONS)
        out["delivered_all"] = stats["events_accepted"] >= n
        if not (out["committed_all"] and out["delivered_all"]):
            raise RuntimeError(f"{role}: not everything delivered and committed: {out}")
    return out


def _drive_simulator(
    ctx: Context, children: Children, sim: SimProcess, sim_cpu: ProcSampler
) -> dict[str, Any]:
    """The simulator alone, driven by 8 client threads posting full batches flat out."""
    sim.reset()
    args = runner_args(
        "loadgen", "--url", sim.url, "--key", API_KEY, "--seconds", str(ctx.scale.loadgen_s),
        "--threads", "8",
    )  # fmt: skip
    child = children.spawn("loadgen", args, child_env({}))
    child.wait(ctx.scale.loadgen_s + 60)
    res = child.result()
    t0, t1 = float(res["t_first"]), float(res["t_end"])
    dur = t1 - t0
    stats = sim.stats()
    return {
        "client_threads": res["threads"],
        "seconds": round(dur, 2),
        "requests": res["requests"],
        "errors": res["errors"],
        "requests_per_s": res["requests"] / dur,
        "events_per_s": res["events"] / dur,
        "cpu_pct": 100 * sim_cpu.cpu_between(t0, t1) / dur,
        "simulator_requests": stats["requests"],
        "loadgen_cpu_pct": 100 * (float(res["cpu_end"]) - float(res["cpu_first"])) / dur,
    }


def _median(runs: list[dict[str, Any]], role: str, key: str) -> float:
    return statistics.median(float(r[key]) for r in runs if r["role"] == role)


def _summary(
    n: int, produce_s: float, runs: list[dict[str, Any]], capacity: dict[str, Any]
) -> dict[str, Any]:
    roles = ("bare", "worker", "worker_default", "plain")
    eps = {role: _median(runs, role, "events_per_s") for role in roles}
    cpu_m = {role: _median(runs, role, "cpu_s_per_million") for role in roles}
    rss = {role: max(r["peak_rss_mib"] for r in runs if r["role"] == role) for role in eps}
    worker_runs = [r for r in runs if r["role"] == "worker"]
    asked = max(r["simulator"]["requests_per_s"] for r in worker_runs)
    sim_cpu = max(r["simulator"]["cpu_pct"] for r in worker_runs)
    sim_peak = max(r["simulator"]["peak_cpu_pct_1s"] for r in worker_runs)
    return {
        "events": n,
        "partitions": PARTITIONS,
        "produce_s": round(produce_s, 1),
        "runs": runs,
        "median": {"events_per_s": eps, "cpu_s_per_million": cpu_m, "peak_rss_mib": rss},
        "ratios": {
            "worker_vs_ceiling": eps["worker"] / eps["bare"],
            "worker_vs_plain_events_per_s": eps["worker"] / eps["plain"],
            "plain_vs_worker_cpu_per_million": cpu_m["plain"] / cpu_m["worker"],
            "default_bound_vs_raised": eps["worker_default"] / eps["worker"],
        },
        "simulator_alone": capacity,
        "simulator_headroom": {
            "worker_asked_requests_per_s": asked,
            "simulator_sustained_requests_per_s": capacity["requests_per_s"],
            "headroom": capacity["requests_per_s"] / asked if asked else None,
            "simulator_cpu_pct_during_worker": sim_cpu,
            "simulator_peak_cpu_pct_1s_during_worker": sim_peak,
        },
    }
