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


def test_state_gauges_follow_health_when_scraped() -> None:
    """Alerts ask for a state held for minutes: key refused, DLQ writes failing."""
    from prometheus_client import CollectorRegistry

    from consumer.observe import Metrics

    health, metrics = Health(), Metrics(CollectorRegistry())
    metrics.watch(health)

    def value(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert (value("gr_api_key_refused"), value("gr_dlq_write_failing")) == (0.0, 0.0)
    health.key_rejected(401)
    health.dlq_failing("UNKNOWN_TOPIC_OR_PART")
    assert (value("gr_api_key_refused"), value("gr_dlq_write_failing")) == (1.0, 1.0)
    health.key_ok()
    health.dlq_ok()
    assert (value("gr_api_key_refused"), value("gr_dlq_write_failing")) == (0.0, 0.0)
