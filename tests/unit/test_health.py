"""Liveness and readiness from what the loop reports: stalls, DLQ trouble."""

from __future__ import annotations

from consumer.observe import Health


def test_liveness_fails_past_the_stall_limit_and_recovers() -> None:
    health = Health()
    health.stall_limit(60)
    health.stalled(59)
    assert health.live()[0]
    health.stalled(61)
    ok, reason = health.live()
    assert not ok
    assert "committed nothing" in reason
    health.stalled(0)
    assert health.live()[0]


def test_a_stall_limit_of_zero_never_fails() -> None:
    health = Health()
    health.stall_limit(0)
    health.stalled(10_000)
    assert health.live()[0]


def test_readiness_reports_dlq_failures_until_a_write_succeeds() -> None:
    health = Health()
    health.joined()
    health.dlq_failing("UNKNOWN_TOPIC_OR_PART")
    ok, reason = health.ready()
    assert not ok
    assert "UNKNOWN_TOPIC_OR_PART" in reason
    health.dlq_ok()
    assert health.ready() == (True, "ok")
