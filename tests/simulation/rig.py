"""The simulated world put together: a topic and its group, the API, the DLQ, the checker,
and worker lives run through it. The random scenarios (scenario.py) and the hand-made
ones (test_scenarios.py) are both built on it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consumer import config
from consumer.worker import Worker
from tests.simulation.api import SimApi, SimTransport
from tests.simulation.invariants import Bounds, Checker, Violation
from tests.simulation.kafka import DLQ_TOPIC, TOPIC, Cluster, SimConsumer, SimProducer
from tests.simulation.records import Rec
from tests.simulation.world import World


def base_env(**extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "sim:9092",
        "KAFKA_TOPICS": TOPIC,
        "KAFKA_DLQ_TOPIC": DLQ_TOPIC,
        "KAFKA_GROUP_ID": "sim-group",
        "GR_API_KEY": "sim-key-0123456789",
        "GR_BASE_URL": "https://sim.invalid",
        "GR_STALL_TIMEOUT_S": "60",
        **extra,
    }


@dataclass
class Rig:
    world: World
    settings: config.Settings
    checker: Checker
    cluster: Cluster
    api: SimApi

    @classmethod
    def make(
        cls,
        seed: int,
        env: dict[str, str],
        partitions: int,
        *,
        limit: int | None = None,
        window_s: float = 10.0,
        latency: tuple[float, float] = (0.002, 0.02),
        **api: Any,
    ) -> Rig:
        world = World(seed)
        random.seed(seed)  # tenacity's jitter draws from the random module
        settings = config.load(env)
        bounds = Bounds(
            max_buffered_bytes=settings.max_buffered_bytes,
            buffer_slack=0,
            max_uncommitted=settings.max_uncommitted_events,
            batch_max_events=settings.batch_max_events,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            held_up_s=settings.http_timeout_s + settings.retry_max_s,
            ordering=getattr(settings, "ordering", "partition"),
        )
        checker = Checker(world, bounds)
        cluster = Cluster(world, partitions, checker)
        checker.cluster = cluster
        sim = SimApi(
            world,
            checker,
            limit=limit,
            window_s=window_s,
            batch_max_bytes=settings.batch_max_bytes,
            latency=latency,
            **api,
        )
        checker.api = sim
        return cls(world, settings, checker, cluster, sim)

    def add(self, rec: Rec, at: float = 0.0) -> None:
        self.cluster.append(rec, at)
        self.checker.add(rec)

    def slack(self) -> None:
        """The memory bound's slack: one fetch (200 records) of the largest records."""
        sizes = sorted(
            r.size + sum(len(k) + len(v or b"") for k, v in r.headers or ())
            for r in self.checker.recs.values()
        )
        self.checker.bounds.buffer_slack = sum(sizes[-200:])

    def life(
        self,
        *,
        last: bool,
        stop_after: float | None = None,
        assign: Callable[[list[int]], list[int]] | None = None,
        then: Callable[[Worker, SimConsumer], None] | None = None,
        watch: Callable[[Worker], None] | None = None,
    ) -> Worker:
        """One worker process, from start to its stop (SIGTERM `stop_after` seconds in) or,
        for the last, to drained. `assign` picks the partitions it is given on joining;
        `then` schedules what else happens to it (rebalances); `watch` looks at it each turn."""
        world, cluster, checker, settings = self.world, self.cluster, self.checker, self.settings
        consumers: list[SimConsumer] = []

        def make_consumer(conf: dict[str, Any]) -> SimConsumer:
            consumer = SimConsumer(cluster, conf)
            consumers.append(consumer)
            return consumer

        worker = Worker(
            settings,
            consumer_factory=make_consumer,
            producer_factory=lambda conf: SimProducer(cluster, conf),
            transport=SimTransport(self.api, settings.http_timeout_s),
            clock=world,
        )
        parts = list(range(cluster.partitions))
        born = world.now
        world.after(
            world.rng.uniform(0.0, 0.5),
            lambda: consumers[0].rebalance([], assign(parts) if assign else parts),
        )
        stop_at: list[float] = []

        def stop() -> None:
            if not stop_at:
                stop_at.append(world.now)
                worker.request_stop()

        if stop_after is not None:
            world.at(born + stop_after, stop)
        limit_s = born + 3600.0
        checker.worker_started(worker)
        checked = [0.0]
        started = [False]

        def until() -> bool:
            if not started[0]:
                started[0] = True
                if then is not None:
                    then(worker, consumers[0])
            now = world.now
            if watch is not None:
                watch(worker)
            if now > limit_s:
                raise Violation("progress", "not drained after an hour", now)
            if last and not stop_at and now - checked[0] > 0.2:
                checked[0] = now
                if self.drained():
                    stop()
            return False

        code = worker.run(until=until)
        if checker.broken is not None:
            raise checker.broken  # broken where the loop could not see it (the close thread)
        if code != 0:
            raise Violation("exit", f"the worker exited {code}", world.now)
        if stop_at:
            took = world.now - stop_at[0]
            if took > settings.shutdown_timeout_s + 1e-6:
                raise Violation(
                    "stop-in-time",
                    f"the stop took {took:.2f}s, over GR_SHUTDOWN_TIMEOUT_S "
                    f"{settings.shutdown_timeout_s}",
                    world.now,
                )
        return worker

    def drained(self) -> bool:
        cluster, now = self.cluster, self.world.now
        if any(log and log[-1][0] > now for log in cluster.logs):
            return False
        return all(cluster.committed.get(p, 0) >= len(log) for p, log in enumerate(cluster.logs))
