"""Hand-made simulations of the paths that once went wrong, each on virtual time with every
invariant checked (a broken one raises `Violation`). Faster and more exact than a real
broker for timing: the real-broker tests of the same paths are in tests/integration."""

from __future__ import annotations

from tests.simulation.records import Rec, event
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
