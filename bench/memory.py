"""Scenario 4: memory under a backlog and an API outage; the worker stays in its group.

A backlog waits in a 12-partition topic; the simulator (its own process) is
put into an outage (connection refused) for 60 s at full scale just before
the worker starts. The worker fills its buffers up to its caps, pauses
partitions and keeps polling; after the outage it drains the backlog. Its
RSS is sampled from /proc all along (VmRSS, and VmHWM for the peak); the
group is described every couple of seconds (members, member ids, assigned
partitions); its log is searched for revocations and lost partitions.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from confluent_kafka.admin import AdminClient

from bench.harness import (
    Children,
    Context,
    GroupView,
    ProcSampler,
    SimProcess,
    committed,
    describe_group,
    end_offsets,
    new_topic,
    produce_values,
    runner_args,
    sample_values,
    wait_until,
    worker_env,
)

PARTITIONS = 12
NAME = "memory"
TARGET_MIB = 250


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.scale
    n = s.memory_events
    topic = new_topic(ctx.bootstrap, "memory", PARTITIONS)
    produce_values(ctx.bootstrap, topic, PARTITIONS, sample_values(n, seed=19))
    ends = end_offsets(ctx.bootstrap, topic, PARTITIONS)
    workdir = ctx.workdir / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    admin = AdminClient({"bootstrap.servers": ctx.bootstrap})
    group = f"bench-mem-{uuid.uuid4().hex[:6]}"
    views: list[tuple[float, GroupView]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(2.0):
            try:
                views.append((time.time(), describe_group(admin, group)))
            except Exception:  # noqa: BLE001, S112 - a slow answer is not a member leaving
                continue

    try:
        sim = SimProcess(children)
        sim.configure(outage=True, outage_s=s.memory_outage_s)
        t_outage = time.time()
        t_outage_end = t_outage + s.memory_outage_s
        worker = children.spawn("worker", runner_args("worker"), worker_env(
            ctx.bootstrap, topic, group, sim.url))  # fmt: skip
        watcher = threading.Thread(target=watch, daemon=True)
        with ProcSampler(worker.pid, 0.25) as mem:
            watcher.start()
            wait_until(lambda: time.time() > t_outage_end, s.memory_outage_s + 5, "outage end")
            rss_outage_end = mem.samples[-1].rss_kib if mem.samples else 0
            peak_in_outage = mem.peak_rss_kib
            wait_until(
                lambda: committed(ctx.bootstrap, group, topic, PARTITIONS) == ends,
                600, "backlog drained after the outage", step=1.0,
            )  # fmt: skip
            t_drained = time.time()
            stop.set()
            watcher.join()
            code = worker.terminate(60)
        sim.stop()
    finally:
        stop.set()
        children.stop_all()
    if code != 0:
        raise RuntimeError(f"worker exited {code}: {worker.log_tail()}")
    res = worker.result()
    log = worker.log()
    before_drain = log.split('"msg":"draining"', 1)[0]
    lost = before_drain.count('"msg":"partitions lost"')
    revoked = before_drain.count('"msg":"partitions revoked"')
    assigned = before_drain.count('"msg":"partitions assigned"')
    in_outage = [v for t, v in views if t <= t_drained]
    member_ids = {m for v in in_outage for m in v.member_ids}
    peak_mib = max(mem.peak_rss_kib, int(res["maxrss_kib"])) / 1024
    stayed = (
        lost == 0
        and revoked == 0
        and assigned == 1
        and bool(in_outage)
        and all(v.members == 1 and v.assigned == PARTITIONS for v in in_outage)
        and len(member_ids) == 1
    )
    t0 = mem.samples[0].t if mem.samples else t_outage
    return {
        "events": n,
        "outage_s": s.memory_outage_s,
        "peak_rss_mib": peak_mib,
        "peak_rss_mib_during_outage": peak_in_outage / 1024,
        "rss_mib_at_outage_end": rss_outage_end / 1024,
        "target_mib": TARGET_MIB,
        "met": peak_mib <= TARGET_MIB and stayed,
        "stayed_in_group": stayed,
        "group_checks": len(in_outage),
        "members_seen": sorted({v.members for v in in_outage}),
        "member_ids_seen": len(member_ids),
        "log_lost": lost,
        "log_revoked": revoked,
        "log_assigned": assigned,
        "drain_after_outage_s": round(t_drained - t_outage_end, 1),
        "worker_stats": res["stats"],
        "rss_timeline": [
            (round(x.t - t0, 2), round(x.rss_kib / 1024, 1)) for x in mem.samples[::4]
        ],
        "outage_window_s": [round(t_outage - t0, 2), round(t_outage_end - t0, 2)],
    }
