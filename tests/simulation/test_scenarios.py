"""Hand-made simulations of the paths that once went wrong, each on virtual time with every
invariant checked (a broken one raises `Violation`). Faster and more exact than a real
broker for timing: the real-broker tests of the same paths are in tests/integration."""

from __future__ import annotations

import math
import random

import pytest

from consumer.worker import Worker
from tests.simulation.records import SESSION_TYPES, Rec, event
from tests.simulation.rig import Rig, base_env


def valid(p: int, o: int, **payload: object) -> Rec:
    player = f"player-{o % 7}"
    value = event("transaction", p, o, player, amount=1, **payload)
    return Rec(p, o, player.encode(), value, None, 1_700_000_000_000 + o, "deliver", player)


def refused(p: int, o: int) -> Rec:
    rec = valid(p, o, refuse=True)
    return Rec(p, o, rec.key, rec.value, None, rec.timestamp_ms, "api_rejected", rec.player)


def test_a_stop_while_the_coordinator_is_away_fits_the_shutdown_timeout() -> None:
    """The last commit once waited for the coordinator as long as librdkafka does (a
    synchronous commit has no timeout), and the pod was killed past its grace period."""
    env = base_env(GR_SHUTDOWN_TIMEOUT_S="5", GR_BATCH_LINGER_MS="0")
    rig = Rig.make(1, env, 2, latency=(0.1, 0.2))
    for p in range(2):
        for o in range(3000):
            rig.add(valid(p, o), 0.0)
    rig.world.at(1.0, lambda: setattr(rig.cluster, "coordinator_up", False))
    rig.life(last=False, stop_after=2.0)  # raises if the stop takes longer than 5 s
    rig.world.at(rig.world.now + 10, lambda: setattr(rig.cluster, "coordinator_up", True))
    rig.life(last=True)
    rig.checker.final(rig.cluster)


def test_a_sigterm_during_a_revoke_wait_leaves_the_stop_its_reserve() -> None:
    """A revoke waits (here up to 10 s) for requests in flight; a SIGTERM meanwhile once let
    it wait that out, leaving no time for the last commit and leaving the group. It must end
    the wait by the stop's own drain deadline (10 s budget, 2 s of it kept for closing)."""
    env = base_env(GR_SHUTDOWN_TIMEOUT_S="10", GR_BATCH_LINGER_MS="0", GR_RETRY_MAX_S="2")
    rig = Rig.make(2, env, 2, latency=(0.1, 0.2))
    for p in range(2):
        for o in range(3000):
            rig.add(valid(p, o), 0.0)
    rig.world.at(1.0, lambda: setattr(rig.api, "down", True))  # requests retry, in flight
    rig.life(
        last=False,
        stop_after=3.0,
        then=lambda _w, consumer: rig.world.at(2.9, lambda: consumer.rebalance([0], [])),
    )
    assert rig.world.now <= 3.0 + 10 - 2 + 0.5, f"stopped at t={rig.world.now:.2f}s"
    rig.world.at(rig.world.now + 5, lambda: setattr(rig.api, "down", False))
    rig.life(last=True)
    rig.checker.final(rig.cluster)


def test_a_revoke_during_a_partly_accepted_search_commits_what_was_accepted() -> None:
    """A 400 starts a search for the refused event; its first probes are accepted; the
    revoke's 15 s run out before the search ends. The accepted probes once came back only
    after the commit, so the next owner sent them again."""
    env = base_env(GR_BATCH_LINGER_MS="0", GR_HTTP_TIMEOUT_S="10", GR_MAX_IN_FLIGHT="1")
    rig = Rig.make(3, env, 1, latency=(6.0, 8.0), name_rejected=False)
    for o in range(150):
        rig.add(refused(0, o) if o == 140 else valid(0, o), 0.0)
    rig.life(
        last=False,
        stop_after=120.0,
        then=lambda _w, consumer: rig.world.at(22.0, lambda: consumer.rebalance([0], [])),
    )
    rig.life(last=True)
    rig.checker.final(rig.cluster)


@pytest.mark.parametrize(
    "cause", ["api_down", "api_errors", "key_refused", "dlq_refuse", "coordinator"]
)
def test_waiting_outside_the_worker_never_fails_liveness(cause: str) -> None:
    """40 s of the API down or failing, the key refused, the DLQ refusing, the coordinator
    away, with GR_STALL_TIMEOUT_S at 10: /healthz once failed on every worker after the
    stall timeout (Kubernetes restarted them all, a rebalance that fixed nothing). Waiting
    on something outside shows in readiness and metrics instead."""
    env = base_env(GR_STALL_TIMEOUT_S="10", GR_BATCH_LINGER_MS="0", GR_RETRY_MAX_S="5")
    rig = Rig.make(4, env, 3, latency=(0.05, 0.1))
    for p in range(3):
        for o in range(2000):
            rig.add(refused(p, o) if o % 400 == 7 else valid(p, o, poison=o % 97 == 3), 0.0)
    for p in range(3):  # poison for the DLQ to refuse
        rig.add(Rec(p, 2000, None, b"{not json", None, 0, "invalid_json", ""), 0.0)
    target, on, off = {
        "api_down": (rig.api, True, False),
        "api_errors": (rig.api, 1.0, 0.0),
        "key_refused": (rig.api, 403, 0),
        "dlq_refuse": (rig.cluster, "refuse", "ok"),
        "coordinator": (rig.cluster, False, True),
    }[cause]
    name = {
        "api_down": "down",
        "api_errors": "error_rate",
        "key_refused": "key_refused",
        "dlq_refuse": "dlq_mode",
        "coordinator": "coordinator_up",
    }[cause]
    rig.world.at(0.5, lambda: setattr(target, name, on))
    rig.world.at(40.5, lambda: setattr(target, name, off))
    not_ready: list[str] = []

    def watch(worker: Worker) -> None:
        live, why = worker.health.live()
        assert live, f"t={rig.world.now:.1f}s: /healthz failed: {why}"
        ready, why = worker.health.ready()
        if not ready:
            not_ready.append(why)

    rig.life(last=True, watch=watch)
    rig.checker.final(rig.cluster)
    if cause != "coordinator":
        assert not_ready, "readiness never said what the worker waits on"


def test_waiting_for_the_keys_budget_never_fails_liveness() -> None:
    """Others take 95% of a key of 60 requests a minute; this worker's 12 partitions each
    wait minutes for a turn. Requests are cut only as the budget can send them, so the
    partitions wait in their queues, not in a request: that wait is the key's, not a
    stall a restart could end."""
    env = base_env(GR_STALL_TIMEOUT_S="10")
    rig = Rig.make(9, env, 12, limit=60, window_s=60.0)
    rig.api.others_share = 0.95
    rig.world.at(400.0, lambda: setattr(rig.api, "others_share", 0.0))
    for p in range(12):
        for o in range(150):
            rig.add(valid(p, o), 0.0)
    waiting: list[float] = []

    def watch(worker: Worker) -> None:
        live, why = worker.health.live()
        assert live, f"t={rig.world.now:.1f}s: /healthz failed: {why}"
        parts = list(worker._ledger.parts.values())
        if parts and worker._waiting_on(parts[0]) == "budget":
            waiting.append(rig.world.now)

    rig.life(last=True, watch=watch)
    rig.checker.final(rig.cluster)
    assert waiting, "never said it waits on the key's budget"


def test_after_a_scale_in_the_worker_takes_the_key_within_two_windows() -> None:
    """The key's other users take 70% of it while this worker's partitions trickle; they
    leave at 40 s and a backlog arrives. Within two windows the worker sends at the key's
    whole rate. (Its share once stuck small; then, grown again, the eight requests it had
    claimed slots for far ahead at the small share kept it slow for two windows more.)"""
    env = base_env(GR_BATCH_LINGER_MS="0")
    rig = Rig.make(5, env, 12, limit=60, window_s=10.0)
    rig.api.others_share = 0.7
    rig.world.at(40.0, lambda: setattr(rig.api, "others_share", 0.0))
    o = [0] * 12
    for i in range(12):  # a trickle: one record every 3.3 s
        p = i % 12
        rig.add(valid(p, o[p]), i * 10 / 3)
        o[p] += 1
    for i in range(30_000):  # then the backlog: five windows of the key
        p = i % 12
        rig.add(valid(p, o[p]), 45.0)
        o[p] += 1
    rig.life(last=True)
    rig.checker.final(rig.cluster)
    ours = rig.api.ours_in_window
    assert [ours.get(w, 0) for w in (6, 7)] == [60, 60], dict(sorted(ours.items()))


def test_poison_waiting_for_a_refusing_dlq_holds_memory_and_run_ahead_to_the_bounds() -> None:
    """Records waiting for the DLQ once counted toward neither bound: a poison-heavy
    partition during a DLQ outage was read to its end into memory (210 MiB in the real
    broker's run). The checker's memory and run-ahead invariants hold it to the bounds."""
    env = base_env(
        GR_MAX_BUFFERED_BYTES=str(1 << 20),
        GR_MAX_UNCOMMITTED_EVENTS="200",
        GR_BATCH_LINGER_MS="0",
    )
    rig = Rig.make(6, env, 2, latency=(0.01, 0.02))
    junk = b"{not json " + b"x" * 1000
    for o in range(6000):
        rig.add(Rec(0, o, None, junk, None, 0, "invalid_json", ""), 0.0)
        rig.add(valid(1, o) if o % 3 else Rec(1, o, None, junk, None, 0, "invalid_json", ""), 0.0)
    rig.slack()
    rig.world.at(0.0, lambda: setattr(rig.cluster, "dlq_mode", "refuse"))
    rig.world.at(60.0, lambda: setattr(rig.cluster, "dlq_mode", "ok"))
    rig.life(last=True)
    rig.checker.final(rig.cluster)
    assert rig.checker.peak_held_bytes <= (1 << 20) + rig.checker.bounds.buffer_slack


def _session_stream(rig: Rig, events: int, share: float, seed: int) -> int:
    """Players interleaved and keyed, 25 to a partition, a share of events session events
    (as a mobile game's sessions make them); returns the fewest requests that carry it in
    key order: one per session event and full batches of the rest, per partition."""
    rng = random.Random(seed)
    partitions = rig.cluster.partitions
    offsets = [0] * partitions
    rest = [0] * partitions
    sessions = 0
    for _ in range(events):
        number = rng.randrange(25 * partitions)
        p, player = number % partitions, f"player-{number}"
        session = rng.random() < share
        kind = rng.choice(SESSION_TYPES) if session else "transaction"
        value = event(kind, p, offsets[p], player)
        rig.add(Rec(p, offsets[p], player.encode(), value, None, 0, "deliver", player, session))
        offsets[p] += 1
        sessions += session
        rest[p] += not session
    return sessions + sum(math.ceil(n / 100) for n in rest)


@pytest.mark.parametrize("share", [0.05, 0.10])
def test_a_session_heavy_stream_on_a_limited_key_costs_near_the_fewest_requests(
    share: float,
) -> None:
    """A backlog with 5% or 10% session events on a key of 60 requests per 10 s, one worker,
    12 partitions, the default settings. A partition's part-full batch was once cut ahead
    of its free session events and waited for the budget, and every session event's answer
    freed its player's next events into yet another part-full batch: 1.5x the fewest
    requests. Session events go first now, and requests are cut only as the budget can
    send them, so the events behind keep filling the batch."""
    rig = Rig.make(8, base_env(), 12, limit=60, window_s=10.0)
    fewest = _session_stream(rig, 2000, share, seed=int(share * 100))
    worker = rig.life(last=True)
    rig.checker.final(rig.cluster)
    requests = sum(rig.api.ours_in_window.values())
    waited = worker.metrics.registry.get_sample_value("gr_budget_wait_seconds_total") or 0.0
    assert not rig.api.ours_429_in_window
    assert requests <= 1.1 * fewest, f"{requests} requests, the fewest {fewest}"
    # a request is cut about one spacing (10 s / 60) before its slot, not seconds ahead
    # (1.26 s each when every request slot took a batch as soon as it was due)
    assert waited / requests <= 1.5 * 10 / 60, f"{waited / requests:.2f} s per request"


@pytest.mark.parametrize("others", [0.0, 0.5])
def test_a_backlog_read_to_its_end_goes_at_once_within_the_workers_part(others: float) -> None:
    """24 requests' worth of events on a key of 60 per 10 s (alone, or with others using
    half of it): once the worker has heard enough to tell its share, what it holds is all
    there is (every partition read to its end) and fits its part of what is left, so it
    goes without waiting for the pacer's spacing (spread, the last 16 took 2.7 s) and
    without a 429."""
    rig = Rig.make(3, base_env(), 12, limit=60, window_s=10.0)
    rig.api.others_share = others
    for p in range(12):
        for o in range(150):
            rig.add(valid(p, o), 0.0)
    sent: list[float] = []
    judge = rig.api.judge

    def judged(route: object, body: bytes) -> object:
        sent.append(rig.world.now)
        return judge(route, body)  # type: ignore[arg-type]

    rig.api.judge = judged  # type: ignore[method-assign,assignment]
    rig.life(last=True)
    rig.checker.final(rig.cluster)
    assert not rig.api.ours_429_in_window
    assert len(sent) == 24
    # the share is told after 8 of the key's requests; the 16 left go together
    assert sent[-1] - sent[8] < 0.5, [round(t, 2) for t in sent]
    assert sent[-1] < 3.0


def test_an_older_commit_applied_last_after_the_coordinator_returns_is_committed_again() -> None:
    """While the coordinator is away, commits queue up (a new one when the last went
    unanswered for 2 s). When it returns, librdkafka retries the one that was on the wire
    behind the others: the group ends at the older offset while the worker has confirmed
    the newer. With nothing left to deliver, nothing would ever commit again: the group's
    offset stood behind for good (the worker drained, its lag never 0). The worker
    compares the group's offsets with those it confirmed and commits again."""
    env = base_env(GR_BATCH_LINGER_MS="0", GR_BATCH_MAX_EVENTS="20")
    rig = Rig.make(1, env, 1, latency=(0.3, 0.6))
    for o in range(40):  # two batches: the second finishes while the first commit waits
        rig.add(valid(0, o), 0.0)
    went_back: list[tuple[float, int]] = []
    applied = rig.checker.commit_applied
    highest = [-1]

    def watch_applied(partition: int, offset: int) -> None:
        if offset < highest[0]:
            went_back.append((rig.world.now, offset))
        highest[0] = max(highest[0], offset)
        applied(partition, offset)

    rig.checker.commit_applied = watch_applied  # type: ignore[method-assign]
    rig.world.at(0.2, lambda: setattr(rig.cluster, "coordinator_up", False))
    rig.world.at(5.0, lambda: setattr(rig.cluster, "coordinator_up", True))
    rig.life(last=True)
    rig.checker.final(rig.cluster)
    assert went_back, "the scenario did not apply an older commit last"
    assert rig.world.now - went_back[-1][0] < 40, rig.world.now
