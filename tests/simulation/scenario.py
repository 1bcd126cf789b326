"""One seed, one run: a topology, records of every shape, faults and rebalances, a worker
(and its restarts) driven through them on virtual time, the invariants checked throughout.

`run(seed)` returns an `Outcome`; the same seed gives the same run, step for
step (`python -m tests.simulation --seed N -v` replays one with the worker's
logs). What a seed decides is drawn from `world.rng` in a fixed order.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumer.worker import Worker
from tests.simulation import records
from tests.simulation.api import SimApi
from tests.simulation.invariants import Violation
from tests.simulation.kafka import Cluster, SimConsumer
from tests.simulation.rig import Rig, base_env
from tests.simulation.world import Livelock, World


@dataclass
class Outcome:
    seed: int
    ok: bool
    invariant: str = ""
    detail: str = ""
    at: float = 0.0
    steps: int = 0  # loop turns
    virtual_s: float = 0.0
    records: int = 0
    lives: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        head = f"seed {self.seed}: " + ("ok" if self.ok else f"FAILED [{self.invariant}]")
        tail = f" {self.records} records, {self.lives} worker lives, {self.steps} steps, {self.virtual_s:.0f}s simulated"
        return head + tail + ("" if self.ok else f"\n    at t={self.at:.3f}s: {self.detail}")


@dataclass
class _Fault:
    kind: str
    start: float
    end: float


_FAULT_KINDS = (
    "api_down",
    "api_slow",
    "api_errors",
    "key_refused",
    "dlq_refuse",
    "dlq_full",
    "dlq_fatal",
    "dlq_small",
    "coordinator_down",
    "commit_refuse",
    "commit_silent",
    "reread",
    "others_join",
)


def _env(rng: random.Random, ordering: str | None) -> dict[str, str]:
    batch_bytes = rng.choice((1_048_576, 1_048_576, 65_536))
    env = {
        **base_env(),
        "GR_BATCH_MAX_EVENTS": str(rng.choice((100, 100, 100, 25, 7))),
        "GR_BATCH_MAX_BYTES": str(batch_bytes),
        "GR_EVENT_MAX_BYTES": str(rng.choice((8192, 60_000))),
        "GR_BATCH_LINGER_MS": str(rng.choice((0, 20, 200, 500))),
        "GR_MAX_IN_FLIGHT": str(rng.choice((1, 2, 4, 8, 8, 8))),
        "GR_MAX_BUFFERED_BYTES": str(rng.choice((batch_bytes, 2 * batch_bytes, 64 << 20))),
        "GR_MAX_UNCOMMITTED_EVENTS": str(rng.choice((30, 200, 5000))),
        "GR_SHUTDOWN_TIMEOUT_S": str(rng.choice((5, 10, 30))),
        "GR_RETRY_INITIAL_S": str(rng.choice((0.05, 0.2))),
        "GR_RETRY_MAX_S": str(rng.choice((2, 10, 30))),
        "GR_HTTP_TIMEOUT_S": str(rng.choice((2, 5, 10))),
    }
    env["GR_ORDERING"] = ordering or rng.choice(("key", "key", "partition"))
    return env


def run(
    seed: int, *, ordering: str | None = None, verbose: bool = False, scale: float = 1.0
) -> Outcome:
    rng = random.Random(f"scenario:{seed}")  # apart from the world's own stream
    env = _env(rng, ordering)
    n_parts = rng.choice((1, 2, 3, 4, 6, 8, 12, 12, 16))
    n_records = int(rng.randint(30, 500) * scale)
    arrivals = rng.choice(("backlog", "backlog", "stream", "bursts"))
    stream_s = rng.uniform(5, 90)
    bursts = sorted(rng.uniform(0, 90) for _ in range(rng.randint(1, 3)))
    limit = rng.choice((None, None, 30, 60, 100, 1000))
    window_s = rng.choice((10.0, 60.0))
    faults: list[_Fault] = []
    for _ in range(rng.choice((0, 1, 2, 3, 5, 8))):
        start = rng.uniform(0, 60)
        faults.append(_Fault(rng.choice(_FAULT_KINDS), start, start + rng.uniform(2, 40)))
    # The coordinator answering offset look-ups wrongly, from the start or later: drawn
    # from a stream of its own, so every seed's other choices stay as they were.
    lookups = random.Random(f"lookups:{seed}")
    if lookups.random() < 0.2:
        start = lookups.choice((0.0, lookups.uniform(0, 60)))
        faults.append(_Fault("lookup_lost", start, start + lookups.uniform(2, 40)))
    lives = rng.choice((1, 1, 2, 3))
    life_s = [rng.uniform(3, 60) for _ in range(lives - 1)]
    rebalances = rng.choice((0, 0, 2, 5))
    others = 0.0
    leave = 0.0
    scale_in = rng.random() < 0.12
    if scale_in:
        # a scale-in: the key's other users busy from the start while this worker's
        # partitions trickle, then they leave and a backlog arrives
        limit, window_s = rng.choice(((60, 10.0), (100, 60.0)))
        others = rng.choice((0.5, 0.7))
        leave = window_s * rng.uniform(3, 5)
        faults = [_Fault("others_join", 0.0, leave)]
        lives, life_s, rebalances = 1, [], 0
        arrivals = "scale_in"
        n_records = int(rng.randint(3000, 5000) * max(scale, 0.5))
    rig = Rig.make(
        seed,
        env,
        n_parts,
        limit=limit,
        window_s=window_s,
        latency=rng.choice(((0.002, 0.02), (0.01, 0.2), (0.2, 1.5))),
        error_rate=rng.choice((0.0, 0.0, 0.02, 0.1)),
        lost_answer_rate=rng.choice((0.0, 0.0, 0.01)),
        name_rejected=rng.random() < 0.5,
        max_body_bytes=rng.choice((10**9, 10**9, 40_000)),
    )
    world, settings, checker, api = rig.world, rig.settings, rig.checker, rig.api

    # every record, with what the contract says must become of it
    rec_rng = random.Random(rng.random())
    poison = rng.choice((0.0, 0.02, 0.1, 0.9))
    refused = rng.choice((0.0, 0.01, 0.05, 0.1))
    sessions = rng.choice((0.0, 0.02, 0.1))
    if scale_in:
        poison, refused, sessions = 0.0, 0.0, 0.0  # the budget's own test: full batches
    offsets = [0] * n_parts
    for i in range(n_records):
        p = rec_rng.randrange(n_parts)
        rec = records.make(
            rec_rng,
            p,
            offsets[p],
            players=max(3, n_records // 20),
            poison=poison,
            refused=refused,
            sessions=sessions,
            big_headers=rec_rng.random() < 0.3,
            event_max_bytes=settings.event_max_bytes,
        )
        offsets[p] += 1
        if arrivals == "scale_in":
            trickle = int(leave / (window_s / 3))
            at = i * window_s / 3 if i < trickle else leave + window_s / 2
        elif arrivals == "backlog":
            at = 0.0
        elif arrivals == "stream":
            at = stream_s * i / max(1, n_records)
        else:
            at = bursts[i * len(bursts) // max(1, n_records)]
        rig.add(rec, at)
    rig.slack()
    _schedule_faults(world, api, rig.cluster, faults, others=others if scale_in else None)
    checker.unsteady = [(f.start, f.end) for f in faults]
    checker.commits_unanswered = [
        (f.start, f.end)
        for f in faults
        if f.kind in ("coordinator_down", "commit_silent", "commit_refuse")
    ]
    checker.can_fill_budget = (
        limit is not None and settings.max_in_flight / api.latency[1] >= 4 * limit / window_s
    )

    out = Outcome(seed, True, records=n_records, lives=lives)
    logger = logging.getLogger()
    saved = (logger.handlers[:], logger.level)
    handler: Any
    if verbose:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_VirtualTimeFormatter(world))
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
    else:
        # errors only, kept to say why a worker exited
        handler = _Capture()
        logger.handlers[:] = [handler]
        logging.disable(logging.WARNING)
    try:
        for life in range(lives):
            last = life == lives - 1

            def assign(parts: list[int], last: bool = last) -> list[int]:
                if last or world.rng.random() < 0.6:
                    return parts
                return world.rng.sample(parts, max(1, len(parts) // 2))

            def then(_worker: Worker, consumer: SimConsumer, last: bool = last) -> None:
                if last:
                    return
                parts = list(range(n_parts))
                for _ in range(rebalances):
                    world.after(
                        world.rng.uniform(0, 200),
                        lambda: _rebalance(world.rng, consumer, parts),
                    )

            rig.life(
                last=last,
                stop_after=None if last else life_s[life],
                assign=assign,
                then=then,
            )
        checker.final(rig.cluster)
    except Violation as v:
        v = checker.broken or v  # the first broken, wherever it was raised
        out.ok, out.invariant, out.detail, out.at = False, v.invariant, v.detail, v.at
    except Livelock as exc:
        out.ok, out.invariant, out.detail, out.at = False, "livelock", str(exc), world.now
    finally:
        logger.handlers[:], level = saved
        logger.setLevel(level)
        if not verbose:
            logging.disable(logging.NOTSET)
            if not out.ok and handler.errors:
                out.detail += f" ({handler.errors[-1]})"
    out.steps = checker.turns
    out.virtual_s = world.now
    return out


def _rebalance(rng: random.Random, consumer: SimConsumer, parts: list[int]) -> None:
    if consumer.closed:
        return
    mine = sorted(consumer.assigned)
    others = [p for p in parts if p not in consumer.assigned]
    roll = rng.random()
    if roll < 0.4 and mine:
        consumer.rebalance(rng.sample(mine, rng.randint(1, len(mine))), [])
    elif roll < 0.6 and mine:
        consumer.rebalance(rng.sample(mine, rng.randint(1, len(mine))), [], lost=True)
    elif others:
        consumer.rebalance([], rng.sample(others, rng.randint(1, len(others))))


def _schedule_faults(
    world: World, api: SimApi, cluster: Cluster, faults: list[_Fault], others: float | None = None
) -> None:
    for fault in faults:
        on, off = _switches(fault.kind, world, api, cluster)
        if others is not None and fault.kind == "others_join":
            on = lambda: setattr(api, "others_share", others)  # noqa: E731
        world.at(fault.start, on)
        world.at(fault.end, off)


def _switches(
    kind: str, world: World, api: SimApi, cluster: Cluster
) -> tuple[Callable[[], None], Callable[[], None]]:
    rng = world.rng

    def setter(
        obj: Any, name: str, on: Any, off: Any
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        return (lambda: setattr(obj, name, on)), (lambda: setattr(obj, name, off))

    if kind == "api_down":
        return setter(api, "down", True, False)
    if kind == "api_slow":
        return setter(api, "slow", True, False)
    if kind == "api_errors":
        return setter(api, "error_rate", 0.5, api.error_rate)
    if kind == "key_refused":
        return setter(api, "key_refused", rng.choice((401, 403)), 0)
    if kind == "dlq_refuse":
        return setter(cluster, "dlq_mode", "refuse", "ok")
    if kind == "dlq_full":
        return setter(cluster, "dlq_mode", "full", "ok")
    if kind == "dlq_small":
        return setter(cluster, "dlq_topic_max_bytes", 3000, 1_000_000)
    if kind == "dlq_fatal":

        def fatal() -> None:
            for producer in list(cluster.producers):
                producer.go_fatal()

        return fatal, (lambda: None)
    if kind == "coordinator_down":
        return setter(cluster, "coordinator_up", False, True)
    if kind == "commit_refuse":
        return setter(cluster, "commit_refuse_rate", 0.5, 0.0)
    if kind == "commit_silent":
        return setter(cluster, "commit_silence_rate", 0.5, 0.0)
    if kind == "reread":
        return setter(cluster, "reread_rate", 0.3, 0.0)
    if kind == "lookup_lost":
        return setter(cluster, "lookup_lost", True, False)
    share = rng.choice((0.3, 0.6))
    return setter(api, "others_share", share, 0.0)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = getattr(record, "error", "")
        self.errors.append(f"{record.getMessage()}: {error}" if error else record.getMessage())


class _VirtualTimeFormatter(logging.Formatter):
    def __init__(self, world: World) -> None:
        super().__init__()
        self._world = world

    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in vars(record).items() if k not in _PLAIN and not k.startswith("_")
        }
        line = (
            f"t={self._world.now:9.3f} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        if extras:
            line += f" {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
