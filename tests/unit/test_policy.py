"""policy: what each API answer means, and how long a 429 makes us wait."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.policy import Action, decide, wait_after_429

NOW = 1_700_000_000.0


# ---- decide ----


@pytest.mark.parametrize("batch_size", [1, 2, 50, 100])
def test_200_accepts_any_batch(batch_size: int) -> None:
    assert decide(200, batch_size) is Action.ACCEPT


@pytest.mark.parametrize("status", [400, 413])
@pytest.mark.parametrize("batch_size", [2, 3, 100])
def test_400_and_413_split_a_batch(status: int, batch_size: int) -> None:
    assert decide(status, batch_size) is Action.SPLIT


@pytest.mark.parametrize("status", [400, 413])
def test_400_and_413_reject_a_lone_event(status: int) -> None:
    assert decide(status, 1) is Action.REJECT


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("batch_size", [1, 100])
def test_401_and_403_halt_never_split_or_reject(status: int, batch_size: int) -> None:
    assert decide(status, batch_size) is Action.HALT


@pytest.mark.parametrize("batch_size", [1, 100])
def test_429_waits(batch_size: int) -> None:
    assert decide(429, batch_size) is Action.WAIT


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 404, 408, 409, 302, 0])
@pytest.mark.parametrize("batch_size", [1, 100])
def test_server_errors_and_anything_unexpected_retry(status: int, batch_size: int) -> None:
    assert decide(status, batch_size) is Action.RETRY


@given(st.integers(min_value=0, max_value=999), st.integers(min_value=1, max_value=100))
def test_property_only_200_accepts_and_only_4xx_client_errors_drop_events(
    status: int, batch_size: int
) -> None:
    action = decide(status, batch_size)
    # nothing is ever given up on (DLQ) except a lone event the API called invalid
    if action is Action.REJECT:
        assert status in (400, 413)
        assert batch_size == 1
    if action is Action.ACCEPT:
        assert status == 200
    if status == 200:
        assert action is Action.ACCEPT
    if status >= 500:
        assert action is Action.RETRY


def test_action_values_are_stable_names() -> None:
    # used as metric labels
    assert [a.value for a in Action] == ["accept", "split", "reject", "halt", "wait", "retry"]


# ---- wait_after_429 ----


def test_retry_after_seconds_wins_over_reset() -> None:
    headers = {"Retry-After": "7", "X-RateLimit-Reset": str(int(NOW) + 40)}
    assert wait_after_429(headers, NOW, 1.0) == 7.0


def test_retry_after_fractional_and_zero() -> None:
    assert wait_after_429({"Retry-After": "2.5"}, NOW, 1.0) == 2.5
    assert wait_after_429({"Retry-After": "0"}, NOW, 1.0) == 0.0
    assert wait_after_429({"Retry-After": " 3 "}, NOW, 1.0) == 3.0


def test_retry_after_is_capped_at_an_hour() -> None:
    assert wait_after_429({"Retry-After": "86400"}, NOW, 1.0) == 3600.0


@pytest.mark.parametrize("bad", ["-5", "nan", "inf", "-inf", "soon", ""])
def test_unusable_retry_after_falls_through_to_reset(bad: str) -> None:
    headers = {"Retry-After": bad, "X-RateLimit-Reset": str(NOW + 12.0)}
    assert wait_after_429(headers, NOW, 1.0) == 12.0


def test_retry_after_http_date_falls_through_to_reset() -> None:
    headers = {
        "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT",
        "X-RateLimit-Reset": str(int(NOW) + 30),
    }
    assert wait_after_429(headers, NOW, 1.0) == 30.0


def test_reset_gives_the_seconds_left_in_the_window() -> None:
    assert wait_after_429({"X-RateLimit-Reset": str(int(NOW) + 45)}, NOW, 1.0) == 45.0
    assert wait_after_429({"X-RateLimit-Reset": str(int(NOW) + 45)}, NOW + 0.5, 1.0) == 44.5


def test_reset_in_the_past_means_no_wait() -> None:
    assert wait_after_429({"X-RateLimit-Reset": str(int(NOW) - 3)}, NOW, 1.0) == 0.0


def test_reset_far_in_the_future_is_capped_at_an_hour() -> None:
    assert wait_after_429({"X-RateLimit-Reset": str(int(NOW) + 100_000)}, NOW, 1.0) == 3600.0


@pytest.mark.parametrize("bad", ["nan", "inf", "later", ""])
def test_unusable_reset_gives_the_fallback(bad: str) -> None:
    assert wait_after_429({"X-RateLimit-Reset": bad}, NOW, 2.25) == 2.25


def test_no_headers_gives_the_fallback() -> None:
    assert wait_after_429({}, NOW, 5.0) == 5.0
    assert wait_after_429({"Retry-After": "x", "X-RateLimit-Reset": "y"}, NOW, 5.0) == 5.0


def test_case_insensitive_header_mapping_is_honoured() -> None:
    """The HTTP client hands over urllib3's case-insensitive headers."""
    from urllib3 import HTTPHeaderDict

    headers = HTTPHeaderDict({"retry-after": "4", "x-ratelimit-reset": str(int(NOW) + 9)})
    assert wait_after_429(headers, NOW, 1.0) == 4.0
    only_reset = HTTPHeaderDict({"x-ratelimit-reset": str(int(NOW) + 9)})
    assert wait_after_429(only_reset, NOW, 1.0) == 9.0


@given(
    st.one_of(
        st.none(),
        st.text(max_size=12),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ),
    st.one_of(
        st.none(),
        st.text(max_size=12),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ),
    st.floats(min_value=0, max_value=60),
)
def test_property_wait_is_always_finite_bounded_and_never_negative(
    retry_after: str | None, reset: str | None, fallback: float
) -> None:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if reset is not None:
        headers["X-RateLimit-Reset"] = reset
    wait = wait_after_429(headers, NOW, fallback)
    assert math.isfinite(wait)
    assert 0.0 <= wait <= max(3600.0, fallback)
